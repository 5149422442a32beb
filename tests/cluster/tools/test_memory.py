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
