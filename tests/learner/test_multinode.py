"""Learner ranks on two Ray nodes rendezvous at rank 0's node and train exactly as on one.

Each rank's placement-group bundle needs a whole CPU and each node has one, so the packed
group has to span both raylets; rank 0 opens the rendezvous store on its node and rank 1
joins it from the other. Runs in its own process (``two_nodes.py``), with its own clusters.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_two_ranks_on_two_raylets_give_the_single_node_weights():
    out = subprocess.run([sys.executable, "-m", "tests.learner.two_nodes"], capture_output=True,
                         text=True, timeout=900, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout[out.stdout.index("{"):])
    assert len(set(got["one_node"]["nodes"])) == 1
    assert len(set(got["two_nodes"]["nodes"])) == 2  # rank 0 and rank 1 on different raylets
    assert got["two_nodes"]["losses"] == got["one_node"]["losses"]
    assert got["max_weight_diff"] == 0.0
