"""Datasets as prompt sources (JSONL, Parquet, ``datasets`` folders, hub ids), with
row-level error reporting.

Every row is checked when the data is opened: missing or mistyped fields, empty or over-long
prompts, answers that cannot be extracted, invalid UTF-8 and malformed JSON. A bad row stops
the run with an error naming the file and line (JSONL) or row (Parquet, Arrow), unless
``skip_bad_rows`` is set, in which case it is skipped and counted by reason (``stats()``).
The prompt column holds a string or a list of chat messages; the answer is a (dotted) field
or the last ``\\boxed{}`` of one (``task.answer_from``). After a seeded shuffle
(``split_seed``, else the run's seed) the first ``eval_size`` rows are held out; the rest
form the training stream, reshuffled per epoch with the run's seed.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple

from actors.tasks.answers import MISSING, dig, last_boxed
from actors.tasks.base import Prompt
from actors.tasks.loaders import DatasetError, read_rows

__all__ = ["DatasetError", "DatasetTask"]


class DatasetTask:
    """Prompts and answers from a dataset (``task.name``: jsonl, parquet or hf)."""

    def __init__(self, config, seed: int = 0) -> None:
        self.path = config.path
        self.config = config
        self.skipped: Counter = Counter()
        rows = list(self._rows())
        if not rows:
            raise DatasetError(f"{self.path}: no usable rows"
                               + (f" (skipped: {dict(self.skipped)})" if self.skipped else ""))
        split = config.split_seed if getattr(config, "split_seed", None) is not None else seed
        random.Random(split).shuffle(rows)
        self._eval = rows[: config.eval_size]
        self._train = rows[config.eval_size:] or rows
        self._seed = seed
        self._order: Tuple[int, List[int]] = (-1, [])

    def _rows(self) -> Iterator[Prompt]:
        name = str(self.path).rstrip("/").split("/")[-1]
        for where, key, row in read_rows(self.config):
            checked = self._check(row)
            if isinstance(checked, Prompt):
                yield Prompt(prompt_id=f"{name}:{key}", text=checked.text,
                             answer=checked.answer, messages=checked.messages)
                continue
            reason, message = checked
            if not self.config.skip_bad_rows:
                raise DatasetError(f"{where}: {message}; fix the row or set "
                                   "task.skip_bad_rows=true to skip and count bad rows")
            self.skipped[reason] += 1

    def _check(self, row: object):
        """The row's Prompt (id left blank), or (reason, message) for a bad row."""
        if isinstance(row, tuple):
            return row
        if not isinstance(row, dict):
            return "not_an_object", f"expected a JSON object, got {type(row).__name__}"
        c = self.config
        for key in (c.prompt_key, c.answer_key):
            if dig(row, key) in (MISSING, None):
                return "missing_field", (f"missing field '{key}' (task.prompt_key / "
                                         f"task.answer_key map columns; row has {sorted(row)})")
        prompt = dig(row, c.prompt_key)
        if isinstance(prompt, str):
            text, messages = prompt, None
        else:
            messages = _messages(prompt)
            if messages is None:
                return "bad_type", (f"field '{c.prompt_key}' must be a string or a list of "
                                    f"{{role, content}} messages, got {type(prompt).__name__}")
            users = [content for role, content in messages if role == "user"]
            if not users:
                return "bad_type", f"field '{c.prompt_key}' has no user message"
            text = users[-1]
        if not text.strip():
            return "empty_prompt", f"field '{c.prompt_key}' is empty"
        size = sum(len(content) for _, content in messages) if messages else len(text)
        if size > c.max_prompt_chars:
            return "too_long", (f"prompt has {size} characters, more than "
                                f"task.max_prompt_chars={c.max_prompt_chars}")
        answer = _answer(dig(row, c.answer_key), c)
        if isinstance(answer, tuple):
            return answer
        return Prompt(prompt_id="", text=text, answer=answer, messages=messages)

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


def _messages(value) -> Optional[Tuple[Tuple[str, str], ...]]:
    """(role, content) pairs of a chat-message list, or None if it is not one."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    turns = []
    for item in value:
        if not (isinstance(item, dict) and isinstance(item.get("role"), str)
                and isinstance(item.get("content"), str)):
            return None
        turns.append((item["role"], item["content"]))
    return tuple(turns)


def _answer(value, config):
    """The reference answer as a string, or (reason, message)."""
    key = config.answer_key
    if config.answer_from == "boxed":
        if not isinstance(value, str):
            return "bad_type", f"field '{key}' must be a string to read its \\boxed{{}} answer"
        boxed = last_boxed(value)
        if boxed is None or not boxed.strip():
            return "no_answer", (f"field '{key}' has no complete \\boxed{{...}} answer "
                                 "(task.answer_from=boxed)")
        return boxed.strip()
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return "bad_type", f"field '{key}' must be a string or number, got {type(value).__name__}"
    return str(value)
