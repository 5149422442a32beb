"""Comparing group sizes: arms at equal rollouts per step, from the same start, several seeds.

Each arm keeps ``prompts_per_step x group_size`` equal to the base config's, so every step
costs the same number of rollouts, and scales the learning rate by a documented rule:

- ``linear`` (default, the paper's): lr proportional to prompts per step. The paper trains
  16-GRPO with 32 x 16 at 1e-6 and 2-GRPO with 256 x 2 at 8e-6 (8x the prompts, 8x the lr).
- ``sqrt``: lr proportional to sqrt(prompts per step).
- ``same``: one lr for every arm.

The base config's own (prompts_per_step, lr) pair anchors the rule. ``2+rs`` is 2-GRPO with
resampling of tied groups (2-GRPO+RS).

How long each arm trains (``compare.budget``):

- ``epochs`` (default, the paper's comparison): every arm makes ``compare.epochs`` passes
  over one fixed prompt set. A synthetic task's set is written as a dataset beside the runs
  (``prompts.jsonl``: ``compare.train_prompts`` training prompts plus the held-out ones); a
  dataset task is its own set. The held-out split is fixed (``task.split_seed``), so every
  arm and every seed trains on the same prompts and is evaluated on the same others; at
  equal rollouts per step a G=2 arm then takes 1/8 of a G=16 arm's steps and rollouts.
  Each run is evaluated ``compare.evaluations`` times, at the same fractions of its epochs.
- ``steps``: every arm runs ``steps`` steps; ``rollouts``: the same total rollouts.

Every arm runs once per seed (``compare.seeds``), on shared engines (reset between runs),
from the same starting weights, into ``<run>/arm-<G>/seed-<s>/``.
"""

from __future__ import annotations

import json
import math
import time
import typing
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from cluster.contract.config import CompareConfig, ConfigError, RunConfig, replace

_HINTS = typing.get_type_hints(CompareConfig)
LR_RULES = typing.get_args(_HINTS["lr_rule"])
BUDGETS = typing.get_args(_HINTS["budget"])
PROMPT_SET = "prompts.jsonl"


def parse_arms(text: str) -> List[str]:
    """'2,16' -> ['2', '16']; each arm is a group size, optionally with '+rs'."""
    arms = [a.strip() for a in text.split(",") if a.strip()]
    if not arms:
        raise ConfigError("--arms", "needs at least one arm, e.g. 2,16")
    for arm in arms:
        size, _, suffix = arm.partition("+")
        if not size.isdigit() or int(size) < 2 or suffix not in ("", "rs"):
            raise ConfigError("--arms", f"arm {arm!r} must be a group size >= 2, optionally "
                              "followed by '+rs' (e.g. 2,16 or 2,2+rs,16)")
    if len(set(arms)) != len(arms):
        raise ConfigError("--arms", f"arms repeat: {text!r}")
    return arms


def arm_config(base: RunConfig, arm: str, lr_rule: str = "linear", budget: str = "steps",
               train_prompts: Optional[int] = None) -> RunConfig:
    """The base config rewritten for one arm (group size, prompts, lr, tie handling, and its
    steps under the budget; ``train_prompts``: the fixed set's size, for 'epochs')."""
    if lr_rule not in LR_RULES:
        raise ConfigError("--lr-rule", f"must be one of {LR_RULES}", value=lr_rule)
    if budget not in BUDGETS:
        raise ConfigError("--budget", f"must be one of {BUDGETS}", value=budget)
    size = int(arm.partition("+")[0])
    rollouts = base.algo.rollouts_per_step
    if rollouts % size:
        raise ConfigError("--arms", f"arm {arm!r}: rollouts per step ({rollouts} = "
                          f"{base.algo.prompts_per_step} x {base.algo.group_size}) is not a "
                          "multiple of its group size")
    prompts = rollouts // size
    scale = prompts / base.algo.prompts_per_step
    lr = base.learner.lr * {"linear": scale, "sqrt": math.sqrt(scale), "same": 1.0}[lr_rule]
    overrides = [
        f"name={base.name}-g{arm.replace('+', '')}",
        f"algo.group_size={size}",
        f"algo.prompts_per_step={prompts}",
        f"learner.lr={lr!r}",
        f"algo.mini_batches={min(base.algo.mini_batches, prompts)}",
    ]
    if base.algo.advantage == "pairwise" and size != 2:
        overrides.append("algo.advantage=grpo")
    if arm.endswith("+rs"):
        overrides.append("rollout.tie_handling=resample")
    if budget == "rollouts":
        overrides.append(f"max_rollouts={base.steps * rollouts}")
    if budget == "epochs":
        if train_prompts is None:
            raise ValueError("the epochs budget needs the fixed prompt set's size")
        # A last partial step rounds up, as the paper's schedule does (10 epochs of 7.5k
        # prompts: 293 steps of 256, 2,344 of 32).
        steps = math.ceil(base.compare.epochs * train_prompts / prompts)
        overrides += [f"steps={steps}",
                      f"eval_every={max(1, steps // base.compare.evaluations)}"]
    return replace(base, overrides)


def fixed_prompt_set(base: RunConfig, out_dir: Path) -> Tuple[RunConfig, int]:
    """The base config reading the comparison's one prompt set, and its training size.

    A synthetic task's first ``compare.train_prompts`` distinct training prompts and its
    held-out ones are written to ``out_dir/prompts.jsonl``; the held-out split of any dataset is then
    fixed to the base seed, so that every seed splits it the same way.
    """
    from actors.tasks import DatasetTask, make_source

    task = base.task
    overrides = [f"task.split_seed={task.split_seed if task.split_seed is not None else base.seed}"]
    if task.name == "arithmetic":
        source = make_source(task, base.seed)
        rows = source.eval_set()
        seen, position = {p.text for p in rows}, 0
        while len(rows) < len(source.eval_set()) + base.compare.train_prompts:
            prompt = source.train(position)  # the stream repeats prompts; the set does not
            position += 1
            if position > 100 * (base.compare.train_prompts + len(rows)):
                raise ConfigError("compare.train_prompts", f"the task has only {len(seen)} "
                                  "distinct prompts besides those: ask for fewer, or raise "
                                  "task.difficulty", value=base.compare.train_prompts)
            if prompt.text not in seen:
                seen.add(prompt.text)
                rows.append(prompt)
        path = Path(out_dir) / PROMPT_SET
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"prompt": p.text, "answer": p.answer}) + "\n"
                                for p in rows))
        overrides += ["task.name=jsonl", f"task.path={path}"]
    fixed = replace(base, overrides)
    return fixed, DatasetTask(fixed.task, seed=fixed.seed).train_size


def seeds_of(base: RunConfig) -> List[int]:
    return [base.seed + i for i in range(base.compare.seeds)]


def plan_runs(base: RunConfig, arms: Sequence[str], out_dir: Path, lr_rule: str,
              budget: str) -> Dict[str, Dict[int, RunConfig]]:
    """Every run of the comparison: ``{arm: {seed: config}}``."""
    train_prompts = None
    if budget == "epochs":
        base, train_prompts = fixed_prompt_set(base, out_dir)
    plan: Dict[str, Dict[int, RunConfig]] = {}
    for arm in arms:
        config = arm_config(base, arm, lr_rule, budget, train_prompts)
        plan[arm] = {seed: replace(config, [f"seed={seed}"]) for seed in seeds_of(base)}
    return plan


def run_dir_of(out_dir: Path, arm: str, seed: int) -> Path:
    return Path(out_dir) / f"arm-{arm.replace('+', '')}" / f"seed-{seed}"


def run_compare(base: RunConfig, arms: Sequence[str], out_dir: Path, lr_rule: str = "linear",
                budget: str = "epochs",
                progress: Optional[Callable[[str, RunConfig, Dict[str, object]], None]] = None,
                say: Callable[[str], None] = print) -> Dict[str, object]:
    """Run every arm for every seed, seed by seed, on shared engines; returns summaries.

    ``progress(label, config, row)`` sees every row of every run."""
    from cluster.loop.driver import Driver
    from cluster.loop.launch import start_ray, start_rollouts
    from cluster.loop.tracking import TrackedRun, check_installed, comparison_parent
    from cluster.policy.models import resolve_model
    from cluster.tools.data import preflight

    check_installed(base)  # a missing tracker is said before anything starts
    plan = plan_runs(base, arms, out_dir, lr_rule, budget)
    start_ray(base)
    model_path = resolve_model(base, say)
    say(f"starting {base.rollout.num_workers} rollout engine(s) on {model_path}")
    widest = max((runs[base.seed] for runs in plan.values()), key=lambda c: c.algo.group_size)
    preflight(widest, model_path, Path(out_dir), say)  # before any engine starts
    actors = start_rollouts(widest, str(model_path), out_dir / "engines")
    # The table's base row: the shared starting weights, evaluated once on every set.
    base_eval = evaluate_base(actors, Path(out_dir) / BASE_DIR, say)
    results: Dict[str, Dict[int, object]] = {arm: {} for arm in arms}
    # Tracked: one run per arm x seed, grouped under the comparison (``cluster.loop.tracking``).
    parent = comparison_parent(base, Path(out_dir))
    for seed in seeds_of(base):
        for arm in arms:
            config = plan[arm][seed]
            label = f"{arm}-GRPO seed {seed}"
            say(f"{label}: {config.steps} steps of {config.algo.prompts_per_step} prompts x "
                f"{config.algo.group_size} rollouts, lr {config.learner.lr:.3g}, ties: "
                f"{config.rollout.tie_handling}")
            started = time.perf_counter()
            run_dir = run_dir_of(out_dir, arm, seed)
            tracked = TrackedRun(Path(out_dir), run_dir, f"{run_dir.parent.name}/{run_dir.name}",
                                 group=Path(out_dir).name, parent_id=parent)
            driver = Driver(config, run_dir, str(model_path), actors,
                            progress=(lambda row, c=config, lb=label: progress(lb, c, row))
                            if progress else None, tracked=tracked)
            results[arm][seed] = {"config": config, "summary": driver.run(),
                                  "seconds": time.perf_counter() - started}
    return {"arms": results, "model_path": str(model_path), "base": base_eval}


BASE_DIR = "base"


def evaluate_base(actors: list, out: Path, say: Callable[[str], None]) -> Dict[str, object]:
    """The starting weights on every evaluation set: ``<out>/eval.json`` + per-prompt files."""
    from cluster.loop.evaluation import evaluate_sets, write_eval_json

    result = evaluate_sets(actors, out, version=0)  # fresh engines: the starting weights
    write_eval_json(out, result)
    avg = result["average"]
    say(f"base model: mean@k {avg['mean_at_k']:.1%}, pass@k {avg['pass_at_k']:.1%} averaged "
        f"over {len(result['sets'])} set(s), in {result['seconds']:.1f} s")
    return result
