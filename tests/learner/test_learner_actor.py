"""DeepSpeed ZeRO learner ranks (real DeepSpeed on gloo, real Ray) against a torch reference."""

import pytest
import torch
from safetensors.torch import load_file

from cluster.contract.config import load_config
from cluster.loop.placement import reserve
from learner.learner_actor import LearnerGroup
from tests.learner.steps import LR, assert_same_adam_step, reference_step, step_batch

pytestmark = pytest.mark.slow


def learners(config):
    return reserve(config, "learner", config.learner.num_ranks)


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_reference_and_resume_exactly(ray_cluster, tiny_model_path, stage,
                                                      tmp_path):
    config = load_config(None, [f"learner.zero_stage={stage}", "learner.num_ranks=2",
                                f"learner.lr={LR}", "learner.micro_batch_tokens=24"])
    batch = step_batch()
    ref_loss, ref_weights, ref_grads = reference_step(tiny_model_path, batch, config)
    group = LearnerGroup(config, tiny_model_path, learners(config))
    try:
        metrics = group.train_step(batch)
        weights = group.call("weights")[0]
        group.call("save", str(tmp_path), tiny_model_path)
        group.train_step(step_batch(seed=1))
        continued = group.call("weights")[0]
    finally:
        group.kill()
    assert metrics["loss"] == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    initial = load_file(f"{tiny_model_path}/model.safetensors")
    changed = max(float((ref_weights[k] - v).abs().max()) for k, v in initial.items())
    assert changed > LR / 2  # the step really moved the weights
    assert_same_adam_step(weights, ref_weights, ref_grads, LR, f"ZeRO-{stage} on 2 ranks")

    # The checkpoint (safetensors + JSON only) resumes the optimizer exactly: the next step
    # from it gives the very weights the uninterrupted group reached.
    assert not [p.name for p in tmp_path.rglob("*") if p.suffix in (".pt", ".pkl", ".bin")]
    resumed = LearnerGroup(config, str(tmp_path / "model"), learners(config))
    try:
        resumed.call("load", str(tmp_path))
        resumed.train_step(step_batch(seed=1))
        again = resumed.call("weights")[0]
    finally:
        resumed.kill()
    drift = max(float((again[k] - continued[k]).abs().max()) for k in continued)
    assert drift == 0.0, f"ZeRO-{stage} resume drifted by {drift}"


def test_bf16_with_gradient_checkpointing_trains_and_checkpoints(ray_cluster, tiny_model_path,
                                                                 tmp_path):
    config = load_config(None, ["learner.num_ranks=1", "model.dtype=bfloat16",
                                "model.gradient_checkpointing=true", f"learner.lr={LR}"])
    group = LearnerGroup(config, tiny_model_path, learners(config))
    try:
        before = group.call("weights")[0]
        metrics = group.train_step(step_batch(seed=1))
        after = group.call("weights")[0]
        group.call("save", str(tmp_path), tiny_model_path)
    finally:
        group.kill()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert max(float((after[k].float() - before[k].float()).abs().max()) for k in before) > 0
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "rng-rank0.safetensors").exists()


def test_non_finite_loss_is_skipped_then_aborts(ray_cluster, tiny_model_path):
    import ray

    config = load_config(None, ["learner.num_ranks=1", f"learner.lr={LR}",
                                "learner.max_bad_steps=2"])
    poisoned = step_batch(seed=2)
    rewards = poisoned.column("rewards").to_pylist()
    rewards[0] = [float("nan")] * len(rewards[0])  # NaN advantages -> NaN loss
    import pyarrow as pa

    poisoned = poisoned.set_column(poisoned.schema.get_field_index("rewards"),
                                   poisoned.schema.field("rewards"),
                                   pa.array(rewards, poisoned.schema.field("rewards").type))
    group = LearnerGroup(config, tiny_model_path, learners(config))
    try:
        before = group.call("weights")[0]
        metrics = group.train_step(poisoned)
        after = group.call("weights")[0]
        assert metrics["skipped_updates"] == 1
        assert all(torch.equal(before[k], after[k]) for k in before)  # nothing applied
        group.train_step(step_batch(seed=3))  # a good step resets the count
        group.train_step(poisoned)
        with pytest.raises(ray.exceptions.RayTaskError,
                           match=r"non-finite loss in 2 consecutive updates.*max_bad_steps=2"):
            group.train_step(poisoned)
    finally:
        group.kill()


@pytest.mark.parametrize("overrides, expect", [
    ([], "cores"),  # sync: the node's cores, split over the ranks on it
    (["learner.num_ranks=2"], "half"),
    (["cluster.mode=async"], 1),  # async: the one CPU Ray gives the rank
    (["learner.threads=3"], 3),
])
def test_a_rank_computes_with_the_threads_its_placement_allows(ray_cluster, tiny_model_path,
                                                               overrides, expect):
    """Ray starts a rank with OMP_NUM_THREADS = its num_cpus (1): the rank resets it."""
    from cluster.contract.config import node_cores

    config = load_config(None, overrides)
    group = LearnerGroup(config, tiny_model_path, learners(config))
    try:
        got = group.call("threads")
    finally:
        group.kill()
    cores = node_cores()
    want = {"cores": cores, "half": max(1, cores // 2)}.get(expect, expect)
    assert got == [want] * config.learner.num_ranks


def test_thread_rule_by_mode_sharing_and_device():
    from cluster.contract.config import node_cores

    sync = load_config(None, [])
    assert sync.cpu_threads("learner", sharing=1, granted=1) == node_cores()
    assert sync.cpu_threads("rollout", sharing=node_cores() * 2, granted=1) == 1  # never 0
    assert load_config(None, ["cluster.mode=async"]).cpu_threads("rollout", 1, 2.0) == 2
    assert load_config(None, ["rollout.threads=5"]).cpu_threads("rollout", 1, 1) == 5
    on_gpu = load_config(None, ["cluster.gpus_per_actor=1", "learner.threads=4"])
    assert on_gpu.cpu_threads("learner", 1, 1) is None  # nothing changes on GPUs
