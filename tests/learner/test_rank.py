"""A learner rank in a plain process (no Ray) on this machine's accelerator.

On these CPU machines it runs DeepSpeed over gloo; run on a GPU machine (the same file, no
changes) it runs DeepSpeed over NCCL with CUDA tensors, which is how the learner's GPU path
is checked: batches arrive on the CPU and must reach the engine's device, checkpoints must
resume exactly, and weights published from the device must verify on a CPU copy.
"""

import os

import pytest
import torch

from cluster.contract.config import load_config
from cluster.contract.weights import (
    ProbeTolerance,
    build_manifest,
    compare_probe,
    pack_buckets,
    probe_logprobs,
)
from tests.learner.steps import LR, assert_same_adam_step, reference_step, step_batch

# cuBLAS needs this before its first use for deterministic results (resume exactness on GPU).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = pytest.mark.slow
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def make_rank(model_path, *overrides):
    from learner.rank import LearnerRank

    config = load_config(None, ["learner.num_ranks=1", f"learner.lr={LR}",
                                "learner.micro_batch_tokens=24", *overrides])
    rank = LearnerRank(config, 0, 1)
    rank.start(model_path)
    return rank


@pytest.mark.parametrize("stage", [2, 3])
def test_rank_matches_plain_torch_and_resumes_exactly(tiny_model_path, tmp_path, stage,
                                                       deterministic):
    rank = make_rank(tiny_model_path, f"learner.zero_stage={stage}")
    assert rank.device.type == DEVICE
    batch = step_batch()
    metrics = rank.train_step(batch)
    weights = rank.weights()
    rank.save(str(tmp_path), tiny_model_path)
    rank.train_step(step_batch(seed=1))
    continued = rank.weights()

    config = load_config(None, [f"learner.lr={LR}"])
    ref_loss, ref_weights, ref_grads = reference_step(tiny_model_path, batch, config,
                                                      device=DEVICE)
    assert metrics["loss"] == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert_same_adam_step(weights, ref_weights, ref_grads, LR, f"ZeRO-{stage} on {DEVICE}")

    resumed = make_rank(str(tmp_path / "model"), f"learner.zero_stage={stage}")
    resumed.load(str(tmp_path))
    resumed.train_step(step_batch(seed=1))
    again = resumed.weights()
    drift = max(float((again[k] - continued[k]).abs().max()) for k in continued)
    assert drift == 0.0, f"ZeRO-{stage} resume on {DEVICE} drifted by {drift}"


def test_one_rank_runs_zero1_exactly_as_zero2_and_resumes_a_zero2_checkpoint(
        tiny_model_path, tmp_path, deterministic, monkeypatch):
    """A single CPU rank asked for ZeRO-2 runs ZeRO-1's optimizer without gradient hooks
    (``learner.engine.ds_config``): the same steps, bit for bit, and checkpoints that a real
    ZeRO-2 rank's resume into. (On a GPU both are ZeRO-2.)"""
    import learner.engine as ds

    rank = make_rank(tiny_model_path)  # learner.zero_stage=2, the default
    assert rank.engine.zero_optimization_stage() == (2 if DEVICE == "cuda" else 1)
    if DEVICE == "cpu":
        assert not getattr(rank.engine.optimizer, "_grad_acc_hooks", [])
    real = ds.ds_config
    # The config ZeRO-2 gets with several ranks, here on one: a real ZeRO-2 rank.
    monkeypatch.setattr(ds, "ds_config",
                        lambda config, bf16, world, gpu: real(config, bf16, 2, gpu))
    zero2 = make_rank(tiny_model_path)
    monkeypatch.undo()
    assert zero2.engine.zero_optimization_stage() == 2

    def same(a, b):
        wa, wb = a.weights(), b.weights()
        return max(float((wa[k] - wb[k]).abs().max()) for k in wa)

    for r in (rank, zero2):
        r.train_step(step_batch())
    assert same(rank, zero2) == 0.0
    zero2.save(str(tmp_path), tiny_model_path)
    resumed = make_rank(str(tmp_path / "model"))
    resumed.load(str(tmp_path))
    for r in (rank, resumed):
        r.train_step(step_batch(seed=1))
    assert same(rank, resumed) == 0.0


def test_bf16_trains_and_published_weights_verify_on_a_cpu_copy(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from learner import engine as ds

    rank = make_rank(tiny_model_path, "model.dtype=bfloat16", "algo.kl_coef=0.01")
    before = rank.weights()
    losses = [rank.train_step(step_batch(seed=s))["loss"] for s in range(3)]
    after = rank.weights()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert max(float((after[k].float() - before[k].float()).abs().max()) for k in before) > 0

    # What publish() sends, without Ray: buckets gathered from the device plus the probe
    # computed there; a CPU model loaded from the buckets must reproduce the probe.
    with ds.full_parameters(rank.engine):
        buckets = list(pack_buckets(ds.named_full_tensors(rank.engine), bucket_bytes=200_000))
        manifest = build_manifest(1, buckets, rank.engine.module, rank.vocab_size, "bfloat16")
    from safetensors.torch import load as load_bytes

    state = {k: v for data, _ in buckets for k, v in load_bytes(bytes(data)).items()}
    cpu = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.bfloat16)
    cpu.load_state_dict(state)
    got = probe_logprobs(cpu.float(), manifest.probe_token_ids)
    # bf16 weights evaluated in float32 on the CPU vs bf16 on the device: bf16 rounding.
    assert compare_probe(manifest.probe_logprobs, got, ProbeTolerance(0.1, 0.0)) < 0.1
