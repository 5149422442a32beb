"""Local datasets (JSONL or Parquet) as prompt sources, with row-level error reporting.

Every row is checked when the file is opened: missing or non-string fields, empty or
over-long prompts, invalid UTF-8 and malformed JSON. A bad row stops the run with an error
naming the file and line (JSONL) or row (Parquet), unless ``skip_bad_rows`` is set, in which
case it is skipped and counted by reason (``stats()``). After a seeded shuffle (``split_seed``,
else the run's seed) the first ``eval_size`` rows are held out; the rest form the training
stream, reshuffled per epoch with the run's seed.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from actors.tasks.base import Prompt


class DatasetError(ValueError):
    """A bad dataset row or file, located by path and line / row number."""


class DatasetTask:
    """Prompts and answers from a local JSONL or Parquet file."""

    def __init__(self, config, seed: int = 0) -> None:
        self.path = Path(config.path)
        self.config = config
        self.skipped: Counter = Counter()
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: dataset file not found (task.path)")
        rows = list(self._rows())
        if not rows:
            raise DatasetError(f"{self.path}: no usable rows")
        split = config.split_seed if getattr(config, "split_seed", None) is not None else seed
        random.Random(split).shuffle(rows)
        self._eval = rows[: config.eval_size]
        self._train = rows[config.eval_size:] or rows
        self._seed = seed
        self._order: Tuple[int, List[int]] = (-1, [])

    def _raw_rows(self) -> Iterator[Tuple[str, str, object]]:
        """(location, item key, row-or-error); location is 'path:line' or 'path row N'."""
        if self.config.name == "parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(self.path)
            except Exception as err:  # pyarrow raises several types for a bad file
                raise DatasetError(f"{self.path}: not a readable Parquet file ({err})") from None
            for i, row in enumerate(table.to_pylist()):
                yield f"{self.path} row {i}", f"row{i}", row
            return
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                where, key = f"{self.path}:{number}", f"line{number}"
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

    def _rows(self) -> Iterator[Prompt]:
        keys = (self.config.prompt_key, self.config.answer_key)
        for where, key, row in self._raw_rows():
            problem = self._check(row, keys)
            if problem is None:
                yield Prompt(prompt_id=f"{self.path.name}:{key}", text=row[keys[0]],
                             answer=str(row[keys[1]]))
                continue
            reason, message = problem
            if not self.config.skip_bad_rows:
                raise DatasetError(f"{where}: {message}; fix the row or set "
                                   "task.skip_bad_rows=true to skip and count bad rows")
            self.skipped[reason] += 1

    def _check(self, row: object, keys: Tuple[str, str]):
        if isinstance(row, tuple):
            return row
        if not isinstance(row, dict):
            return "not_an_object", f"expected a JSON object, got {type(row).__name__}"
        prompt_key, answer_key = keys
        for key in keys:
            if key not in row or row[key] is None:
                return "missing_field", (f"missing field '{key}' (task.prompt_key / "
                                         f"task.answer_key map columns; row has {sorted(row)})")
        prompt = row[prompt_key]
        if not isinstance(prompt, str):
            return "bad_type", f"field '{prompt_key}' must be a string, got {type(prompt).__name__}"
        if not prompt.strip():
            return "empty_prompt", f"field '{prompt_key}' is empty"
        if len(prompt) > self.config.max_prompt_chars:
            return "too_long", (f"prompt has {len(prompt)} characters, more than "
                                f"task.max_prompt_chars={self.config.max_prompt_chars}")
        if not isinstance(row[answer_key], (str, int, float)):
            return "bad_type", f"field '{answer_key}' must be a string or number"
        return None

    @property
    def train_size(self) -> int:
        """Training rows (one epoch of the training stream)."""
        return len(self._train)

    def train(self, position: int) -> Prompt:
        epoch, index = divmod(position, len(self._train))
        if self._order[0] != epoch:
            order = list(range(len(self._train)))
            random.Random(f"{self._seed}:{epoch}").shuffle(order)
            self._order = (epoch, order)
        return self._train[self._order[1][index]]

    def eval_set(self) -> List[Prompt]:
        return list(self._eval)

    def stats(self) -> Dict[str, int]:
        return {f"skipped_{k}": v for k, v in self.skipped.items()}
