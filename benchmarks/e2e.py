"""End to end: 2-GRPO against 16-GRPO at equal rollouts per step, where the time goes, and the
time each needs to reach a held-out accuracy.

Run: ``python -m benchmarks.e2e --json``

Both arms run the real loop (vLLM engine, reward pool, replay queue, DeepSpeed learner,
verified weight sync) on shared engines, one after the other, per seed:

- the embedded tiny task (the demo's warm-started model, 64 rollouts per step, lr 5e-5 for
  both): seconds per step split into generate / reward / queue / train / sync / other
  (driver bookkeeping and waiting), rollouts/s, trained tokens/s, and the training time
  (the steps' wall time, evaluations excluded) and the steps until held-out greedy accuracy
  first reaches ``--target`` (evaluated every 2 steps, greedy only: the target is greedy);
  ``time_to_target_2_vs_16`` is 2-GRPO's time as a fraction of 16-GRPO's, per seed;
- the paper's own comparison on the tiny task, planned as ``duet compare`` plans it: both
  arms train for the same number of epochs over one fixed set of prompts (1,024 here), so
  2-GRPO takes 1/8 of 16-GRPO's steps; the training time and the final held-out accuracy
  (greedy and mean@8) of each, as 2/16 ratios per seed;
- a ~100M-parameter model of the same architecture (random weights: no accuracy target),
  for the same split where the learner and the sync weigh more.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import ray

from benchmarks.common import emit, machine, parser, scratch_dir, summary
from cluster.contract.config import load_config
from cluster.loop.run_log import read_rows

PHASES = ("generate", "reward", "queue", "train", "sync", "other")
EVAL_EVERY = 2
TINY_PRESET = Path(__file__).resolve().parents[1] / "deploy" / "configs" / "tiny-cpu.yaml"
# One lr for both arms, as this benchmark has always run (the preset's own pair is the
# paper's 8e-6 / 1e-6, for `duet compare`).
SAME_LR = ["learner.lr=5e-5", "learner.warmup_steps=20"]


def phase_split(rows: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean seconds per step in each phase (``other``: the step's remaining wall time)."""
    out = {p: 0.0 for p in PHASES}
    for r in rows:
        parts = {"generate": r.get("generate_s", 0.0), "reward": r.get("reward_s", 0.0),
                 "queue": r.get("queue_put_s", 0.0) + r.get("queue_get_s", 0.0),
                 "train": r.get("learner_seconds", 0.0), "sync": r.get("sync_s", 0.0)}
        parts["other"] = max(0.0, r.get("step_s", 0.0) - sum(parts.values()))
        for k, v in parts.items():
            out[k] += v / len(rows)
    return out


def first_at_target(evals: List[Dict[str, float]], target: float) -> Optional[int]:
    """The step of the first evaluation at or above ``target``."""
    return next((int(row["step"]) for row in evals if row["accuracy"] >= target), None)


def time_to_target(evals: List[Dict[str, float]], steps: List[Dict[str, float]],
                   target: float) -> Optional[float]:
    """Training seconds (the steps' own wall time, evaluations excluded) until the first
    evaluation at or above ``target``."""
    at = first_at_target(evals, target)
    return None if at is None else float(sum(r["step_s"] for r in steps if r["step"] <= at))


def run_arm(config, run_dir: Path, model_path: str, actors) -> Dict[str, object]:
    from cluster.loop.driver import Driver

    summary_ = Driver(config, run_dir, model_path, actors).run()
    steps = read_rows(run_dir / "metrics.jsonl", "step")
    evals = read_rows(run_dir / "metrics.jsonl", "eval")
    seconds = sum(r["step_s"] for r in steps)
    return {"split": phase_split(steps), "step_s": seconds / len(steps),
            "rollouts_per_s": sum(r["rollouts"] for r in steps) / seconds,
            "trained_tokens_per_s": sum(r.get("tokens", 0.0) for r in steps) / seconds,
            "evals": evals, "steps": steps, "wall_s": summary_.wall_seconds}


def arms(base) -> Dict[str, object]:
    from cluster.loop.compare import arm_config

    return {g: arm_config(base, g, "same") for g in ("2", "16")}


def bench_tiny(out: Path, seeds: List[int], steps: int, target: float) -> Dict[str, object]:
    from cluster.loop.launch import start_rollouts, stop_rollouts
    from cluster.policy.models import resolve_model

    every = f"eval_every={EVAL_EVERY}"
    # Greedy accuracy is the target; mean@k would multiply each evaluation's cost by k.
    greedy_only = "rollout.eval_k=1"
    base = load_config(TINY_PRESET, SAME_LR + [f"steps={steps}", every, greedy_only,
                                               f"output_dir={out}"])
    model = str(resolve_model(base, lambda m: None))
    actors = start_rollouts(arms(base)["16"], model, out / "engines")
    per_arm: Dict[str, List[Dict[str, object]]] = {"2": [], "16": []}
    ratios: List[float] = []
    try:
        for seed in seeds:
            configs = arms(load_config(TINY_PRESET, SAME_LR + [
                f"steps={steps}", every, greedy_only, f"output_dir={out}", f"seed={seed}"]))
            got = {g: run_arm(c, out / f"tiny-s{seed}-g{g}", model, actors)
                   for g, c in configs.items()}
            for g in got:
                per_arm[g].append(got[g])
            t2, t16 = (time_to_target(got[g]["evals"], got[g]["steps"], target)
                       for g in ("2", "16"))
            if t2 is not None and t16 is not None:
                ratios.append(t2 / t16)
            print(f"e2e tiny seed {seed}: " + ", ".join(
                f"{g}-GRPO {first_at_target(got[g]['evals'], target)} steps / "
                f"{time_to_target(got[g]['evals'], got[g]['steps'], target)} s to target"
                for g in got), flush=True)
    finally:
        stop_rollouts(actors)
    rows = []
    for g, runs in per_arm.items():
        reached = [time_to_target(r["evals"], r["steps"], target) for r in runs]
        at_step = [first_at_target(r["evals"], target) for r in runs]
        rows.append({
            "figure": f"tiny task, {g}-GRPO ({64 // int(g)} x {g}), {steps} steps",
            **{f"{p}_s_per_step": summary([r["split"][p] for r in runs]) for p in PHASES},
            "step_s": summary([r["step_s"] for r in runs]),
            "rollouts_per_s": summary([r["rollouts_per_s"] for r in runs]),
            "trained_tokens_per_s": summary([r["trained_tokens_per_s"] for r in runs]),
            f"seconds_to_greedy_{target:.0%}": summary([t for t in reached if t is not None])
            if any(t is not None for t in reached) else None,
            f"steps_to_greedy_{target:.0%}": summary([s for s in at_step if s is not None])
            if any(s is not None for s in at_step) else None,
            "best_greedy_accuracy": summary([max(e["accuracy"] for e in r["evals"]) for r in runs]),
            "seeds_reaching_target": sum(t is not None for t in reached),
        })
    rows.append({"figure": f"tiny task, time to {target:.0%} greedy held-out accuracy, 2 vs 16",
                 "time_to_target_2_vs_16": summary(ratios) if ratios else None,
                 "seeds_compared": len(ratios)})
    return {"rows": rows}


def bench_equal_epochs(out: Path, seeds: List[int], train_prompts: int,
                       epochs: int = 1) -> Dict[str, object]:
    """Both arms over the same epochs of one fixed prompt set: the paper's comparison, as
    ``duet compare`` plans it (``compare.budget=epochs``), evaluated once at the end."""
    import dataclasses

    from cluster.loop.compare import plan_runs
    from cluster.loop.launch import start_rollouts, stop_rollouts
    from cluster.policy.models import resolve_model

    base = load_config(TINY_PRESET, SAME_LR + [
        f"output_dir={out}", f"seed={seeds[0]}", f"compare.seeds={len(seeds)}",
        f"compare.train_prompts={train_prompts}", f"compare.epochs={epochs}",
        # A short run: 4 warm-up steps for both (the paper: 10 of 2-GRPO's 293).
        "learner.warmup_steps=4"])
    plan = plan_runs(base, ["2", "16"], out / "epochs", "same", "epochs")
    model = str(resolve_model(base, lambda m: None))
    actors = start_rollouts(plan["16"][seeds[0]], model, out / "engines-epochs")
    per_arm: Dict[str, List[Dict[str, float]]] = {"2": [], "16": []}
    try:
        for seed in plan["2"]:
            for g in ("2", "16"):
                c = plan[g][seed]
                steps = c.steps
                c = dataclasses.replace(c, eval_every=steps)
                r = run_arm(c, out / f"epochs-s{seed}-g{g}", model, actors)
                final = r["evals"][-1]
                per_arm[g].append({"steps": steps, "train_s": r["step_s"] * steps,
                                   "greedy": final["accuracy"], "mean_at_k": final["mean_at_k"]})
                print(f"e2e equal epochs seed {seed}: {g}-GRPO {steps} steps, "
                      f"{r['step_s'] * steps:.1f} s, greedy {final['accuracy']:.3f}, "
                      f"mean@k {final['mean_at_k']:.3f}", flush=True)
    finally:
        stop_rollouts(actors)
    label = f"tiny task, {epochs} epoch(s) of a fixed set of {train_prompts} prompts"
    rows = [{"figure": f"{label}, {g}-GRPO ({64 // int(g)} x {g})",
             "steps": runs[0]["steps"],
             "training_seconds": summary([r["train_s"] for r in runs]),
             "final_greedy_accuracy": summary([r["greedy"] for r in runs]),
             "final_mean_at_8": summary([r["mean_at_k"] for r in runs])}
            for g, runs in per_arm.items()]
    pairs = list(zip(per_arm["2"], per_arm["16"]))
    rows.append({"figure": f"{label}, 2 vs 16",
                 "training_time_2_vs_16": summary([a["train_s"] / b["train_s"] for a, b in pairs]),
                 "final_mean_at_8_2_vs_16": summary([a["mean_at_k"] / b["mean_at_k"]
                                                     for a, b in pairs]),
                 "final_greedy_2_vs_16": summary([a["greedy"] / b["greedy"] for a, b in pairs])})
    return {"rows": rows}


def bench_100m(out: Path, steps: int) -> Dict[str, object]:
    from benchmarks.rollout import MODEL_100M
    from cluster.loop.launch import start_rollouts, stop_rollouts
    from cluster.policy.embedded import build_model, build_tokenizer, save_model_folder

    model = str(save_model_folder(build_model(MODEL_100M), build_tokenizer(), out / "m100"))
    base = load_config(None, [f"model.path={model}", "model.max_model_len=128",
                              "rollout.max_new_tokens=32", f"steps={steps}", "eval_every=0",
                              "task.eval_size=16", "algo.prompts_per_step=32",
                              "algo.group_size=2", f"output_dir={out}"])
    configs = arms(base)
    actors = start_rollouts(configs["16"], model, out / "engines-100m")
    try:
        got = {g: run_arm(c, out / f"m100-g{g}", model, actors) for g, c in configs.items()}
    finally:
        stop_rollouts(actors)
    rows = []
    for g, r in got.items():
        rows.append({"figure": f"~100M model, {g}-GRPO ({64 // int(g)} x {g}), {steps} steps",
                     **{f"{p}_s_per_step": r["split"][p] for p in PHASES},
                     "step_s": r["step_s"], "rollouts_per_s": r["rollouts_per_s"],
                     "trained_tokens_per_s": r["trained_tokens_per_s"]})
    rows.append({"figure": "~100M model, step time 2 vs 16",
                 "step_s_2_vs_16": got["2"]["step_s"] / got["16"]["step_s"]})
    return {"rows": rows}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--target", type=float, default=0.7, help="held-out greedy accuracy target")
    p.add_argument("--steps", type=int, default=40, help="steps per arm on the tiny task")
    p.add_argument("--fixed-set", type=int, default=1024,
                   help="training prompts of the equal-epochs comparison (a multiple of 32)")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    out = scratch_dir("duet-bench-e2e-")
    seeds = list(range(1 if args.quick else max(2, min(args.repeats, 3))))
    rows = bench_tiny(out, seeds, 20 if args.quick else args.steps, args.target)["rows"]
    rows += bench_equal_epochs(out, seeds, 128 if args.quick else args.fixed_set)["rows"]
    if not args.quick:
        rows += bench_100m(out, 6)["rows"]
    ray.shutdown()
    emit({"benchmark": "e2e", "machine": machine(), "rows": rows,
          "note": "the 16-GRPO arm is each figure's baseline; phases are seconds per step "
                  f"(median over seeds {seeds} on the tiny task, one run on ~100M)"}, args.json)


if __name__ == "__main__":
    main()
