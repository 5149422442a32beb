"""`duet compare` end to end on a minimal budget; the report must match its metrics logs."""

import json
import os
import re
import subprocess
import sys

import pytest

from cluster.tools.report import arm_numbers

pytestmark = pytest.mark.slow


def test_compare_end_to_end_report_matches_metrics(tmp_path):
    env = dict(os.environ)  # the warm start is cached (DUET_CACHE) and reused across runs
    cmd = [sys.executable, "-m", "cluster.cli", "compare", "--arms", "2,16",
           "steps=3", "eval_every=0", "task.eval_size=16", f"output_dir={tmp_path}",
           "name=mini"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "mini"
    report = (run / "report.md").read_text()
    assert (run / "report.png").stat().st_size > 10_000
    assert (run / "metrics.csv").exists() and (run / "metrics.parquet").exists()
    for arm in ("2", "16"):
        n = arm_numbers(run / f"arm-{arm}")
        assert n["steps"] == 3 and n["rollouts"] == 3 * 64
        row = re.search(rf"^\| {arm}-GRPO \| (.*)$", report, re.M).group(1).split(" | ")
        assert row[0] == "3"
        assert row[1] == f"{n['mean_at_k_start']:.1%}" and row[2] == f"{n['mean_at_k_end']:.1%}"
        assert row[3] == f"{n['accuracy_start']:.1%}" and row[4] == f"{n['accuracy_end']:.1%}"
        assert row[6] == f"{n['rollouts']:.0f}" and row[7] == f"{n['wall_seconds']:.1f}"
        assert row[8] == f"{n['informative_fraction']:.1%}"
    two, sixteen = arm_numbers(run / "arm-2"), arm_numbers(run / "arm-16")
    ratio = two["wall_seconds"] / sixteen["wall_seconds"]
    assert f"| training wall time | {ratio:.1%} |" in report
    saved = json.loads((run / "report.json").read_text())
    assert saved["2"]["accuracy_end"] == two["accuracy_end"]
