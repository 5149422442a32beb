"""The group sample contract: one Arrow record per prompt group.

A group (one prompt, G completions) is never split across records, so the learner can read
rewards as (P, G) without trusting row order (its tensor view is ``learner.batch``).
``validate`` checks a record batch against the contract and names the group and field of
the first problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REWARD_STATUSES = ("ok", "error", "timeout")

GROUP_SCHEMA = pa.schema(
    [
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("completion_token_ids", pa.list_(pa.list_(pa.int32())), nullable=False),
        pa.field("behaviour_logprobs", pa.list_(pa.list_(pa.float32())), nullable=False),
        pa.field("rewards", pa.list_(pa.float32()), nullable=False),
        pa.field("reward_status", pa.list_(pa.string()), nullable=False),
        pa.field("finish_reasons", pa.list_(pa.string()), nullable=False),
        pa.field("policy_version", pa.int64(), nullable=False),
        pa.field("rollout_worker", pa.int32(), nullable=False),
        pa.field("created_at", pa.float64(), nullable=False),
        pa.field("generation_seconds", pa.float64(), nullable=False),
    ]
)


class SchemaError(ValueError):
    """A record that breaks the group contract; the message names the field and group."""


@dataclass
class Group:
    """One prompt's G completions with everything the learner and the audit need."""

    group_id: str
    prompt_id: str
    prompt_token_ids: List[int]
    completion_token_ids: List[List[int]]
    behaviour_logprobs: List[List[float]]
    rewards: List[float]
    reward_status: List[str] = field(default_factory=list)
    finish_reasons: List[str] = field(default_factory=list)
    policy_version: int = 0
    rollout_worker: int = 0
    created_at: float = field(default_factory=time.time)
    generation_seconds: float = 0.0

    def __post_init__(self) -> None:
        size = len(self.completion_token_ids)
        if not self.reward_status:
            self.reward_status = ["ok"] * size
        if not self.finish_reasons:
            self.finish_reasons = ["length"] * size


def build_batch(groups: Sequence[Group]) -> pa.RecordBatch:
    """Arrow record batch (one row per group) from Python groups, validated."""
    if not groups:
        return pa.RecordBatch.from_pylist([], schema=GROUP_SCHEMA)
    rows = [g.__dict__ for g in groups]
    try:
        batch = pa.RecordBatch.from_pylist(rows, schema=GROUP_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
        raise SchemaError(_locate_conversion_error(groups, err)) from None
    return validate(batch)


def to_ipc(batch: pa.RecordBatch) -> bytes:
    """A record batch as one Arrow IPC stream, for passing between processes.

    Ray pickles a record batch with each of its Arrow buffers out of band (44 for a
    ``GROUP_SCHEMA`` batch), which costs more per call than the copy into one stream does
    at the sizes a step moves.
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def from_ipc(data) -> pa.RecordBatch:
    """The record batch of an Arrow IPC stream (``to_ipc``); several are combined."""
    return combine(pa.ipc.open_stream(data).read_all())


def combine(table: pa.Table) -> pa.RecordBatch:
    """A table as one record batch (its chunks concatenated; none: an empty batch)."""
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return pa.concat_batches(batches)


def _locate_conversion_error(groups: Sequence[Group], err: Exception) -> str:
    for g in groups:
        for f in GROUP_SCHEMA:
            try:
                pa.array([getattr(g, f.name)], type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as inner:
                return f"group {g.group_id!r}: field '{f.name}' has the wrong type: {inner}"
    return f"cannot convert groups to the group schema: {err}"


def _first_bad(ok: pa.Array) -> Optional[int]:
    """Index of the first False in a boolean array, or None."""
    arr = np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)
    bad = np.flatnonzero(~arr)
    return int(bad[0]) if bad.size else None


def validate(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Check a record batch against the contract; raise SchemaError naming field and group.

    Checks: field names and types (order and nullability flags may differ; the returned
    batch carries ``GROUP_SCHEMA`` exactly, without copying); no nulls; every per-completion
    list has G entries; each completion has one behaviour logprob per token; statuses are
    known; an 'ok' reward is finite; G is at least 2.

    Returns:
        the same data as a batch whose schema is ``GROUP_SCHEMA``.
    """
    if not batch.schema.equals(GROUP_SCHEMA):
        for f in batch.schema:
            if f.name not in GROUP_SCHEMA.names:
                raise SchemaError(f"field '{f.name}' is not in the group schema")
            expected = GROUP_SCHEMA.field(f.name).type
            if f.type != expected:
                raise SchemaError(f"field '{f.name}' has type {f.type}, expected {expected}")
        for name in GROUP_SCHEMA.names:
            if name not in batch.schema.names:
                raise SchemaError(f"field '{name}' is missing from the batch")
        batch = pa.RecordBatch.from_arrays([batch.column(n) for n in GROUP_SCHEMA.names],
                                           schema=GROUP_SCHEMA)
    if batch.num_rows == 0:
        return batch
    ids = batch.column("group_id")

    def fail(row: int, name: str, problem: str) -> None:
        raise SchemaError(f"group {ids[row].as_py()!r}: field '{name}' {problem}")

    for name in GROUP_SCHEMA.names:
        col = batch.column(name)
        if col.null_count:
            fail(_first_bad(pc.is_valid(col)), name, "is null")
    sizes = pc.list_value_length(batch.column("completion_token_ids"))
    row = _first_bad(pc.greater_equal(sizes, 2))
    if row is not None:
        fail(row, "completion_token_ids", f"has {sizes[row].as_py()} completions; need >= 2")
    for name in ("behaviour_logprobs", "rewards", "reward_status", "finish_reasons"):
        row = _first_bad(pc.equal(pc.list_value_length(batch.column(name)), sizes))
        if row is not None:
            fail(row, name, f"has {len(batch.column(name)[row])} entries for "
                            f"{sizes[row].as_py()} completions")
    tokens = batch.column("completion_token_ids")
    logps = batch.column("behaviour_logprobs")
    for name in ("completion_token_ids", "behaviour_logprobs"):
        if batch.column(name).flatten().null_count or batch.column(name).flatten().flatten().null_count:
            fail(0, name, "holds a null value")
    same = pc.equal(pc.list_value_length(tokens.flatten()), pc.list_value_length(logps.flatten()))
    inner = _first_bad(same)
    if inner is not None:
        parents = pc.list_parent_indices(tokens).to_numpy()
        fail(int(parents[inner]), "behaviour_logprobs",
             "does not have one logprob per completion token")
    statuses = batch.column("reward_status")
    known = pc.is_in(statuses.flatten(), value_set=pa.array(REWARD_STATUSES))
    inner = _first_bad(known)
    if inner is not None:
        parents = pc.list_parent_indices(statuses).to_numpy()
        fail(int(parents[inner]), "reward_status",
             f"has {statuses.flatten()[inner].as_py()!r}; expected one of {REWARD_STATUSES}")
    rewards = batch.column("rewards").flatten().to_numpy(zero_copy_only=False)
    ok = np.asarray(statuses.flatten().to_pylist()) == "ok"
    bad = np.flatnonzero(ok & ~np.isfinite(rewards))
    if bad.size:
        parents = pc.list_parent_indices(batch.column("rewards")).to_numpy()
        fail(int(parents[bad[0]]), "rewards", "is not finite for a sample marked 'ok'")
    return batch
