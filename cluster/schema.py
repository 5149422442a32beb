"""The group sample contract: one Arrow record per prompt group, and its tensor view.

A group (one prompt, G completions) is never split across records, so the learner can read
rewards as (P, G) without trusting row order. ``to_tensors`` turns a record batch into the
padded tensors the learner trains on.

Copies, stated plainly: ``rewards`` (P, G) is a zero-copy view of the Arrow values buffer
(float32, no nulls, every group the same G). The padded (B, T) tensors need one scatter each,
because Arrow stores ragged lists back to back and padding has to be inserted; the flat
completion tokens and logprobs are read zero-copy and written once into the padded tensors.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

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


@dataclass
class TrainBatch:
    """Padded tensors for the learner. B = P x G rows, T = longest prompt + completion."""

    input_ids: torch.Tensor  # (B, T) int64, prompt then completion, right-padded with 0
    attention_mask: torch.Tensor  # (B, T) bool
    completion_mask: torch.Tensor  # (B, T) bool, True on completion tokens
    behaviour_logprobs: torch.Tensor  # (B, T) float32, logprob of input_ids[b, t]; 0 elsewhere
    rewards: torch.Tensor  # (P, G) float32
    reward_ok: torch.Tensor  # (P, G) bool, False where the reward errored or timed out
    policy_version: torch.Tensor  # (P,) int64
    group_ids: List[str]  # (P,)

    @property
    def group_size(self) -> int:
        return self.rewards.shape[1]


def to_tensors(batch: pa.RecordBatch) -> TrainBatch:
    """Padded training tensors from a validated group batch (one record per group)."""
    if batch.num_rows == 0:
        raise SchemaError("cannot build tensors from an empty batch")
    sizes = pc.list_value_length(batch.column("completion_token_ids")).to_numpy()
    if not np.all(sizes == sizes[0]):
        row = int(np.flatnonzero(sizes != sizes[0])[0])
        raise SchemaError(f"group {batch.column('group_id')[row].as_py()!r}: field "
                          f"'completion_token_ids' has {sizes[row]} completions, the batch "
                          f"has {sizes[0]}; one batch must hold a single group size")
    num_groups, group_size = batch.num_rows, int(sizes[0])
    rows = num_groups * group_size

    rewards_np = batch.column("rewards").flatten().to_numpy(zero_copy_only=True)
    with warnings.catch_warnings():
        # Arrow buffers are read-only; the learner never writes to rewards in place.
        warnings.simplefilter("ignore", UserWarning)
        rewards = torch.from_numpy(rewards_np).view(num_groups, group_size)  # zero-copy
    status = np.asarray(batch.column("reward_status").flatten().to_pylist()) == "ok"
    reward_ok = torch.from_numpy(status.reshape(num_groups, group_size))

    prompts = batch.column("prompt_token_ids")
    p_values = prompts.flatten().to_numpy(zero_copy_only=True)
    p_offsets = _offsets(prompts)
    p_len = np.diff(p_offsets)  # (P,)
    completions = batch.column("completion_token_ids").flatten()  # (B,) lists
    c_values = completions.flatten().to_numpy(zero_copy_only=True)
    c_len = np.diff(_offsets(completions))  # (B,)
    l_values = batch.column("behaviour_logprobs").flatten().flatten().to_numpy(zero_copy_only=True)

    row_group = np.repeat(np.arange(num_groups), group_size)  # (B,)
    row_p_len = p_len[row_group]
    width = int((row_p_len + c_len).max()) if rows else 0
    input_ids = np.zeros((rows, max(width, 1)), dtype=np.int64)
    logprobs = np.zeros((rows, max(width, 1)), dtype=np.float32)
    completion_mask = np.zeros((rows, max(width, 1)), dtype=bool)

    # Prompt tokens: row b, column j < p_len -> p_values[p_offsets[group(b)] + j]
    pr = np.repeat(np.arange(rows), row_p_len)
    pc_ = _within(row_p_len)
    input_ids[pr, pc_] = p_values[p_offsets[:-1][row_group][pr] + pc_]
    # Completion tokens follow the prompt, in Arrow's own order.
    cr = np.repeat(np.arange(rows), c_len)
    cc = row_p_len[cr] + _within(c_len)
    input_ids[cr, cc] = c_values
    logprobs[cr, cc] = l_values
    completion_mask[cr, cc] = True
    attention = np.arange(input_ids.shape[1])[None, :] < (row_p_len + c_len)[:, None]

    return TrainBatch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention),
        completion_mask=torch.from_numpy(completion_mask),
        behaviour_logprobs=torch.from_numpy(logprobs),
        rewards=rewards,
        reward_ok=reward_ok,
        policy_version=torch.from_numpy(batch.column("policy_version").to_numpy().copy()),
        group_ids=batch.column("group_id").to_pylist(),
    )


def _offsets(list_array: pa.ListArray) -> np.ndarray:
    """Offsets of a (possibly sliced) list array, rebased to start at 0."""
    offsets = list_array.offsets.to_numpy()
    return offsets - offsets[0]


def _within(lengths: np.ndarray) -> np.ndarray:
    """For lengths [2, 3] -> [0, 1, 0, 1, 2]: each element's index inside its run."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total) - starts
