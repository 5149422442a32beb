"""The 2-vs-16 comparison: arms at equal rollouts per step, from the same start, side by side.

Each arm keeps ``prompts_per_step x group_size`` equal to the base config's, so every step
costs the same number of rollouts, and scales the learning rate by a documented rule:

- ``linear`` (default, the paper's): lr proportional to prompts per step. The paper trains
  16-GRPO with 32 x 16 at 1e-6 and 2-GRPO with 256 x 2 at 8e-6 (8x the prompts, 8x the lr).
- ``sqrt``: lr proportional to sqrt(prompts per step).
- ``same``: one lr for every arm.

The base config's own (prompts_per_step, lr) pair anchors the rule. ``2+rs`` is 2-GRPO with
resampling of tied groups (2-GRPO+RS). Arms share the rollout engines (reset between arms),
the starting weights, the seed and so the prompt stream.
"""

from __future__ import annotations

import math
import time
import typing
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from cluster.contract.config import CompareConfig, ConfigError, RunConfig, replace

_HINTS = typing.get_type_hints(CompareConfig)
LR_RULES = typing.get_args(_HINTS["lr_rule"])
BUDGETS = typing.get_args(_HINTS["budget"])


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
    return arms


def arm_config(base: RunConfig, arm: str, lr_rule: str = "linear", budget: str = "steps"
               ) -> RunConfig:
    """The base config rewritten for one arm (group size, prompts, lr, tie handling)."""
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
    return replace(base, overrides)


def run_compare(base: RunConfig, arms: Sequence[str], out_dir: Path, lr_rule: str = "linear",
                budget: str = "steps",
                progress: Optional[Callable[[str, Dict[str, object]], None]] = None,
                say: Callable[[str], None] = print) -> Dict[str, object]:
    """Run every arm in turn on shared engines; returns per-arm summaries."""
    from cluster.loop.driver import Driver
    from cluster.loop.launch import start_ray, start_rollouts
    from cluster.policy.models import resolve_model

    configs = {arm: arm_config(base, arm, lr_rule, budget) for arm in arms}
    start_ray(base)
    model_path = resolve_model(base, say)
    say(f"starting {base.rollout.num_workers} rollout engine(s) on {model_path}")
    widest = max(configs.values(), key=lambda c: c.algo.group_size)
    actors = start_rollouts(widest, str(model_path), out_dir / "engines")
    results: Dict[str, object] = {}
    for arm, config in configs.items():
        say(f"arm {arm}: {config.algo.prompts_per_step} prompts x {config.algo.group_size} "
            f"rollouts, lr {config.learner.lr:.3g}, ties: {config.rollout.tie_handling}")
        started = time.perf_counter()
        driver = Driver(config, out_dir / f"arm-{arm.replace('+', '')}", str(model_path), actors,
                        progress=(lambda row, a=arm: progress(a, row)) if progress else None)
        summary = driver.run()
        results[arm] = {"config": config, "summary": summary,
                        "seconds": time.perf_counter() - started}
    return {"arms": results, "model_path": str(model_path)}
