"""The learner on one GPU, on a model of the paper's shape: duet's step against the raw
DeepSpeed loop, and the training cost per token that ``duet plan`` otherwise assumes.

Run on a GPU machine with torch and DeepSpeed (Ray and vLLM are not needed):
``DS_ACCELERATOR=cuda python -m benchmarks.learner_gpu --json``

One learner rank (ZeRO-2, bf16 with fp32 master weights, gradient checkpointing) on a
Qwen2.5-Math-1.5B-shaped model with random weights (28 layers, width 1536, 151,936-token
vocabulary, tied embeddings) takes steps of 32 rollouts of 128 prompt + 512 completion
tokens; duet's ``train_step`` and the raw loop (``benchmarks.learner_loops.raw_step``)
alternate over the same batches after one warm-up step each. Reported: completion tokens/s
of each and their ratio; seconds per trained completion token (``duet plan``'s
``train_s_per_token``: prompt share included, one rank); the model-FLOPs utilisation that
implies (6 x parameters per trained token, prompt and completion, over the H100's 989 dense
bf16 TFLOP/s: ``duet plan --train-mfu``, 35% by assumption); peak GPU memory.
``--quick`` runs the embedded tiny model instead (any machine; a smoke run).
"""

from __future__ import annotations

import time
from typing import Dict, List

import torch

from benchmarks.common import emit, machine, parser, ratio_summary, scratch_dir, summary
from benchmarks.learner_loops import duet_step, make_batch, raw_step
from cluster.contract.config import load_config
from cluster.policy.embedded import TinyModelSpec, build_model, build_tokenizer, save_model_folder
from cluster.tools.plan import H100_FLOPS

QWEN_1_5B = TinyModelSpec(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                          intermediate_size=8960, max_position=4096)
QWEN_VOCAB = 151_936


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    from learner.rank import LearnerRank

    quick = args.quick
    spec, vocab = (TinyModelSpec(), None) if quick else (QWEN_1_5B, QWEN_VOCAB)
    rollouts, prompt, completion = (16, 16, 32) if quick else (32, 128, 512)
    tmp = str(scratch_dir("duet-bench-learner-gpu-"))
    start = time.perf_counter()
    model = build_model(spec, vocab_size=vocab)
    params = sum(t.numel() for t in model.parameters())
    path = str(save_model_folder(model, build_tokenizer(), f"{tmp}/model"))
    del model
    config = load_config(None, [
        "learner.num_ranks=1", "learner.zero_stage=2", "learner.lr=1e-6",
        "model.dtype=bfloat16", "model.gradient_checkpointing=true",
        f"learner.micro_batch_tokens={1024 if quick else 8192}",
        f"rollout.max_new_tokens={completion}", f"model.max_model_len={prompt + completion}"])
    rank = LearnerRank(config, 0, 1)
    rank.start(path)
    setup_s = time.perf_counter() - start
    vocab_ids = vocab or 18
    batches = [make_batch(rollouts // 2, 2, prompt, completion, vocab_ids, seed)
               for seed in range(args.repeats + 1)]
    cuda = rank.device.type == "cuda"

    def timed(loop):
        def run(batch) -> Dict[str, float]:
            # Both loops are timed here, from an idle GPU until its queued work is done.
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            tokens = loop(rank, batch)["tokens"]
            if cuda:
                torch.cuda.synchronize()
            return {"tokens": tokens, "seconds": time.perf_counter() - start}
        return run

    duet, raw = timed(duet_step), timed(raw_step)

    duet(batches[0])  # warm-up: allocator, kernels, optimizer state
    raw(batches[0])
    duet_s: List[float] = []
    raw_s: List[float] = []
    tokens = 0.0
    for i, batch in enumerate(batches[1:]):
        # Alternate which loop goes first, as the CPU benchmarks do.
        order = (duet, raw) if i % 2 == 0 else (raw, duet)
        got = {fn: fn(batch) for fn in order}
        duet_s.append(got[duet]["seconds"])
        raw_s.append(got[raw]["seconds"])
        tokens = got[duet]["tokens"]
    trained = rollouts * (prompt + completion)  # tokens through forward and backward
    per_token = [s / tokens for s in duet_s]
    row = {
        "figure": (f"{params / 1e9:.2f}B-parameter model, 1 rank on {rank.device.type}, ZeRO-2 "
                   f"bf16, {rollouts} rollouts x ({prompt} + {completion}) tokens"),
        "parameters": params,
        "duet_tokens_per_s": summary([tokens / s for s in duet_s]),
        "raw_tokens_per_s": summary([tokens / s for s in raw_s]),
        "tokens_per_s_vs_raw": ratio_summary(raw_s, duet_s),
        "train_s_per_completion_token": summary(per_token),
        "step_seconds": summary(duet_s),
        "setup_seconds": setup_s,
    }
    if cuda:
        row["device_name"] = torch.cuda.get_device_name(rank.device)
        row["model_flops_utilisation"] = summary(
            [6 * params * trained / s / H100_FLOPS for s in duet_s])
        row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(rank.device) / 2**30
    emit({"benchmark": "learner_gpu", "machine": machine(), "rows": [row],
          "note": "utilisation is against 989 TFLOP/s (H100 dense bf16), 6 x parameters per "
                  "trained token; gradient checkpointing's extra forward is not counted"},
         args.json)


if __name__ == "__main__":
    main()
