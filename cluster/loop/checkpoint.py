"""The checkpoint folder format: ``checkpoints/step-NNNNNN/``, complete or absent.

A checkpoint is filled in a temp folder (``.tmp-step-NNNNNN``): the learner ranks write the
model and their optimizer/RNG partitions, then the driver's state file (step, policy
version, rollout cursors, queue offsets) goes in last, and the folder is renamed into place.
A folder without its state file is never taken for a checkpoint, so a crash at any moment
leaves the previous complete checkpoint as the newest one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Optional

from cluster.contract.files import atomic_write_json

STATE_FILE = "duet_state.json"
REFERENCE_DIR = "reference"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the temp folder is gone, earlier ones are intact."""


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """Newest *complete* checkpoint (renamed into place, with its state file), if any."""
    done = sorted(p for p in Path(folder).glob("step-*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def read_state(checkpoint: Path) -> Dict[str, object]:
    """The driver's state saved with ``checkpoint``."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def record_reference(model_path: str, run_dir: Path) -> Path:
    """``run_dir/reference``: the run's initial policy, kept as the KL anchor for good.

    Written once (files hard-linked where the filesystem allows, else copied; into a temp
    folder, then renamed); a resumed run finds it and keeps its first anchor, whatever
    ``model_path`` it is given now.
    """
    folder = Path(run_dir) / REFERENCE_DIR
    if folder.exists():
        return folder
    tmp = folder.with_name(f".tmp-{REFERENCE_DIR}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in Path(model_path).iterdir():
        if item.is_file():
            try:
                os.link(item, tmp / item.name)
            except OSError:
                shutil.copy2(item, tmp / item.name)
    tmp.rename(folder)
    return folder


def write_state(path: Path, state: Dict[str, object]) -> None:
    atomic_write_json(path, state)


def write_checkpoint(folder: Path, step: int, fill: Callable[[Path], Dict[str, object]],
                     keep: int) -> Path:
    """Write ``step-NNNNNN`` under ``folder`` atomically and keep the newest ``keep``.

    ``fill(tmp)`` writes the checkpoint's files into ``tmp`` and returns the driver state;
    an ``OSError`` on the way removes the temp folder and raises ``CheckpointWriteError``.
    Errors other than ``OSError`` (a learner that died) leave the temp folder, which a
    later write of the same step replaces and which is never read as a checkpoint.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:06d}"
    tmp = folder / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        state = fill(tmp)
        write_state(tmp / STATE_FILE, state)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(str(err)) from err
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final
