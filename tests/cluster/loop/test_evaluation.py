"""Evaluation sets end to end: two sets in one run, split across two engines, per-prompt files
that recompute every reported figure, and `duet eval` writing eval.json."""

import json
import subprocess
import sys

import pytest

from cluster.contract.estimators import average, summarize
from cluster.loop.evaluation import read_rows as read_prompt_rows
from cluster.loop.run_log import read_rows

pytestmark = pytest.mark.slow

SETS = ("eval.sets=[{name: one_digit, task: arithmetic, difficulty: 1, size: 12, k: 4}, "
        "{name: sums, task: arithmetic, difficulty: 2, size: 10, k: 8, greedy: false}]")


def duet(*args, timeout=1200):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_a_run_scores_every_set_and_its_files_recompute_the_figures(tmp_path):
    done = duet("train", "steps=2", "eval_every=0", "task.eval_size=16", "rollout.eval_k=4",
                "rollout.num_workers=2", SETS, "name=sets", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "sets"
    evals = read_rows(run / "metrics.jsonl", "eval")
    per_set = read_rows(run / "metrics.jsonl", "eval_set")
    assert [e["step"] for e in evals] == [0, 2]
    for row in evals:
        assert list(row["sets"]) == ["held_out", "one_digit", "sums"]
        folder = run / "evals" / f"step-{row['step']}"
        for name, summary in row["sets"].items():
            prompts = read_prompt_rows(folder / f"{name}.jsonl")
            assert len(prompts) == summary["n"] == {"held_out": 16, "one_digit": 12,
                                                    "sums": 10}[name]
            assert {p["n"] for p in prompts} == {summary["k"]}
            again = summarize(prompts, summary["k"])
            assert again.pop("pass_at") == pytest.approx(summary["pass_at"])
            assert again == pytest.approx({k: v for k, v in summary.items() if k != "pass_at"})
            logged = [r for r in per_set if r["step"] == row["step"] and r["set"] == name]
            assert len(logged) == 1 and logged[0]["pass_at_k"] == summary["pass_at_k"]
        assert row["sets"]["sums"]["accuracy"] is None  # greedy: false
        avg = average(row["sets"])
        assert row["mean_at_k"] == pytest.approx(avg["mean_at_k"])
        assert row["pass_at_k"] == pytest.approx(avg["pass_at_k"])
        assert row["accuracy"] == pytest.approx(avg["accuracy"])  # over the greedy sets
    assert "pass@k" in done.stdout and "one_digit" in done.stdout  # the progress line


def test_duet_eval_writes_eval_json_and_per_prompt_counts(tmp_path):
    out = tmp_path / "base"
    done = duet("eval", "-k", "4", "--out", str(out), "task.eval_size=12", SETS)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    saved = json.loads((out / "eval.json").read_text())
    assert set(saved) == {"sets", "average"}
    assert list(saved["sets"]) == ["held_out", "one_digit", "sums"]
    for name, figures in saved["sets"].items():
        assert figures["k"] == 4  # -k overrides every set's k
        assert {"mean_at_k", "pass_at_k", "k", "n", "accuracy"} <= set(figures)
        rows = read_prompt_rows(out / f"{name}.jsonl")
        again = summarize(rows, 4)
        assert again["mean_at_k"] == pytest.approx(figures["mean_at_k"])
        assert again["pass_at_k"] == pytest.approx(figures["pass_at_k"])
        assert figures["pass_at_k"] >= figures["mean_at_k"]
    assert saved["average"]["mean_at_k"] == pytest.approx(
        sum(s["mean_at_k"] for s in saved["sets"].values()) / 3)
    assert json.loads(done.stdout)["eval_json"] == str(out / "eval.json")
