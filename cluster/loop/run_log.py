"""A run's metrics log: one JSON line per event, flushed as written; CSV and Parquet at the end.

JSON lines survive a crash up to the last complete line and allow rows of different kinds
(``step``, ``eval``, ``sync``) side by side; ``finish`` writes the table forms atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq


class RunLog:
    """Append-only metrics rows for one run (or one arm of a comparison)."""

    def __init__(self, folder: Path, name: str = "metrics") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{name}.jsonl"
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, kind: str, **fields: object) -> Dict[str, object]:
        row = {"kind": kind, **{k: _plain(v) for k, v in fields.items()}}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        return row

    def close(self) -> None:
        """Close the log, keeping only the JSON lines (for rows with list fields)."""
        self._fh.close()

    def finish(self) -> None:
        """Close the log and write ``<name>.csv`` and ``<name>.parquet`` beside it."""
        self._fh.close()
        rows = read_rows(self.path)
        if not rows:
            return
        table = flat_table(rows)
        stem = self.path.with_suffix("")
        for suffix, write in ((".parquet", lambda t, p: pq.write_table(t, p)),
                              (".csv", lambda t, p: pacsv.write_csv(t, p))):
            tmp = Path(f"{stem}{suffix}.tmp")
            write(table, str(tmp))
            os.replace(tmp, f"{stem}{suffix}")


def flat_table(rows: List[Dict[str, object]]) -> pa.Table:
    """Rows as one table, a column per key; a nested mapping or list (an evaluation's
    per-set figures, a retry's engine versions) becomes its JSON text, which CSV can hold."""
    keys: List[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return pa.table({k: [json.dumps(v) if isinstance(v, (dict, list)) else v
                         for v in (row.get(k) for row in rows)] for k in keys})


def read_rows(path: Path, kind: Optional[str] = None) -> List[Dict[str, object]]:
    """Rows of a metrics log (complete lines only), optionally of one kind."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line from a crash
            if kind is None or row.get("kind") == kind:
                rows.append(row)
    return rows


def _plain(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value
