"""Across nodes: two raylets on this machine (``ray.cluster_utils.Cluster``), rollout actors
pinned to one by a custom resource and the learner to the other; the run completes and every
weight sync crosses the node boundary and passes its probe. Runs the scaling benchmark's
multi-node part in its own process (its own Ray clusters)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_rollout_and_learner_on_separate_nodes():
    out = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--multinode-only",
                          "--quick", "--json"], capture_output=True, text=True, timeout=900,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])
    row = result["rows"][-1]
    assert row["separate_nodes"], row
    assert len(row["rollout_nodes"]) == 1 and len(row["learner_nodes"]) == 1
    assert row["steps_completed"] == 3
    assert row["probe_max_abs_diff"] < 2e-3  # every sync verified on the far node
