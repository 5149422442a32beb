"""The ``duet`` command line: parses arguments and dispatches; the work lives elsewhere.

Every command takes ``--config FILE`` and dotted overrides (``algo.group_size=16``); the
resolved config is printed and saved with the run under ``runs/<name>/``. With no
arguments, ``duet compare`` runs the embedded default: local Ray, CPU engines, the tiny
model duet builds itself, the synthetic arithmetic task, arms 2 and 16.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from cluster.contract.config import ConfigError, RunConfig, load_config, replace, to_yaml
from cluster.contract.config_io import options_help
from cluster.presets import default_preset, resolve_config, runtime_env


def _config(args) -> RunConfig:
    source = default_preset() if args.config is None else resolve_config(args.config)
    return load_config(source, args.overrides)


def cmd_train(args) -> int:
    from cluster.tools.memory import checked_plan

    config = _config(args)
    print(to_yaml(config))
    if args.dry_run:
        from cluster.tools.plan import resource_plan

        print(resource_plan(config))
    memory = checked_plan(config)  # refuses a GPU plan that cannot fit, before anything starts
    if args.dry_run:
        from cluster.tools.data import dry_run_check

        print(memory.text() if memory else "memory plan: CPU run (or unknown model shape)")
        print(dry_run_check(config))
        return 0
    from cluster.loop.runs import run_dir_of, train

    summary = train(config, args.resume)
    run_dir = run_dir_of(config)
    print(json.dumps({"run_dir": str(run_dir), "steps": summary.steps,
                      "final_accuracy": summary.eval[-1]["accuracy"] if summary.eval else None,
                      "wall_seconds": round(summary.wall_seconds, 1)}))
    print(f"run written to {run_dir}")
    return 0


def cmd_compare(args) -> int:
    from cluster.loop.compare import parse_arms, run_compare
    from cluster.loop.progress import Progress
    from cluster.loop.runs import fresh_run_dir
    from cluster.loop.tracking import track_report
    from cluster.tools.memory import checked_plan
    from cluster.tools.report import write_report

    base = _config(args)
    checked_plan(base)
    arms = parse_arms(args.arms or base.compare.arms)
    lr_rule = args.lr_rule or base.compare.lr_rule
    budget = args.budget or base.compare.budget
    seeds = args.seeds or base.compare.seeds
    # The saved config says what ran, flags included.
    base = replace(base, [f"compare.arms={','.join(arms)}", f"compare.lr_rule={lr_rule}",
                          f"compare.budget={budget}", f"compare.seeds={seeds}"])
    print(to_yaml(base))
    run_dir = fresh_run_dir(base)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(base))
    bars: Dict[str, Progress] = {}

    def progress(label: str, config, row: Dict[str, object]) -> None:
        if label not in bars:
            for bar in bars.values():
                bar.close()
            bars[label] = Progress(config.steps, label=f"[{label}] ")
        bars[label](row)

    try:
        run_compare(base, arms, run_dir, lr_rule, budget, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    report = write_report(run_dir)
    track_report(base, run_dir, run_dir / "report.png")
    print(Path(report).read_text())
    print(f"report written to {report} (plots: {run_dir / 'report.png'})")
    return 0


def cmd_eval(args) -> int:
    from cluster.loop.runs import evaluate_model

    print(json.dumps(evaluate_model(_config(args), args.model, args.k, args.out), indent=1))
    return 0


def cmd_submit(args) -> int:
    from cluster.tools.submit import new_submission_id, submit, submit_command

    # A known id lets a refused submission be told from an accepted one that failed.
    submission_id = args.submission_id or new_submission_id()
    cmd = submit_command(args.address, args.duet_args, args.working_dir, args.runtime_env,
                         submission_id, args.no_wait)
    return submit(cmd, submission_id, args.retries, args.retry_seconds, args.no_wait)


def cmd_plan(args) -> int:
    from cluster.tools.plan import (
        PAPER_PRESETS,
        assumed_costs,
        measured_costs,
        parameters_of,
        project,
        projection_table,
    )

    for flag, value in (("--gen-mfu", args.gen_mfu), ("--train-mfu", args.train_mfu)):
        if not 0 < value <= 1:
            raise SystemExit(f"duet plan: {flag} is a fraction of peak FLOP/s, in (0, 1]; "
                             f"got {value}")
    sources = args.config or list(PAPER_PRESETS)
    rows, source = [], ""
    for path in sources:
        config = load_config(resolve_config(str(path)), args.overrides)
        costs = (measured_costs(Path(args.measured)) if args.measured
                 else assumed_costs(args.params or parameters_of(config), gen_mfu=args.gen_mfu,
                                    train_mfu=args.train_mfu))
        source = source or costs.source
        rows.append((config, project(config, costs, args.response_tokens,
                                     None if args.dataset_size == 0 else args.dataset_size,
                                     args.epochs, args.evals, args.eval_prompts, args.eval_k)))
    print(f"cost source: {source}")
    print(f"assumed: {args.response_tokens:g} completion tokens per rollout; "
          + (f"{args.epochs:g} epochs over {args.dataset_size} prompts; " if args.dataset_size
             else "the configs' own steps; ")
          + f"{args.evals} evaluations of {args.eval_prompts} prompts x {args.eval_k} samples")
    print(projection_table(rows, with_paper=not args.config))
    return 0


def cmd_data(args) -> int:
    from cluster.tools.data import check_lengths, inspect_data, report_json, summary

    config = _config(args)
    report = inspect_data(config)
    try:
        check_lengths(config, report)
    except ConfigError as err:
        report.problems.append(str(err))
    if args.json:
        print(report_json(report))
    else:
        print(summary(config, report))
    for problem in report.problems:
        print(f"duet data: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


def cmd_doctor(args) -> int:
    from cluster.tools.doctor import run_doctor

    report = run_doctor(_config(args))
    print(report.table())
    if not report.ok:
        print(f"duet doctor: failed at {report.failure}", file=sys.stderr)
        return 1
    print("duet doctor: every check passed")
    return 0


def cmd_audit(args) -> int:
    from cluster.tools.audit import audit, audit_json

    root = Path(args.run_dir)
    runs = ([root] if (root / "ledger.jsonl").exists() else
            sorted(p.parent for p in root.glob("arm-*/**/ledger.jsonl")))
    if not runs:
        raise ConfigError("run_dir", f"{root} holds no ledger.jsonl (nor arm-*/seed-*/ledger.jsonl): "
                          "pass runs/<name> of a duet train or compare run", value=str(root))
    ok = True
    for run in runs:
        report = audit(run)
        print(audit_json(report) if args.json else report.text())
        ok = ok and report.ok
    return 0 if ok else 1


def cmd_export(args) -> int:
    from cluster.tools.export import export_model

    print(f"written to {export_model(Path(args.model), Path(args.out), args.merge)}")
    return 0


def cmd_track(args) -> int:
    from cluster.loop.tracking import replay_folder

    for name, rows in replay_folder(Path(args.run_dir), args.overrides).items():
        print(f"{name}: {rows} rows tracked")
    return 0


def cmd_report(args) -> int:
    from cluster.tools.report import write_report

    path = write_report(Path(args.run_dir))
    print(path.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duet", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=options_help(RunConfig()))
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None,
                       help="YAML file or shipped preset name, e.g. qwen2.5-math-7b-g2 "
                            "(default: tiny-cpu, deploy/configs/tiny-cpu.yaml)")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted config overrides, e.g. algo.group_size=16")

    train = sub.add_parser("train", help="train one policy", epilog=options_help(RunConfig()),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    common(train)
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest complete checkpoint of runs/<name>")
    train.add_argument("--dry-run", action="store_true",
                       help="validate the config and print the resource plan; start nothing")
    train.set_defaults(func=cmd_train)

    compare = sub.add_parser("compare", help="2-vs-16 (or other) arms at equal rollouts/step, "
                             "equal epochs, several seeds",
                             epilog=options_help(RunConfig()),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    common(compare)
    compare.add_argument("--arms", default=None,
                         help="group sizes to compare; '2+rs' is 2-GRPO with resampling "
                              "(default: compare.arms)")
    compare.add_argument("--lr-rule", default=None, choices=["linear", "sqrt", "same"],
                         help="learning rate per arm: linear in prompts per step (the paper), "
                              "sqrt, or the same for all (default: compare.lr_rule)")
    compare.add_argument("--seeds", type=int, default=None,
                         help="runs per arm, seeds seed, seed+1, ... (default: compare.seeds)")
    compare.add_argument("--budget", default=None, choices=["epochs", "steps", "rollouts"],
                         help="equal epochs of one fixed prompt set (the paper's comparison), "
                              "equal steps, or an equal total rollout budget "
                              "(default: compare.budget)")
    compare.set_defaults(func=cmd_compare)

    evaluate = sub.add_parser("eval", help="mean@k, pass@k and greedy accuracy of a model on "
                              "every evaluation set; writes eval.json and per-prompt counts")
    common(evaluate)
    evaluate.add_argument("--model", default=None, help="model folder or hub id (default: model.path)")
    evaluate.add_argument("-k", type=int, default=None,
                          help="samples per prompt for mean@k and pass@k, every set "
                               "(default: each set's k, or rollout.eval_k)")
    evaluate.add_argument("--out", default=None,
                          help="folder for eval.json and <set>.jsonl (default: runs/<name>/eval)")
    evaluate.set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="the dataset and template as the engine sees them: "
                          "rows, bad rows, the first rendered prompt, lengths")
    common(data)
    data.add_argument("--json", action="store_true",
                      help='print {"rows", "skipped", "sample": {"prompt", "prompt_tokens", '
                           '"answer"}, "max_prompt_tokens"}')
    data.set_defaults(func=cmd_data)

    export = sub.add_parser(
        "export", help="a checkpoint's model as a plain Hugging Face folder",
        description="Copies runs/<name>/checkpoints/<step>/model to --out; a LoRA adapter "
                    "with --merge is folded into its base (PEFT's merge_and_unload) first.")
    export.add_argument("model", help="a checkpoint's model/ folder (full weights or an adapter)")
    export.add_argument("--out", required=True, help="folder to write")
    export.add_argument("--merge", action="store_true",
                        help="fold a LoRA adapter into its base weights")
    export.set_defaults(func=cmd_export)

    track = sub.add_parser(
        "track", help="log a finished run (or comparison) into experiment trackers",
        description="Replays runs/<name>/metrics.jsonl into the trackers its config names, "
                    "or the overrides name (e.g. tracking.backends=tensorboard,mlflow): for "
                    "a run whose tracker failed part way, or that ran without one.")
    track.add_argument("run_dir", help="runs/<name> of a train or compare run")
    track.add_argument("overrides", nargs="*", help="key=value, e.g. tracking.backends=wandb")
    track.set_defaults(func=cmd_track)

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
    submit.add_argument("--runtime-env", default=str(runtime_env()),
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

    doctor = sub.add_parser(
        "doctor", help="self-check the cluster: one engine and one learner rank on a small "
                       "model of the configured architecture; exit 1 naming the failed check")
    common(doctor)
    doctor.set_defaults(func=cmd_doctor)

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
    except ValueError as err:
        # Unusable data, templates or hub ids: the message names the file, row or key.
        from actors.prompts import TemplateError
        from actors.tasks.loaders import DatasetError
        from cluster.contract.hub import HubError

        if isinstance(err, (DatasetError, TemplateError, HubError)):
            print(f"duet: {err}", file=sys.stderr)
            return 2
        raise
    except Exception as err:  # the run failed: say why and exit non-zero, never "success"
        from cluster.loop.driver import RunFailed

        if isinstance(err, RunFailed):
            print(f"duet: run failed: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
