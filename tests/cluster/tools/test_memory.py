"""GPU defaults that fit the placement, and the per-GPU memory plan that refuses what won't fit."""

import json
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.contract.config import load_config
from cluster.tools.memory import KNOWN, LEARNER_HEADROOM, learner_bytes, memory_plan

REPO = Path(__file__).resolve().parents[3]
PRESETS = {size: REPO / "deploy" / "configs" / f"qwen2.5-math-{size}-g2.yaml"
           for size in ("1.5b", "7b")}


def test_defaults_follow_the_placement():
    cpu = load_config(None, [])
    assert (cpu.model.dtype, cpu.rollout.gpu_memory_utilization) == ("float32", 0.2)
    gpu = load_config(None, ["cluster.gpus_per_actor=1"])
    assert (gpu.model.dtype, gpu.rollout.gpu_memory_utilization) == ("bfloat16", 0.85)
    half = load_config(None, ["cluster.gpus_per_actor=0.5"])
    assert half.rollout.gpu_memory_utilization == pytest.approx(0.425)  # two share a GPU
    chosen = load_config(None, ["cluster.gpus_per_actor=1", "model.dtype=float32",
                                "rollout.gpu_memory_utilization=0.5"])
    assert (chosen.model.dtype, chosen.rollout.gpu_memory_utilization) == ("float32", 0.5)


@pytest.mark.parametrize("size", sorted(PRESETS))
def test_presets_dry_run_prints_their_per_gpu_plan(size, capsys):
    assert main(["train", "--config", str(PRESETS[size]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory plan (per GPU" in out and "Adam moments" in out and "engine reserves" in out
    assert "GPU            : 140.0 GiB — fits" in out


def test_a_plan_that_cannot_fit_is_refused_before_anything_starts(capsys):
    code = main(["train", "--config", str(PRESETS["7b"]), "--dry-run",
                 "cluster.gpu_memory_gib=80"])
    err = capsys.readouterr().err
    assert code == 2
    assert "cluster.gpu_memory_gib" in err and "DOES NOT FIT" in err
    assert "lower learner.micro_batch_tokens" in err
    # and the advice works: smaller micro-batches fit the same GPU
    assert main(["train", "--config", str(PRESETS["7b"]), "--dry-run",
                 "cluster.gpu_memory_gib=80", "learner.micro_batch_tokens=4096"]) == 0


def test_an_engine_share_too_small_for_its_weights_is_named():
    config = load_config(PRESETS["7b"], ["rollout.gpu_memory_utilization=0.1",
                                         "cluster.gpu_memory_gib=80"])
    problems = memory_plan(config, KNOWN["qwen2.5-math-7b"]).problems
    assert any("raise rollout.gpu_memory_utilization" in p for p in problems)


def test_headroom_covers_the_measured_h100_peak():
    result = json.loads((REPO / "benchmarks" / "results" /
                         "2026-11-26-h100-learner_gpu.json").read_text())["rows"][0]
    config = load_config(None, [  # the settings benchmarks/learner_gpu.py ran with
        "learner.num_ranks=1", "learner.zero_stage=2", "model.dtype=bfloat16",
        "model.gradient_checkpointing=true", "learner.micro_batch_tokens=8192",
        "rollout.max_new_tokens=512", "model.max_model_len=640"])
    estimate = sum(learner_bytes(config, KNOWN["qwen2.5-math-1.5b"]).values()) / 2**30
    assert KNOWN["qwen2.5-math-1.5b"].params == pytest.approx(result["parameters"], rel=0.01)
    assert estimate < result["peak_gpu_memory_gib"] <= estimate * LEARNER_HEADROOM


def test_the_ipc_buffer_holds_the_largest_tensor_not_a_bucket(capsys):
    """vLLM's packed IPC producer refuses a tensor larger than its buffer: the plan sizes it
    from the embeddings (1.5B: 151,936 x 1,536 x 2 B ~ 467 MB; 7B: ~1.09 GB), far above the
    64 MiB bucket, and lists it per GPU."""
    from cluster.contract.weights import BUCKET_BYTES
    from learner.publish import transfer_buffer_bytes

    for size, name, tensor in (("1.5b", "qwen2.5-math-1.5b", 151_936 * 1536 * 2),
                               ("7b", "qwen2.5-math-7b", 152_064 * 3584 * 2)):
        config = load_config(PRESETS[size], ["cluster.placement=colocated"])
        assert config.rollout.weight_transfer == "ipc" and config.learner.zero_stage == 3
        plan = memory_plan(config, KNOWN[name])
        assert plan.buffer == ("ipc buffer", tensor) and tensor > BUCKET_BYTES
        assert transfer_buffer_bytes(BUCKET_BYTES, tensor) == tensor  # the sender's rule
        assert transfer_buffer_bytes(BUCKET_BYTES, 1000) == BUCKET_BYTES
    main(["train", "--config", str(PRESETS["7b"]), "--dry-run", "cluster.placement=colocated"])
    captured = capsys.readouterr()
    assert "ipc buffer     : 1.0 GiB" in captured.out + captured.err
    zero2 = load_config(PRESETS["7b"], ["cluster.placement=colocated", "learner.zero_stage=2"])
    assert memory_plan(zero2, KNOWN["qwen2.5-math-7b"]).buffer[1] == 0  # exported in place


def test_a_colocated_engine_must_fit_beside_the_ranks_resident_state(capsys):
    """Awake, the engine's whole budget sits beside the rank's weights and optimizer state
    (its activations and logits were returned to the device): the 7B preset's 0.85 of a
    140 GiB GPU does not fit beside 31.9 GiB of ZeRO-3 state, and the plan says what does."""
    config = load_config(PRESETS["7b"], ["cluster.placement=colocated"])
    plan = memory_plan(config, KNOWN["qwen2.5-math-7b"])
    c = plan.colocated
    resident = sum(v for k, v in plan.learner.items()
                   if k not in ("activations (one micro-batch)", "logits, forward and backward"))
    assert c["resident"] == pytest.approx(resident)
    assert c["awake"] == pytest.approx(resident + 0.85 * 140 * 2**30 + c["buffer"])
    assert c["training"] == pytest.approx(sum(plan.learner.values()) * LEARNER_HEADROOM)
    [problem] = plan.problems
    assert "set rollout.gpu_memory_utilization to at most 0.76" in problem
    # The advice fits; the split placement never put both on one GPU.
    fits = load_config(PRESETS["7b"], ["cluster.placement=colocated",
                                       "rollout.gpu_memory_utilization=0.76"])
    assert memory_plan(fits, KNOWN["qwen2.5-math-7b"]).problems == []
    assert memory_plan(load_config(PRESETS["7b"]), KNOWN["qwen2.5-math-7b"]).colocated is None
    code = main(["train", "--config", str(PRESETS["7b"]), "--dry-run",
                 "cluster.placement=colocated"])
    err = capsys.readouterr().err
    assert code == 2 and "DOES NOT FIT" in err and "colocated, an engine that wakes" in err


def test_lora_plans_the_frozen_base_and_the_adapters_optimizer_only():
    """7B at rank 64: 28 layers x 64 x (q, k, v, o, gate, up, down inputs + outputs) adapter
    parameters; the base keeps no gradient or optimizer state, so 80 GiB GPUs fit."""
    from cluster.tools.memory import adapter_params

    full = load_config(PRESETS["7b"], ["cluster.gpu_memory_gib=80"])
    lora = load_config(PRESETS["7b"], ["cluster.gpu_memory_gib=80", "model.lora.rank=64"])
    shape = KNOWN["qwen2.5-math-7b"]
    h, kv, i = 3584, 4 * 128, 18944
    expected = 28 * 64 * (2 * h + (h + kv) * 2 + 2 * h + 2 * (h + i) + (i + h))
    assert adapter_params(lora, shape) == expected
    terms = memory_plan(lora, shape).learner
    assert terms["adapter Adam moments (fp32)"] == 8 * expected
    assert "Adam moments (fp32, partitioned)" not in terms
    assert memory_plan(full, shape).problems and not memory_plan(lora, shape).problems
