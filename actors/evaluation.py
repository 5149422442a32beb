"""Evaluation on a rollout worker's engine: its share of each evaluation set, per prompt.

The sets are the training task's held-out split (``held_out``) and ``eval.sets``, read with
the training loaders and rendered with the training template. For a shard of a set the
worker samples ``k`` completions per prompt at the evaluation settings (the paper:
temperature 0.7, top-p 0.8, top-k 20) and, where asked, one greedy completion, and returns
one row per prompt: ``{prompt_id, n, correct, greedy, majority, errors}``. The figures
(mean@k, pass@k, maj@k, greedy accuracy) are computed from those rows by
``cluster.contract.estimators``, after every engine's shard is in. A sample whose reward
errored or timed out counts as wrong, and is counted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional

from actors.tasks import ArithmeticTask, DatasetTask
from actors.tasks.answers import last_boxed
from actors.tasks.base import Prompt
from cluster.contract.estimators import majority_correct

HELD_OUT = "held_out"


@dataclass(frozen=True)
class EvalSet:
    """A set's prompts and how they are sampled."""

    name: str
    prompts: List[Prompt]
    k: int
    max_new_tokens: int
    greedy: bool


def load_sets(config) -> Dict[str, EvalSet]:
    """Every evaluation set of ``config``, in order (held-out split first)."""
    r = config.rollout
    sets: Dict[str, EvalSet] = {}
    if config.eval.held_out:
        from actors.tasks import make_source

        held = make_source(config.task, config.seed).eval_set()
        sets[HELD_OUT] = EvalSet(HELD_OUT, held, r.eval_k, r.max_new_tokens, True)
    for s in config.eval.sets:
        if s.task == "arithmetic":
            # Seed 0: a synthetic set is the same prompts for every run and seed.
            prompts = ArithmeticTask(digits=s.difficulty, seed=0,
                                     eval_size=s.size).eval_set()
        else:
            task = dataclasses.replace(
                config.task, name=s.task, path=s.path, data_files=s.data_files,
                prompt_key=s.prompt_key, answer_key=s.answer_key, answer_from=s.answer_from,
                eval_size=10**9, split_seed=0, skip_bad_rows=config.task.skip_bad_rows)
            prompts = DatasetTask(task).eval_set()
            prompts = sorted(prompts, key=lambda p: _row_order(p.prompt_id))
        if s.size:
            prompts = prompts[:s.size]
        sets[s.name] = EvalSet(s.name, prompts, s.k or r.eval_k,
                               s.max_new_tokens or r.max_new_tokens, s.greedy)
    return sets


def _row_order(prompt_id: str):
    """File order of a dataset row id (``file:row12`` / ``file:line3``)."""
    head, _, tail = prompt_id.rpartition(":")
    digits = "".join(c for c in tail if c.isdigit())
    return head, int(digits) if digits else 0


def answer_key(text: str) -> str:
    """What majority voting compares: a completion's last \\boxed{} answer, else its text."""
    boxed = last_boxed(text)
    return (boxed if boxed is not None else text).strip()


def evaluate_shard(worker, eval_set: EvalSet, shard: int, shards: int,
                   k: Optional[int] = None) -> List[Dict[str, object]]:
    """Rows for prompts ``shard, shard + shards, ...`` of the set; ``k`` overrides its k."""
    k = k or eval_set.k
    indices = list(range(shard, len(eval_set.prompts), shards))
    prompts = [eval_set.prompts[i] for i in indices]
    if not prompts:
        return []
    # Seeds follow the prompt's place in the set, so the split across engines does not
    # change what is sampled.
    seeds = [(worker.config.seed * 7919 + i) % 2**31 for i in indices]
    _, outputs = worker.sample(prompts, seeds, k, "eval", max_tokens=eval_set.max_new_tokens)
    texts = worker.decode(outputs)  # scored, and compared by majority voting
    values, statuses = worker.score(prompts, outputs, texts)
    greedy_ok: List[Optional[bool]] = [None] * len(prompts)
    if eval_set.greedy:
        _, greedy = worker.sample(prompts, [None] * len(prompts), 1, "greedy",
                                  max_tokens=eval_set.max_new_tokens)
        g_values, g_statuses = worker.score(prompts, greedy)
        greedy_ok = [st == "ok" and v > 0 for v, st in zip(g_values, g_statuses)]
    rows = []
    for j, (i, prompt) in enumerate(zip(indices, prompts)):
        vals, sts = values[j * k:(j + 1) * k], statuses[j * k:(j + 1) * k]
        correct = [st == "ok" and v > 0 for v, st in zip(vals, sts)]
        rows.append({"index": i, "prompt_id": prompt.prompt_id, "n": k,
                     "correct": sum(correct), "greedy": greedy_ok[j],
                     "majority": majority_correct([answer_key(t) for t in texts[j]], correct),
                     "errors": sum(st != "ok" for st in sts)})
    return rows
