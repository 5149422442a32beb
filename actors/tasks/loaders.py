"""Rows of a dataset as users have it: JSONL, Parquet, or a Hugging Face ``datasets`` folder,
as one file, a folder of shards, or a hub dataset id.

Yields ``(location, key, row)`` per row, where ``location`` names the file and line (JSONL)
or row (Parquet, Arrow) for error messages, ``key`` is a stable id within the dataset, and
``row`` is a dict, or a ``(reason, message)`` pair for a line that could not be read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List, Tuple

from cluster.contract import hub

SUFFIXES = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",), "hf": (".arrow",)}


class DatasetError(ValueError):
    """A bad dataset row or file, located by path and line / row number."""


def data_files(task) -> List[Path]:
    """The files ``task.path`` (a file, a folder or a hub dataset id) holds, in order."""
    try:
        root = hub.resolve(task.path, "task.path", repo_type="dataset")
    except hub.HubError as err:
        raise DatasetError(str(err)) from None
    if root.is_file():
        return [root]
    if task.name == "hf":
        return _saved_dataset_files(root)
    pattern = task.data_files
    files = (sorted(root.glob(pattern)) if pattern else
             sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES[task.name]))
    files = [f for f in files if f.is_file() and ".cache" not in f.parts]
    if not files:
        wanted = pattern or " or ".join(f"*{s}" for s in SUFFIXES[task.name])
        raise DatasetError(f"{root}: no {task.name} files ({wanted}) in the folder "
                           "(task.path, task.data_files)")
    return files


def _saved_dataset_files(root: Path) -> List[Path]:
    """The Arrow files of a ``datasets`` ``save_to_disk`` folder (one split)."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        raise DatasetError(f"{root}: a DatasetDict with splits {splits}; point task.path at "
                           f"one split's folder, e.g. {root / (splits[0] if splits else 'train')}")
    state = root / "state.json"
    if not state.is_file():
        raise DatasetError(f"{root}: not a datasets save_to_disk folder (no state.json); "
                           "for parquet or jsonl files set task.name accordingly")
    names = [f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
    missing = [n for n in names if not (root / n).is_file()]
    if not names or missing:
        raise DatasetError(f"{root}/state.json: data files {missing or names} are missing")
    return [root / n for n in names]


def read_rows(task) -> Iterator[Tuple[str, str, object]]:
    """Every row of every file of ``task``, in order."""
    files = data_files(task)
    for path in files:
        # One file keeps the short ids earlier runs used; shards prefix their file's name.
        prefix = "" if len(files) == 1 else f"{path.name}:"
        if path.suffix in SUFFIXES["jsonl"]:
            rows = _jsonl_rows(path)
        else:
            rows = _table_rows(path)
        for where, key, row in rows:
            yield where, prefix + key, row


def _table_rows(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".arrow":  # datasets writes the Arrow IPC stream format
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all()
        else:
            table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        kind = "Arrow" if path.suffix == ".arrow" else "Parquet"
        raise DatasetError(f"{path}: not a readable {kind} file ({err})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", f"row{i}", row


def _jsonl_rows(path: Path):
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where, key = f"{path}:{number}", f"line{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield where, key, ("invalid_utf8", f"invalid UTF-8 at byte {err.start}")
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                row = ("bad_json", f"malformed JSON ({err.msg} at column {err.colno})")
            yield where, key, row
