"""Freed host memory kept in a CPU learner rank's process (``learner.host_memory``)."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                           reason="malloc's thresholds are a glibc setting")


def refaults_in_a_fresh_process(keep: bool) -> int:
    code = ("from learner.host_memory import keep_freed_memory, refaults\n"
            + ("assert keep_freed_memory()\n" if keep else "") + "print(refaults())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1])


@glibc
def test_a_freed_block_is_touched_again_without_page_faults_once_kept():
    # 32 MiB faults at least 16 times even with 2 MiB transparent huge pages.
    assert refaults_in_a_fresh_process(keep=False) >= 16
    assert refaults_in_a_fresh_process(keep=True) < 8


@glibc
@pytest.mark.slow
@pytest.mark.parametrize("keep", [True, False])
def test_a_cpu_rank_keeps_the_memory_it_frees_unless_told_not_to(ray_cluster, tiny_model_path,
                                                                   keep):
    from cluster.contract.config import load_config
    from cluster.loop.placement import reserve
    from learner.learner_actor import LearnerGroup

    config = load_config(None, [f"learner.keep_freed_memory={str(keep).lower()}"])
    group = LearnerGroup(config, tiny_model_path, reserve(config, "learner", 1))
    try:
        (got,) = group.call("host_memory")
    finally:
        group.kill()
    assert got["kept"] is keep
    assert (got["refaults"] < 8) if keep else (got["refaults"] >= 16)


def test_ranks_on_gpus_leave_malloc_as_it_is():
    from cluster.contract.config import load_config

    assert load_config(None, []).keeps_freed_memory()
    assert not load_config(None, ["learner.keep_freed_memory=false"]).keeps_freed_memory()
    assert not load_config(None, ["cluster.gpus_per_actor=1"]).keeps_freed_memory()
