"""The ``duet`` command line: train, compare, eval, report.

Every command takes ``--config FILE`` and dotted overrides (``algo.group_size=16``); the
resolved config is printed and saved with the run under ``runs/<name>/``. With no
arguments, ``duet compare`` runs the embedded default: local Ray, CPU engines, the tiny
model duet builds itself, the synthetic arithmetic task, arms 2 and 16.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path
from typing import Dict, List, Optional

from cluster.config import ConfigError, RunConfig, field_help, load_config, replace, to_yaml

DEFAULT_PRESET = Path(__file__).resolve().parent.parent / "deploy" / "configs" / "tiny-cpu.yaml"


def options_help() -> str:
    """Every config key with its type, default and meaning, for --help."""
    lines = ["config keys (set in --config YAML or as key=value overrides):"]

    def walk(cls, prefix: str, default) -> None:
        docs = field_help(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.", value)
                continue
            lines.append(f"  {prefix}{f.name} = {value!r}")
            lines.append(f"      {docs.get(f.name, '')}")

    walk(RunConfig, "", RunConfig())
    return "\n".join(lines)


def _config(args) -> RunConfig:
    source = args.config
    if source is None and DEFAULT_PRESET.exists():
        source = DEFAULT_PRESET
    return load_config(source, args.overrides)


class Progress:
    """Live progress: a rich status line on a terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, total_steps: int, label: str = "") -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.total, self.label = total_steps, label
        self.start = time.perf_counter()
        self.last_acc: Optional[float] = None
        self._live = None
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live("", console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def __call__(self, row: Dict[str, object]) -> None:
        if row["kind"] == "info":
            self._print(f"{self.label}{row['message']}")
            return
        if row["kind"] == "eval":
            self.last_acc = float(row["accuracy"])
            line = (f"{self.label}eval @ step {row['step']}: held-out greedy accuracy "
                    f"{self.last_acc:.1%}, mean@{row['k']} {row['mean_at_k']:.1%} "
                    f"({row['n']} prompts)")
            self._print(line)
            return
        step = int(row["step"])
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total - step) if step else 0.0
        acc = "—" if self.last_acc is None else f"{self.last_acc:.1%}"
        line = (f"{self.label}step {step}/{self.total}  reward {row.get('reward_mean', 0):.3f}  "
                f"acc {acc}  rollouts {row.get('rollouts_total', 0)}  "
                f"tok/s {row.get('tokens_per_s', 0):.0f}  staleness {row.get('staleness_max', 0):.0f}  "
                f"ETA {eta:.0f}s")
        if self._live is not None:
            self._live.update(line)
        elif step == 1 or step % 10 == 0 or step == self.total:
            print(line, flush=True)

    def _print(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


def _run_dir(config: RunConfig) -> Path:
    return Path(config.output_dir) / config.name


def _fresh_run_dir(config: RunConfig, resume: bool = False) -> Path:
    """The run's folder; a previous run found there is moved aside, never overwritten."""
    run_dir = _run_dir(config)
    if resume or not run_dir.exists() or not any(run_dir.iterdir()):
        return run_dir
    aside = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    print(f"{run_dir} held an earlier run: moved it to {aside} "
          "(use --resume to continue a run instead)")
    return run_dir


def _resource_plan(config: RunConfig) -> str:
    a, r, lrn = config.algo, config.rollout, config.learner
    return "\n".join([
        "resource plan:",
        f"  rollout actors : {r.num_workers} (one vLLM engine each)",
        f"  learner ranks  : {lrn.num_ranks} (DeepSpeed ZeRO-{lrn.zero_stage})",
        f"  GPUs           : {(r.num_workers + lrn.num_ranks) * config.cluster.gpus_per_actor:g} "
        f"({config.cluster.gpus_per_actor:g} per rollout actor and learner rank)",
        f"  replay queue   : 1 actor, {config.queue.capacity_groups} groups / "
        f"{config.queue.capacity_bytes / 2**20:.0f} MiB, max staleness {config.queue.max_staleness}",
        f"  batch geometry : {a.prompts_per_step} prompts x {a.group_size} = "
        f"{a.rollouts_per_step} rollouts per step, {a.mini_batches} mini-batch(es), "
        f"{a.ppo_epochs} epoch(s)",
        f"  tokens / step  : up to {a.rollouts_per_step * (r.max_new_tokens):,} completion tokens",
        f"  steps          : {config.steps} ({config.steps * a.rollouts_per_step:,} rollouts)",
        f"  mode           : {config.cluster.mode}, lr {lrn.lr:g}, clip {a.clip_low}/{a.clip_high}",
    ])


def cmd_train(args) -> int:
    from cluster.driver import Driver, start_ray, start_rollouts
    from cluster.models import resolve_model

    config = _config(args)
    print(to_yaml(config))
    if args.dry_run:
        print(_resource_plan(config))
        return 0
    run_dir = _fresh_run_dir(config, args.resume)
    start_ray(config)
    model_path = resolve_model(config)
    actors = start_rollouts(config, str(model_path), run_dir / "engines")
    progress = Progress(config.steps)
    try:
        summary = Driver(config, run_dir, str(model_path), actors, progress=progress,
                         resume=args.resume).run()
    finally:
        progress.close()
    print(json.dumps({"run_dir": str(run_dir), "steps": summary.steps,
                      "final_accuracy": summary.eval[-1]["accuracy"] if summary.eval else None,
                      "wall_seconds": round(summary.wall_seconds, 1)}))
    print(f"run written to {run_dir}")
    return 0


def cmd_compare(args) -> int:
    from cluster.compare import parse_arms, run_compare
    from cluster.report import write_report

    base = _config(args)
    arms = parse_arms(args.arms or base.compare.arms)
    lr_rule = args.lr_rule or base.compare.lr_rule
    budget = args.budget or base.compare.budget
    # The saved config says what ran, flags included.
    base = replace(base, [f"compare.arms={','.join(arms)}", f"compare.lr_rule={lr_rule}",
                          f"compare.budget={budget}"])
    print(to_yaml(base))
    run_dir = _fresh_run_dir(base)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(base))
    bars: Dict[str, Progress] = {}

    def progress(arm: str, row: Dict[str, object]) -> None:
        if arm not in bars:
            for bar in bars.values():
                bar.close()
            bars[arm] = Progress(base.steps, label=f"[{arm}-GRPO] ")
        bars[arm](row)

    try:
        run_compare(base, arms, run_dir, lr_rule, budget, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    report = write_report(run_dir)
    print(Path(report).read_text())
    print(f"report written to {report} (plots: {run_dir / 'report.png'})")
    return 0


def cmd_eval(args) -> int:
    from cluster.driver import start_ray, start_rollouts
    from cluster.models import resolve_model

    config = _config(args)
    start_ray(config)
    model = Path(args.model) if args.model else resolve_model(config)
    actors = start_rollouts(config, str(model), _run_dir(config) / "engines")
    import ray

    got = ray.get(actors[0].evaluate.remote(None, args.k))
    result = {"model": str(model), "greedy_accuracy": got["accuracy"],
              f"mean@{got['k']}": got["mean_at_k"], "n": got["n"]}
    print(json.dumps(result))
    return 0


RUNTIME_ENV = Path(__file__).resolve().parents[1] / "deploy" / "runtime_env.yaml"


def submit_command(args) -> List[str]:
    """The `ray job submit` command line for ``duet submit``."""
    import os
    import shutil

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("--address", "no Ray cluster given: pass --address "
                          "http://HEAD:8265 (the job API) or set RAY_ADDRESS")
    rest = list(args.duet_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest or rest[0] not in ("train", "compare", "eval"):
        raise ConfigError("duet submit", "name the command to run on the cluster, e.g. "
                          "duet submit -- train --config deploy/configs/qwen2.5-math-1.5b-g2.yaml")
    sibling = Path(sys.executable).with_name("ray")
    ray_cli = str(sibling) if sibling.exists() else (shutil.which("ray") or "ray")
    cmd = [ray_cli, "job", "submit", "--address", address, "--working-dir", args.working_dir,
           "--runtime-env", args.runtime_env]
    if args.submission_id:
        cmd += ["--submission-id", args.submission_id]
    if args.no_wait:
        cmd.append("--no-wait")
    return cmd + ["--", "python", "-m", "cluster.cli", *rest]


def cmd_submit(args) -> int:
    import os
    import subprocess
    import uuid

    if not args.submission_id:  # a known id lets a refused submission be told from a failed job
        args.submission_id = f"duet-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    cmd = submit_command(args)
    env = dict(os.environ)
    # Ray 2.60 clusters started with `ray start` require their token; the client only
    # sends it (from ~/.ray/auth_token) in token mode.
    if "RAY_AUTH_MODE" not in env and (Path.home() / ".ray" / "auth_token").exists():
        env["RAY_AUTH_MODE"] = "token"
    print("$ " + " ".join(cmd), flush=True)
    status = [cmd[0], "job", "status", "--address", cmd[cmd.index("--address") + 1],
              args.submission_id]
    code = 1
    for attempt in range(args.retries + 1):
        code = subprocess.call(cmd, env=env)
        if code == 0 or subprocess.call(status, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) == 0:
            break  # done, or accepted and then failed: never submit it twice
        # A fresh cluster's job API answers before its job agent takes jobs.
        print(f"duet: the cluster did not take the job (attempt {attempt + 1}); retrying in "
              f"{args.retry_seconds:g} s", flush=True)
        time.sleep(args.retry_seconds)
    if code == 0 and not args.no_wait:
        print(f"job {args.submission_id} finished; its run folder is under the job's "
              "output_dir (see 'run written to' above); `ray job logs` shows the log again")
    return code


def cmd_plan(args) -> int:
    from cluster.plan import (
        PAPER_HOURS,
        PAPER_PRESETS,
        assumed_costs,
        measured_costs,
        paper_implied,
        parameters_of,
        project,
    )

    for flag, value in (("--gen-mfu", args.gen_mfu), ("--train-mfu", args.train_mfu)):
        if not 0 < value <= 1:
            raise SystemExit(f"duet plan: {flag} is a fraction of peak FLOP/s, in (0, 1]; "
                             f"got {value}")
    root = Path(__file__).resolve().parents[1]
    sources = args.config or [str(root / p) for p in PAPER_PRESETS]
    rows = []
    for source in sources:
        config = load_config(source, args.overrides)
        costs = (measured_costs(Path(args.measured)) if args.measured
                 else assumed_costs(args.params or parameters_of(config), gen_mfu=args.gen_mfu,
                                    train_mfu=args.train_mfu))
        proj = project(config, costs, args.response_tokens,
                       None if args.dataset_size == 0 else args.dataset_size, args.epochs,
                       args.evals, args.eval_prompts, args.eval_k)
        rows.append((config, proj, costs))
    print(f"cost source: {rows[0][2].source}")
    print(f"assumed: {args.response_tokens:g} completion tokens per rollout; "
          + (f"{args.epochs:g} epochs over {args.dataset_size} prompts; " if args.dataset_size
             else "the configs' own steps; ")
          + f"{args.evals} evaluations of {args.eval_prompts} prompts x {args.eval_k} samples")
    def span(seconds: float) -> str:
        return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"

    print("| config | GPUs | steps | s/step (generate + train + fixed) | evaluation | total |")
    print("| --- | --- | --- | --- | --- | --- |")
    for config, p, _ in rows:
        gpus = (config.rollout.num_workers + config.learner.num_ranks) * max(
            config.cluster.gpus_per_actor, 0)
        print(f"| {config.name} (G={config.algo.group_size}) | {gpus:g} | {p.steps} | "
              f"{p.step_s:.3g} ({p.generate_s:.3g} + {p.train_s:.3g} + {p.fixed_s:.3g}) | "
              f"{span(p.eval_s)} | {span(p.hours * 3600)} |")
    sizes = {c.algo.group_size: p for c, p, _ in rows}
    if 2 in sizes and 16 in sizes:
        ratio = sizes[2].hours / sizes[16].hours
        print(f"\nprojected 2-GRPO / 16-GRPO time: {ratio:.1%}")
        if not args.config:
            implied = paper_implied()
            paper = PAPER_HOURS[2] / PAPER_HOURS[16]
            print(f"paper (Qwen2.5-Math-1.5B, MATH, 4 GPUs): {PAPER_HOURS[2]} h vs "
                  f"{PAPER_HOURS[16]} h = {paper:.1%}; if both arms' steps cost the same, "
                  f"those totals imply {implied['step_s']:.1f} s per step and "
                  f"{implied['fixed_hours']:.2f} h of per-run costs (evaluation, start-up, "
                  "checkpoints) that do not shrink with fewer steps: that fixed part is why "
                  "the paper's ratio is above the 12.5% step ratio")
    return 0


def cmd_audit(args) -> int:
    from cluster.audit import audit, audit_json

    root = Path(args.run_dir)
    runs = sorted(root.glob("arm-*")) if not (root / "ledger.jsonl").exists() else [root]
    if not runs:
        raise ConfigError("run_dir", f"{root} holds no ledger.jsonl (nor arm-*/ledger.jsonl): "
                          "pass runs/<name> of a duet train or compare run", value=str(root))
    ok = True
    for run in runs:
        report = audit(run)
        print(audit_json(report) if args.json else report.text())
        ok = ok and report.ok
    return 0 if ok else 1


def cmd_report(args) -> int:
    from cluster.report import write_report

    path = write_report(Path(args.run_dir))
    print(path.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duet", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=options_help())
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, default=None,
                       help=f"YAML config (default: {DEFAULT_PRESET.relative_to(DEFAULT_PRESET.parents[2])})")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted config overrides, e.g. algo.group_size=16")

    train = sub.add_parser("train", help="train one policy", epilog=options_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    common(train)
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest complete checkpoint of runs/<name>")
    train.add_argument("--dry-run", action="store_true",
                       help="validate the config and print the resource plan; start nothing")
    train.set_defaults(func=cmd_train)

    compare = sub.add_parser("compare", help="2-vs-16 (or other) arms at equal rollouts/step",
                             epilog=options_help(),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    common(compare)
    compare.add_argument("--arms", default=None,
                         help="group sizes to compare; '2+rs' is 2-GRPO with resampling "
                              "(default: compare.arms)")
    compare.add_argument("--lr-rule", default=None, choices=["linear", "sqrt", "same"],
                         help="learning rate per arm: linear in prompts per step (the paper), "
                              "sqrt, or the same for all (default: compare.lr_rule)")
    compare.add_argument("--budget", default=None, choices=["steps", "rollouts"],
                         help="equal steps per arm (the paper) or an equal total rollout "
                              "budget (default: compare.budget)")
    compare.set_defaults(func=cmd_compare)

    evaluate = sub.add_parser("eval", help="held-out accuracy of a model")
    common(evaluate)
    evaluate.add_argument("--model", default=None, help="model folder (default: model.path)")
    evaluate.add_argument("-k", type=int, default=None,
                          help="samples per prompt for mean@k (default: rollout.eval_k)")
    evaluate.set_defaults(func=cmd_eval)

    report = sub.add_parser("report", help="rebuild report.md/png from a compare run")
    report.add_argument("run_dir", help="runs/<name> of a compare run")
    report.set_defaults(func=cmd_report)

    submit = sub.add_parser(
        "submit", help="run a duet command on a Ray cluster with `ray job submit`",
        description="Runs `ray job submit --working-dir . --runtime-env deploy/runtime_env.yaml "
                    "-- python -m cluster.cli <command> ...` against --address or $RAY_ADDRESS. "
                    "Set output_dir to storage the cluster and you can both read.")
    submit.add_argument("--address", default=None,
                        help="Ray job API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")
    submit.add_argument("--runtime-env", default=str(RUNTIME_ENV),
                        help="runtime env YAML (default: deploy/runtime_env.yaml)")
    submit.add_argument("--working-dir", default=".", help="folder shipped to the cluster")
    submit.add_argument("--submission-id", default=None, help="job id to use")
    submit.add_argument("--retries", type=int, default=24,
                        help="resubmit this many times while the cluster refuses the job "
                             "(a fresh cluster's job agent starts late)")
    submit.add_argument("--retry-seconds", type=float, default=5.0, help="wait between tries")
    submit.add_argument("--no-wait", action="store_true",
                        help="return once submitted (then: ray job logs -f <id>)")
    submit.add_argument("duet_args", nargs=argparse.REMAINDER,
                        help="-- then the duet command, e.g. -- train --config FILE key=value")
    submit.set_defaults(func=cmd_submit)

    plan = sub.add_parser(
        "plan", help="project step time and total hours from per-token costs",
        description="Projects steps, seconds per step and total hours (default: the paper's "
                    "Qwen2.5-Math-1.5B presets at G=2 and G=16, on the paper's schedule) "
                    "and compares the 2-vs-16 ratio with the paper's hours.")
    plan.add_argument("--config", action="append", default=None,
                      help="preset to project (repeatable; default: the two 1.5B presets)")
    plan.add_argument("--measured", default=None,
                      help="runs/<name> of a finished run: use its measured per-token costs")
    plan.add_argument("--params", type=float, default=None,
                      help="model parameters (default: from model.path's config.json or name)")
    plan.add_argument("--gen-mfu", type=float, default=0.15,
                      help="assumed generation utilisation of 989 TFLOP/s (default 0.15)")
    plan.add_argument("--train-mfu", type=float, default=0.35,
                      help="training utilisation of 989 TFLOP/s (default 0.35; "
                           "benchmarks/learner_gpu.py measures it on a GPU)")
    plan.add_argument("--response-tokens", type=float, default=800.0,
                      help="mean completion tokens per rollout (default 800)")
    plan.add_argument("--dataset-size", type=int, default=7500,
                      help="prompts per epoch (MATH train: 7500; 0: use the configs' steps)")
    plan.add_argument("--epochs", type=float, default=10.0, help="epochs (the paper: 10)")
    plan.add_argument("--evals", type=int, default=10, help="evaluations during training")
    plan.add_argument("--eval-prompts", type=int, default=1517,
                      help="held-out prompts per evaluation (the paper's 5 benchmarks: 1517)")
    plan.add_argument("--eval-k", type=int, default=32, help="samples per eval prompt (mean@32)")
    plan.add_argument("overrides", nargs="*", metavar="key=value")
    plan.set_defaults(func=cmd_plan)

    audit = sub.add_parser("audit", help="check that every group was trained once or dropped "
                                         "for a named reason (exit 1 if not)")
    audit.add_argument("run_dir", help="runs/<name> (a compare run: every arm is audited)")
    audit.add_argument("--json", action="store_true", help="print the findings as JSON")
    audit.set_defaults(func=cmd_audit)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"duet: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the run failed: say why and exit non-zero, never "success"
        from cluster.driver import RunFailed

        if isinstance(err, RunFailed):
            print(f"duet: run failed: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
