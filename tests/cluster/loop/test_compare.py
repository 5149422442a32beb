"""`duet compare`: the epochs budget's plan, the report's ratios against its raw metrics, and
the whole comparison end to end on a minimal budget."""

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
import yaml

from actors.tasks import DatasetTask
from cluster.contract.config import load_config
from cluster.contract.estimators import summarize
from cluster.loop.compare import plan_runs, run_dir_of
from cluster.loop.evaluation import read_rows as read_prompt_rows
from cluster.tools.report import run_numbers, write_report

TINY = Path(__file__).resolve().parents[3] / "deploy" / "configs" / "tiny-cpu.yaml"


def test_epochs_budget_gives_each_arm_its_steps_over_one_prompt_set(tmp_path):
    base = load_config(TINY, ["compare.train_prompts=256", "compare.seeds=3",
                              "compare.evaluations=4", "task.eval_size=50"])
    plan = plan_runs(base, ["2", "4", "16"], tmp_path, "same", "epochs")
    # 64 rollouts a step: 32 x 2, 16 x 4, 4 x 16 prompts; one epoch of 256 prompts each.
    assert {arm: {c.steps for c in runs.values()} for arm, runs in plan.items()} == {
        "2": {8}, "4": {16}, "16": {64}}
    assert {arm: runs[0].eval_every for arm, runs in plan.items()} == {"2": 2, "4": 4, "16": 16}
    configs = [c for runs in plan.values() for c in runs.values()]
    assert sorted({c.seed for c in configs}) == [0, 1, 2]
    assert len({(c.task.path, c.task.split_seed) for c in configs}) == 1
    held_out, training = set(), set()
    for config in configs:  # every arm and seed: the same prompts, held out the same way
        task = DatasetTask(config.task, seed=config.seed)
        held_out.add(tuple(sorted(p.text for p in task.eval_set())))
        training.add(tuple(sorted(task.train(i).text for i in range(task.train_size))))
    assert len(held_out) == len(training) == 1
    assert task.train_size == 256 and len(task.eval_set()) == 50
    assert not set(next(iter(held_out))) & set(next(iter(training)))


def test_epochs_budget_rounds_a_last_partial_step_up_as_the_paper_does(tmp_path):
    base = load_config(TINY, ["compare.train_prompts=100", "compare.epochs=3"])
    plan = plan_runs(base, ["2", "16"], tmp_path, "same", "epochs")
    assert plan["2"][0].steps == 10 and plan["16"][0].steps == 75  # 300/32 -> 10, 300/4


def fake_run(folder: Path, seed: int, steps: int, step_s: float, evals, informative):
    """A run's metrics log as the driver writes it (the fields the report reads)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "seed": seed, "steps": steps, "algo": {"prompts_per_step": 64 // (2 if steps < 9 else 16),
                                               "group_size": 2 if steps < 9 else 16},
        "learner": {"lr": 5e-5}}))
    rows = []
    every = steps // (len(evals) - 1)
    for i, (mean, greedy) in enumerate(evals):
        rows.append({"kind": "eval", "step": i * every, "k": 8, "mean_at_k": mean,
                     "accuracy": greedy, "rollouts": i * every * 64, "wall_s": i * every})
    for s in range(1, steps + 1):
        rows.append({"kind": "step", "step": s, "step_s": step_s, "rollouts_total": 64 * s,
                     "wall_s": s * step_s, "groups": 10, "informative_groups": informative,
                     "generate_s": 0.1, "completion_tokens": 100})
    rows.sort(key=lambda r: (r["step"], r["kind"] == "step"))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_ratios_are_the_ones_recomputed_from_metrics_csv(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"compare": {"budget": "epochs", "epochs": 1, "lr_rule": "same"}}))
    finals = {0: (0.50, 0.55), 1: (0.40, 0.50), 2: (0.45, 0.45)}  # mean@8 of G=2, G=16
    for seed, (two, sixteen) in finals.items():
        fake_run(run_dir_of(tmp_path, "2", seed), seed, 8, 0.5 + 0.1 * seed,
                 [(0.3, 0.3), (0.4, 0.4), (two, 0.5)], informative=4)
        fake_run(run_dir_of(tmp_path, "16", seed), seed, 64, 0.25,
                 [(0.3, 0.3), (0.45, 0.5), (sixteen, 0.6)], informative=9)
    write_report(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["pair"] == ["2", "16"]

    table = pacsv.read_csv(tmp_path / "metrics.csv").to_pylist()
    per_seed = {}
    for seed in finals:
        rows = {arm: [r for r in table if r["arm"] == arm and r["seed"] == seed]
                for arm in (2, 16)}  # CSV reads the arm column back as numbers
        final = {arm: [r for r in rs if r["kind"] == "eval"][-1]["mean_at_k"]
                 for arm, rs in rows.items()}
        time = {arm: sum(r["step_s"] for r in rs if r["kind"] == "step")
                for arm, rs in rows.items()}
        per_seed[seed] = (final[2] / final[16], time[2] / time[16])
    for i, name in enumerate(("mean_at_k", "training_time")):
        values = [v[i] for v in per_seed.values()]
        got = saved["ratios"][name]
        assert got["median"] == pytest.approx(statistics.median(values))
        assert got["min"] == pytest.approx(min(values))
        assert got["max"] == pytest.approx(max(values))
    assert saved["ratios"]["rollouts"]["median"] == pytest.approx(1 / 8)
    report = (tmp_path / "report.md").read_text()
    accuracy = saved["ratios"]["mean_at_k"]
    assert report.startswith("# duet") and (
        f"2-GRPO reached {accuracy['median']:.1%} ({accuracy['min']:.1%}–{accuracy['max']:.1%})"
        " of 16-GRPO's accuracy (mean@8, averaged over the evaluation sets)") in report
    assert "using 1/8 of the rollouts (median (min–max) over 3 seeds" in report
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.slow
def test_compare_end_to_end_over_seeds_and_a_group_size_sweep(tmp_path):
    env = dict(os.environ)  # the warm start is cached (DUET_CACHE) and reused across runs
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")})
    env.pop("WANDB_DIR", None)
    cmd = [sys.executable, "-m", "cluster.cli", "compare", "--arms", "2,4,16", "--seeds", "2",
           "compare.train_prompts=64", "compare.evaluations=2", "task.eval_size=16",
           "tracking.backends=tensorboard,mlflow,wandb", f"output_dir={tmp_path}", "name=mini"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "mini"
    report = (run / "report.md").read_text()
    assert (run / "report.png").stat().st_size > 10_000 and (run / "sweep.png").exists()
    saved = json.loads((run / "report.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["budget"] == "epochs"
    for arm, steps in (("2", 2), ("4", 4), ("16", 16)):
        for seed in (0, 1):
            n = run_numbers(run_dir_of(run, arm, seed))
            assert n["steps"] == steps and n["rollouts"] == steps * 64
            row = re.search(rf"^\| {arm}-GRPO \| {seed} \| (.*)$", report, re.M).group(1)
            assert row.startswith(f"{steps} | {steps * 64} | ")
    assert saved["ratios"]["rollouts"]["median"] == pytest.approx(1 / 8)
    assert "of 16-GRPO's accuracy (mean@8, averaged over the evaluation sets)" in report
    assert "## Against the group size" in report

    # The paper's table: the base row (the shared starting weights, evaluated once) and an
    # arm row per G, each cell recomputed from the per-prompt files of the final evaluations.
    base = json.loads((run / "base" / "eval.json").read_text())
    assert list(base["sets"]) == ["held_out", "one_digit"]  # the preset's two sets
    table = saved["table"]
    assert table["sets"] == ["held_out", "one_digit"]
    assert [r["name"] for r in table["rows"]] == ["base", "2-GRPO", "4-GRPO", "16-GRPO"]
    for name in table["sets"]:
        rows = read_prompt_rows(run / "base" / f"{name}.jsonl")
        assert table["rows"][0]["sets"][name]["pass_at_k"] == pytest.approx(
            summarize(rows, rows[0]["n"])["pass_at_k"])
    for row in table["rows"][1:]:
        arm = row["name"].split("-")[0]
        for name in table["sets"]:
            values = []
            for seed in (0, 1):
                evals = run_dir_of(run, arm, seed) / "evals"
                last = max(int(p.name[len("step-"):]) for p in evals.glob("step-*"))
                rows = read_prompt_rows(evals / f"step-{last}" / f"{name}.jsonl")
                values.append(summarize(rows, rows[0]["n"])["pass_at_k"])
            assert row["sets"][name]["pass_at_k"]["median"] == pytest.approx(
                statistics.median(values))
    assert "## Table: base and arms on every evaluation set" in report
    assert re.search(r"^\| base \| ", report, re.M)
    # Tracked: a run per arm x seed, grouped under the comparison in every tracker.
    check_tracked(run, {f"arm-{arm}/seed-{seed}": steps for arm, steps in
                        (("2", 2), ("4", 4), ("16", 16)) for seed in (0, 1)})
    audit = subprocess.run([sys.executable, "-m", "cluster.cli", "audit", str(run)],
                           capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stdout[-2000:]


def check_tracked(run, steps):
    """``steps``: each tracked run's name -> its last policy version."""
    from tests.cluster.loop.tracker_readers import (
        mlflow_client,
        tensorboard_scalars,
        tensorboard_tags,
        wandb_run,
    )

    for name, last in steps.items():
        scalars = tensorboard_scalars(run / "tb" / name)
        assert [s for s, _ in scalars["train/loss"]] == list(range(1, last + 1)), name
        assert scalars["eval/held_out/mean_at_k"][-1][0] == last
    assert "report" in tensorboard_tags(run / "tb" / "report")["images"]
    client = mlflow_client(run / "mlruns")
    parent = json.loads((run / "tracking.json").read_text())["mlflow_parent"]
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == sorted(steps)
    assert all(r.info.status == "FINISHED" for r in children)
    assert [a.path for a in client.list_artifacts(parent)] == ["report.png"]
    held = [wandb_run(f) for f in (run / "wandb").glob("offline-run-*")]
    assert sorted(h["run"].display_name for h in held) == sorted([*steps, "report"])
    assert {h["run"].run_group for h in held} == {run.name}
    for h in held:
        if h["run"].display_name in steps:
            assert h["summary"]["steps"] == steps[h["run"].display_name]


def test_the_paper_preset_compared_by_epochs_gives_the_papers_schedule(tmp_path):
    """10 epochs of 7.5k MATH prompts: 293 steps of 256 x 2 at 8e-6 against 2,344 of 32 x 16
    at 1e-6 (the linear rule), from the G=2 preset and a dataset of that size."""
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+{i}=?",
                                        "solution": f"So \\boxed{{{2 * i}}}."}) + "\n"
                            for i in range(7500 + 500)))
    preset = TINY.parent / "qwen2.5-math-1.5b-g2.yaml"
    base = load_config(preset, ["task.name=jsonl", f"task.path={data}",
                                f"model.path={tmp_path}"])
    plan = plan_runs(base, ["2", "16"], tmp_path, base.compare.lr_rule, "epochs")
    two, sixteen = plan["2"][0], plan["16"][0]
    assert (two.steps, two.algo.prompts_per_step, two.learner.lr) == (293, 256, 8e-6)
    assert (sixteen.steps, sixteen.algo.prompts_per_step) == (2344, 32)
    assert sixteen.learner.lr == pytest.approx(1e-6)
