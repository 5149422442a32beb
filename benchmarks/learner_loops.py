"""The learner loops the learner benchmarks time, and their synthetic batches (no Ray)."""

from __future__ import annotations

import time
from typing import Dict

import torch

from cluster.contract.schema import Group, build_batch
from learner.batch import to_tensors
from learner.rank import LearnerRank, micro_batches, token_logprobs


def duet_step(rank: LearnerRank, batch) -> Dict[str, float]:
    """duet's own step (rows dealt to ranks, micro-batches, advantages, the GRPO loss, one update)."""
    start = time.perf_counter()
    metrics = rank.train_step(batch)
    return {"tokens": metrics["tokens"], "seconds": time.perf_counter() - start}


def raw_step(rank: LearnerRank, batch) -> Dict[str, float]:
    """The plainest DeepSpeed loop over this rank's rows: forward, mean logp, backward, step."""
    start = time.perf_counter()
    t = to_tensors(batch)
    lengths = t.attention_mask.sum(1)
    plans = rank.plan(range(t.input_ids.shape[0]), lengths)
    count = max(len(p) for p in plans)
    mine = plans[rank.rank] + [[]] * (count - len(plans[rank.rank]))
    tokens = 0
    for i, chunk in enumerate(mine):
        chunk = chunk or [0]
        width = int(lengths[chunk].max())
        dev = rank.device
        logp = token_logprobs(rank.engine, t.input_ids[chunk, :width].to(dev),
                              t.attention_mask[chunk, :width].to(dev))
        mask = t.completion_mask[chunk, 1:width].to(dev).float()
        loss = -(logp * mask).sum() / mask.sum().clamp(min=1)
        rank.engine.set_gradient_accumulation_boundary(i == count - 1)
        rank.engine.backward(loss)
        tokens += int(mask.sum())
    rank.engine.step()
    return {"tokens": float(tokens), "seconds": time.perf_counter() - start}


def plain_step(model, optimizer, batch, micro_batch_tokens: int) -> Dict[str, float]:
    """The plain loop over the same rows and micro-batches: forward, log-probs of the
    completion tokens times an advantage, backward; then gradient clipping and one step."""
    start = time.perf_counter()
    t = to_tensors(batch)
    lengths = t.attention_mask.sum(1)
    advantages = torch.randn(t.input_ids.shape[0])
    total = float(t.completion_mask[:, 1:].sum())
    tokens = 0
    for chunk in micro_batches(list(range(t.input_ids.shape[0])), lengths, micro_batch_tokens):
        width = int(lengths[chunk].max())
        logp = token_logprobs(model, t.input_ids[chunk, :width],
                              t.attention_mask[chunk, :width])
        mask = t.completion_mask[chunk, 1:width].float()
        (-(advantages[chunk, None] * logp * mask).sum() / total).backward()
        tokens += int(mask.sum())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return {"tokens": float(tokens), "seconds": time.perf_counter() - start}


def make_batch(groups: int, group_size: int, prompt: int, completion: int, vocab: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in range(groups):
        comps = [torch.randint(3, vocab, (completion,), generator=gen).tolist()
                 for _ in range(group_size)]
        out.append(Group(f"b{seed}-{p}", f"p{p}", torch.randint(3, vocab, (prompt,), generator=gen).tolist(),
                         comps, [[-1.0] * completion for _ in comps],
                         [float(x) for x in torch.randint(0, 2, (group_size,), generator=gen)]))
    return build_batch(out)
