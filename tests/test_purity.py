"""The pure core and the shared contracts import without ray, deepspeed or vllm."""

import subprocess
import sys

PROBE = """
import sys
sys.modules["ray"] = sys.modules["deepspeed"] = sys.modules["vllm"] = None
import learner.algo, cluster.config
{extra}
heavy = [m for m in ("ray", "deepspeed", "vllm") if sys.modules.get(m) is not None]
assert not heavy, heavy
print("pure")
"""


def _probe(extra: str = "") -> None:
    # A fresh interpreter: this test process may already hold ray or vllm from other tests.
    out = subprocess.run([sys.executable, "-c", PROBE.format(extra=extra)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pure"


def test_core_imports_without_heavy_packages():
    _probe()
