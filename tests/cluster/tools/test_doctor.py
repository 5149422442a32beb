"""``duet doctor`` on this machine: every check passes on CPU, and a broken one is named."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster.tools.doctor import CHECKS, root_cause

pytestmark = pytest.mark.slow


def doctor(*overrides):
    return subprocess.run([sys.executable, "-m", "cluster.cli", "doctor", *overrides],
                          capture_output=True, text=True, timeout=900)


def doctor_folders():
    return set(Path(tempfile.gettempdir()).glob("duet-doctor-*"))


def table_rows(stdout):
    return {line.split(" | ")[0].strip("| "): line.split(" | ")[1]
            for line in stdout.splitlines() if line.startswith("| ") and " | " in line}


def test_every_check_passes_on_cpu_with_its_figures():
    out = doctor()
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = table_rows(out.stdout)
    assert all(rows[name] == "pass" for name in CHECKS), rows
    assert "generated tokens/s" in out.stdout and "trained tokens/s" in out.stdout
    assert "GB/s" in out.stdout and "every check passed" in out.stdout
    assert "object_store: a 64 MiB bucket through Ray's shared memory" in out.stdout


def test_colocated_placement_is_checked_in_one_bundle():
    out = doctor("cluster.placement=colocated")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = table_rows(out.stdout)
    assert all(rows[name] == "pass" for name in CHECKS), rows


def test_a_gpu_transport_without_cuda_is_named_with_the_fix():
    from cluster.tools.doctor import gpu_transport_check

    for transfer in ("nccl", "ipc"):
        with pytest.raises(RuntimeError, match=f"weight_transfer={transfer} needs CUDA.*"
                                               "use rollout.weight_transfer=object_store"):
            gpu_transport_check(transfer)


def test_a_broken_check_fails_with_its_reason_and_skips_the_rest():
    before = doctor_folders()
    out = doctor("rollout.kv_cache_gib=100000")  # more KV cache than this machine has
    assert out.returncode == 1
    rows = table_rows(out.stdout)
    assert rows["placement"] == "pass" and rows["engine start"] == "FAIL"
    assert all(rows[name] == "skipped" for name in CHECKS[CHECKS.index("engine start") + 1:])
    assert "duet doctor: failed at engine start: ValueError:" in out.stderr
    assert "kv cache" in out.stderr
    assert doctor_folders() <= before  # its model and state are removed, failed or not


def test_root_cause_reads_the_innermost_exception_of_a_remote_traceback():
    text = ("The actor died because of an error raised in its creation task\n"
            "  File \"x.py\", line 3, in f\n    g()\n"
            "pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
            "  Value error, max_model_len (512) is greater than the derived max_model_len\n"
            "    For further information visit https://errors.pydantic.dev\n")
    assert root_cause(RuntimeError(text)) == (
        "pydantic_core.ValidationError: 1 validation error for ModelConfig Value error, "
        "max_model_len (512) is greater than the derived max_model_len")
