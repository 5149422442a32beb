"""Replay-queue throughput against Arrow IPC in-process and pickled lists through Ray.

Run: ``python -m benchmarks.queue --json``

One step's groups (the paper's 512 rollouts: 256 prompts x G=2 or 32 x G=16, 128-token
prompts, 512- or 2048-token completions) travel producer -> queue -> consumer in three ways, measured back to
back in one run on one Ray instance:

- ``queue``: ``ReplayQueueActor`` (durable log on, as in the driver): put, then get with
  the previous step's ack piggybacked (as the learner does), and ``to_tensors``;
- ``ipc``: Arrow IPC serialise + deserialise of the same batch in-process (no transport, the
  floor any Arrow path pays);
- ``pickle``: the same data as Python lists of dicts through a plain Ray actor (put, get),
  which is how peer systems ship rollouts, then padded into the same tensors.

Every path ends where the learner starts: padded (B, T) tensors and rewards (P, G).

Ratios: ``groups_per_s_vs_pickle`` (goal >= 5) and ``groups_per_s_vs_ipc``. The queue's share
of a learner step is its per-step time over a forward + backward + AdamW step of the embedded
tiny model on the same tokens; a real model's step is far longer, so this is an upper bound.
"""

from __future__ import annotations

import tempfile
from typing import Dict, List

import numpy as np
import pyarrow as pa

from benchmarks.common import emit, machine, parser, ratio_summary, summary, timed
from cluster.contract.schema import Group, build_batch, from_ipc, to_ipc
from learner.batch import to_tensors

ROLLOUTS_PER_STEP = 512  # the paper's step: 256 x 2 or 32 x 16
PROMPT_TOKENS = 128


def make_groups(group_size: int, completion_tokens: int, seed: int = 0) -> List[Group]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(ROLLOUTS_PER_STEP // group_size):
        comps = rng.integers(0, 32_000, size=(group_size, completion_tokens)).tolist()
        logps = (-rng.random((group_size, completion_tokens), dtype=np.float32)).tolist()
        out.append(Group(f"s{seed}-p{p}", f"p{p}", rng.integers(0, 32_000, PROMPT_TOKENS).tolist(),
                         comps, logps, rng.integers(0, 2, group_size).astype(float).tolist(),
                         finish_reasons=["length"] * group_size))
    return out


def as_python(groups: List[Group]) -> List[Dict]:
    return [dict(g.__dict__) for g in groups]


def lists_to_tensors(rows: List[Dict]) -> Dict[str, object]:
    """Padded tensors from Python rows, as a list-based pipeline builds them."""
    import torch

    seqs, logps, masks = [], [], []
    for row in rows:
        for tokens, lp in zip(row["completion_token_ids"], row["behaviour_logprobs"]):
            prompt = row["prompt_token_ids"]
            seqs.append(prompt + tokens)
            logps.append([0.0] * len(prompt) + lp)
            masks.append([0] * len(prompt) + [1] * len(tokens))
    width = max(len(s) for s in seqs)
    return {
        "input_ids": torch.tensor([s + [0] * (width - len(s)) for s in seqs]),
        "behaviour_logprobs": torch.tensor([s + [0.0] * (width - len(s)) for s in logps]),
        "completion_mask": torch.tensor([s + [0] * (width - len(s)) for s in masks]),
        "rewards": torch.tensor([row["rewards"] for row in rows]),
    }


def learner_step_seconds(batch: pa.RecordBatch, repeats: int, sample_rows: int = 64) -> List[float]:
    """Forward + backward + AdamW of the embedded tiny model on the batch's tokens.

    Timed on ``sample_rows`` rows and scaled by rows / sample_rows: the tiny model's cost is
    linear in tokens, and timing all 512 rollouts would take minutes per repetition.
    """
    import torch

    from cluster.policy.embedded import TINY_MODEL, build_model

    torch.manual_seed(0)
    model = build_model(TINY_MODEL)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5)
    t = to_tensors(batch)
    rows = min(sample_rows, t.input_ids.shape[0])
    ids = t.input_ids[:rows] % model.config.vocab_size
    mask = t.attention_mask[:rows].long()
    scale = t.input_ids.shape[0] / rows

    def step() -> None:
        for chunk in torch.split(torch.arange(rows), 32):  # micro-batches of 32 rows
            out = model(input_ids=ids[chunk], attention_mask=mask[chunk])
            out.logits.float().mean().backward()
        optim.step()
        optim.zero_grad()

    return [s * scale for s in timed(step, repeats=repeats, warmup=1)]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    import ray

    from cluster.contract.config import QueueConfig
    from cluster.queue.actor import ReplayQueueActor

    @ray.remote(num_cpus=0)
    class PickleQueueActor:
        """What peers do: a Python list of Python objects behind a Ray actor."""

        def __init__(self) -> None:
            self.items: List[Dict] = []

        def put(self, items: List[Dict]) -> int:
            self.items.extend(items)
            return len(items)

        def get(self, n: int) -> List[Dict]:
            out, self.items = self.items[:n], self.items[n:]
            return out

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    sizes = [(2, 512), (16, 512)] if args.quick else [(2, 512), (16, 512), (2, 2048), (16, 2048)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        queue = ReplayQueueActor.remote(
            QueueConfig(capacity_groups=4096, capacity_bytes=2**31), f"{tmp}/queue")
        pickled = PickleQueueActor.remote()
        for group_size, length in sizes:
            groups = make_groups(group_size, length)
            batch = build_batch(groups)
            python_rows = as_python(groups)
            counter = iter(range(10**6))
            pending: List[int] = []

            def via_queue() -> None:
                # fresh group ids each time: the queue rightly ignores re-sent groups
                i = next(counter)
                ids = pa.array([f"{group_size}-{length}-{i}-{j}" for j in range(batch.num_rows)],
                               pa.string())
                ray.get(queue.put.remote(batch.set_column(0, "group_id", ids)))
                delivery = ray.get(queue.get.remote(batch.num_rows, 0, 0.0, list(pending)))
                to_tensors(delivery.batch)
                pending[:] = delivery.offsets

            def via_pickle() -> None:
                ray.get(pickled.put.remote(python_rows))
                lists_to_tensors(ray.get(pickled.get.remote(len(python_rows))))

            def via_ipc() -> None:
                to_tensors(from_ipc(to_ipc(batch)))

            q, p, i = [], [], []
            for _ in range(args.repeats):  # interleaved, so drift hits all three alike
                q += timed(via_queue, 1, warmup=1 if not q else 0)
                p += timed(via_pickle, 1, warmup=1 if not p else 0)
                i += timed(via_ipc, 1, warmup=1 if not i else 0)
            ray.get(queue.ack.remote(pending))
            mb = batch.nbytes / 2**20
            learner = learner_step_seconds(batch, args.repeats)
            rows.append({
                "figure": f"G={group_size}, {length} completion tokens",
                "group_size": group_size,
                "completion_tokens": length,
                "groups_per_step": batch.num_rows,
                "step_mb": round(mb, 2),
                "queue_groups_per_s": summary([batch.num_rows / s for s in q]),
                "queue_mb_per_s": summary([mb / s for s in q]),
                "pickle_groups_per_s": summary([batch.num_rows / s for s in p]),
                "ipc_groups_per_s": summary([batch.num_rows / s for s in i]),
                "groups_per_s_vs_pickle": ratio_summary(p, q),
                "groups_per_s_vs_ipc": ratio_summary(i, q),
                "queue_seconds_per_step": summary(q),
                "learner_step_seconds": summary(learner),
                "queue_share_of_learner_step": summary(
                    [s / summary(learner)["median"] for s in q]),
            })
        ray.kill(queue)
    ray.shutdown()
    emit({"benchmark": "queue", "machine": machine(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
