"""Experiment tracking: a run's rows in TensorBoard, Weights & Biases and MLflow.

``Tracker`` is the one interface the driver calls where it writes metrics.jsonl: every
training step and every evaluation at ``step`` = policy version, the resolved config as
hyper-parameters once, the run's summary at the end; a comparison adds its report's PNG.
Names are stable and grouped: ``train/…`` (loss, clip fractions, rewards, rows computed),
``perf/…`` (seconds, throughput, sync), ``queue/…`` (queue waits, staleness),
``eval/<set>/…`` and ``eval/average/…``.

Each backend is imported only when chosen (``tracking.backends``); a missing one is a
``ConfigError`` naming the ``duet-rl[tracking]`` extra, before anything starts. Offline
first: wandb honours ``WANDB_MODE=offline`` and ``WANDB_DIR`` (else it writes into the run
folder); MLflow writes to a file store in the run folder unless ``tracking.mlflow_uri``
says otherwise; TensorBoard to ``<run>/tb``. A tracker that fails (network down, bad key,
full disk) is reported once and dropped for the rest of the run: training goes on and
every row stays in metrics.jsonl, from which ``duet track`` replays a run into trackers.

A run's tracked ids live in ``<run>/tracking.json``, so ``--resume`` continues the same
wandb run (``resume="allow"``) and the same MLflow run. ``duet compare`` tracks one run per
arm x seed, grouped: a wandb group, an MLflow parent run, TensorBoard folders
``tb/arm-<G>/seed-<s>`` under the comparison's, so the arms overlay in each tool.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from cluster.contract.config import ConfigError, RunConfig, to_dict, to_yaml
from cluster.contract.files import atomic_write_text

EXTRA = "duet-rl[tracking]"
IDS = "tracking.json"
# Step-row keys that are throughput or sizes rather than training signals.
PERF = {"tokens_per_s", "completion_tokens", "rollouts", "rollouts_total", "tokens",
        "probe_max_abs_diff"}
QUEUE = {"staleness_max", "groups_put"}
SKIP = {"kind", "step", "policy_version"}


@dataclass(frozen=True)
class TrackedRun:
    """Where and as what one run is tracked."""

    root: Path
    """The folder the shared stores go in: the run's own, or its comparison's."""
    run_dir: Path
    """The run's folder (its tracked ids, for resume)."""
    name: str
    """The run's name in the trackers (a comparison's: ``arm-<G>/seed-<s>``)."""
    group: Optional[str] = None
    """The comparison it belongs to, if any."""
    parent_id: Optional[str] = None
    """The comparison's MLflow parent run."""


def metric_name(key: str) -> str:
    """A step row's key as its tracked name: ``queue/…``, ``perf/…`` or ``train/…``."""
    if key.startswith("queue_"):
        return "queue/" + key[len("queue_"):]
    if key in QUEUE:
        return "queue/" + key
    if key.endswith(("_s", "_seconds")) or key.startswith("sync_") or key in PERF:
        return "perf/" + key
    return "train/" + key


def step_metrics(row: Dict[str, object]) -> Dict[str, float]:
    return {metric_name(k): float(v) for k, v in row.items()
            if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}


def eval_metrics(row: Dict[str, object]) -> Dict[str, float]:
    """An evaluation row: each set's figures (pass@k per k too), the average, its cost."""
    out: Dict[str, float] = {}
    for name, figures in dict(row.get("sets") or {}).items():
        for key, value in figures.items():
            if key == "pass_at":
                out.update({f"eval/{name}/pass_at_{k}": float(v) for k, v in value.items()})
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"eval/{name}/{key}"] = float(value)
    for key in ("accuracy", "mean_at_k", "pass_at_k"):
        if isinstance(row.get(key), (int, float)):
            out[f"eval/average/{key}"] = float(row[key])
    if isinstance(row.get("eval_s"), (int, float)):
        out["perf/eval_s"] = float(row["eval_s"])
    return out


def flat_params(config: RunConfig) -> Dict[str, str]:
    """The resolved config as ``section.key -> text`` (MLflow and TensorBoard want scalars)."""
    out: Dict[str, str] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = json.dumps(node) if isinstance(node, (list, tuple)) else str(node)

    walk(to_dict(config), "")
    return out


# ---------------------------------------------------------------------------- backends


class TensorBoardBackend:
    """``torch.utils.tensorboard``'s writer: scalars, the config as text and hparams."""

    name = "tensorboard"

    def __init__(self, config: RunConfig, run: TrackedRun, ids: Dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        base = Path(config.tracking.tensorboard_dir or run.root / "tb")
        self.folder = base / run.name if run.group else base
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def params(self, config: RunConfig) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.writer.add_text("config", "```yaml\n" + to_yaml(config) + "\n```", 0)
        for summary in hparams(flat_params(config), {}):
            self.writer.file_writer.add_summary(summary)

    def log(self, metrics: Dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def summary(self, values: Dict[str, float]) -> None:
        self.writer.add_text("summary", json.dumps(values, indent=1), 0)

    def image(self, name: str, path: Path) -> None:
        from matplotlib.image import imread

        self.writer.add_image(name, imread(str(path))[..., :3], 0, dataformats="HWC")

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbBackend:
    """A wandb run (``WANDB_MODE`` / ``WANDB_DIR`` as the user set them)."""

    name = "wandb"

    def __init__(self, config: RunConfig, run: TrackedRun, ids: Dict[str, str]) -> None:
        import wandb

        ids.setdefault("wandb", uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=config.tracking.project, name=run.name, group=run.group,
            id=ids["wandb"], resume="allow", dir=os.environ.get("WANDB_DIR") or str(run.root),
            config=to_dict(config), reinit="create_new")

    def params(self, config: RunConfig) -> None:
        pass  # the config went with wandb.init

    def log(self, metrics: Dict[str, float], step: int) -> None:
        # wandb's step only grows: rows a resumed run replays below its last step (it
        # logged them before it stopped) are dropped by wandb with a warning.
        self.run.log(metrics, step=step)

    def summary(self, values: Dict[str, float]) -> None:
        self.run.summary.update(values)

    def image(self, name: str, path: Path) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path))})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowBackend:
    """An MLflow run through ``MlflowClient`` (a file store in the run folder by default)."""

    name = "mlflow"

    def __init__(self, config: RunConfig, run: TrackedRun, ids: Dict[str, str]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_uri(config, run.root))
        if ids.get("mlflow") is None:
            experiment = experiment_id(self.client, config.tracking.project)
            tags = {"mlflow.runName": run.name}
            if run.parent_id:
                tags["mlflow.parentRunId"] = run.parent_id
            ids["mlflow"] = self.client.create_run(experiment, tags=tags).info.run_id
        else:  # resumed: the same run, running again
            self.client.update_run(ids["mlflow"], status="RUNNING")
        self.run_id = ids["mlflow"]

    def params(self, config: RunConfig) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
        existing = self.client.get_run(self.run_id).data.params
        new = [p for p in params if p.key not in existing]  # a resumed run keeps its own
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def log(self, metrics: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in metrics.items()])

    def summary(self, values: Dict[str, float]) -> None:
        self.log({f"summary/{k}": v for k, v in values.items()}, 0)

    def image(self, name: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


BACKENDS = {"tensorboard": TensorBoardBackend, "wandb": WandbBackend, "mlflow": MlflowBackend}
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def mlflow_uri(config: RunConfig, root: Path) -> str:
    """``tracking.mlflow_uri``, or a file store in ``root``. MLflow 3 keeps file stores in
    maintenance mode and refuses them unless told otherwise: this one is duet's default
    and works offline, so it is told."""
    if config.tracking.mlflow_uri:
        return config.tracking.mlflow_uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path(root) / "mlruns").resolve().as_uri()


def experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def check_installed(config: RunConfig) -> None:
    """Every chosen tracker importable, or a ``ConfigError`` saying how to install it."""
    import importlib.util

    for name in config.tracking.backends:
        if importlib.util.find_spec(MODULES[name]) is None:
            raise ConfigError("tracking.backends", f"{name} is not installed",
                              value=list(config.tracking.backends),
                              hint=f"pip install '{EXTRA}' (or pip install {MODULES[name]})")


# ---------------------------------------------------------------------------- the tracker


class Tracker:
    """The configured backends behind one interface. Every call reaches every live
    backend; one that raises is reported once (``warn``) and left out from then on."""

    def __init__(self, backends: List[object], warn: Callable[[str], None]) -> None:
        self.backends, self.warn = list(backends), warn
        self.failed: Dict[str, str] = {}  # backend -> the error that dropped it

    def _each(self, method: str, *args) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as err:  # noqa: BLE001 - a tracker never stops training
                self._drop(backend, f"{type(err).__name__}: {err}")

    def _drop(self, backend, reason: str) -> None:
        self.backends.remove(backend)
        self.failed[backend.name] = reason
        self.warn(f"tracking: {backend.name} failed ({reason[:300]}); it is off for the rest "
                  "of this run. Every row is still in metrics.jsonl: `duet track RUN_DIR` "
                  "replays it into the trackers")
        try:
            backend.close(failed=True)
        except Exception:  # noqa: BLE001 - already reported
            pass

    def params(self, config: RunConfig) -> None:
        self._each("params", config)

    def step(self, row: Dict[str, object]) -> None:
        self._each("log", step_metrics(row), int(row.get("policy_version", row.get("step", 0))))

    def eval(self, row: Dict[str, object]) -> None:
        self._each("log", eval_metrics(row), int(row.get("policy_version", row.get("step", 0))))

    def summary(self, values: Dict[str, object]) -> None:
        self._each("summary", {k: float(v) for k, v in values.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def image(self, name: str, path: Path) -> None:
        self._each("image", name, Path(path))

    def close(self, failed: bool = False) -> None:
        self._each("close", failed)
        self.backends = []


def open_tracker(config: RunConfig, run: TrackedRun, resume: bool = False,
                 warn: Callable[[str], None] = print) -> Tracker:
    """The run's tracker (none chosen: one that does nothing). ``resume``: continue the
    tracked runs whose ids ``<run>/tracking.json`` holds."""
    if not config.tracking.backends:
        return Tracker([], warn)
    check_installed(config)
    path = Path(run.run_dir) / IDS
    ids: Dict[str, str] = json.loads(path.read_text()) if resume and path.exists() else {}
    tracker = Tracker([], warn)
    for name in config.tracking.backends:
        try:
            tracker.backends.append(BACKENDS[name](config, run, ids))
        except Exception as err:  # noqa: BLE001 - e.g. wandb online with no network
            tracker.failed[name] = f"{type(err).__name__}: {err}"
            warn(f"tracking: {name} could not start ({type(err).__name__}: {str(err)[:300]}); "
                 "the run goes on without it")
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(ids, indent=1))
    return tracker


def summary_values(summary: Dict[str, object]) -> Dict[str, object]:
    """A run summary's figures for the trackers: its scalars and its last evaluation's."""
    out = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
    evals = summary.get("eval") or []
    if evals:
        last = evals[-1]
        out.update({f"final_{k}": last[k] for k in ("accuracy", "mean_at_k", "pass_at_k")
                    if k in last})
    return out


def comparison_parent(config: RunConfig, folder: Path) -> Optional[str]:
    """A comparison's MLflow parent run (made once, kept in ``<folder>/tracking.json``), or
    None when MLflow is not tracked or cannot be reached (each run then stands alone)."""
    if "mlflow" not in config.tracking.backends:
        return None
    check_installed(config)
    path = Path(folder) / IDS
    ids = json.loads(path.read_text()) if path.exists() else {}
    if "mlflow_parent" not in ids:
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=mlflow_uri(config, folder))
            ids["mlflow_parent"] = client.create_run(
                experiment_id(client, config.tracking.project),
                tags={"mlflow.runName": Path(folder).name}).info.run_id
        except Exception as err:  # noqa: BLE001 - reported; the runs are tracked anyway
            print(f"tracking: mlflow could not start the comparison's parent run ({err})")
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(ids, indent=1))
    return ids["mlflow_parent"]


def track_report(config: RunConfig, folder: Path, png: Path) -> None:
    """A comparison's report PNG, at its end: an artifact of the MLflow parent run (which
    then finishes), a TensorBoard image in the comparison's ``tb/report``, a wandb run of
    the group named ``report``."""
    if not config.tracking.backends or not Path(png).exists():
        return
    parent = comparison_parent(config, folder)
    run = TrackedRun(Path(folder), Path(folder) / "report-tracking", "report",
                     group=Path(folder).name)
    if parent:  # the parent run itself, resumed: no run of its own for the image
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(run.run_dir) / IDS, json.dumps({"mlflow": parent}))
    tracker = open_tracker(config, run, resume=True)
    tracker.image("report", png)
    tracker.close()


def replay(run_dir: Path, config: RunConfig, run: Optional[TrackedRun] = None,
           warn: Callable[[str], None] = print) -> int:
    """Log a run's metrics.jsonl into ``config``'s trackers as new tracked runs, as the
    driver would have (``duet track``: a run whose tracker failed or was not on). Returns
    the rows read."""
    from cluster.loop.run_log import read_rows

    run = run or TrackedRun(Path(run_dir), Path(run_dir), config.name)
    tracker = open_tracker(config, run, warn=warn)
    tracker.params(config)
    rows = read_rows(Path(run_dir) / "metrics.jsonl")
    for row in rows:
        if row["kind"] == "step":
            tracker.step(row)
        elif row["kind"] == "eval":
            tracker.eval(row)
    summary = Path(run_dir) / "summary.json"
    if summary.exists():
        tracker.summary(summary_values(json.loads(summary.read_text())))
    tracker.close()
    return len(rows)


def replay_folder(folder: Path, overrides: List[str], warn: Callable[[str], None] = print
                  ) -> Dict[str, int]:
    """``duet track``: a run folder, or a comparison's (each arm x seed grouped, and its
    report), with its saved config plus ``overrides`` (e.g. ``tracking.backends=wandb``)."""
    from cluster.contract.config import load_config

    folder = Path(folder)
    if not (folder / "config.yaml").exists():
        raise ConfigError(str(folder), "is not a run folder (it has no config.yaml)")
    base = load_config(folder / "config.yaml", overrides)
    if not base.tracking.backends:
        raise ConfigError("tracking.backends", "names no tracker",
                          hint="e.g. duet track RUN_DIR tracking.backends=tensorboard,mlflow")
    runs = sorted(folder.glob("arm-*/seed-*/metrics.jsonl"))
    if not runs:
        return {folder.name: replay(folder, base, warn=warn)}
    parent = comparison_parent(base, folder)
    counts = {}
    for metrics in runs:
        run_dir = metrics.parent
        config = load_config(run_dir / "config.yaml", overrides)
        name = f"{run_dir.parent.name}/{run_dir.name}"
        counts[name] = replay(run_dir, config, TrackedRun(folder, run_dir, name, folder.name,
                                                          parent), warn)
    track_report(base, folder, folder / "report.png")
    return counts
