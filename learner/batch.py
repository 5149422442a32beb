"""The learner's tensor view of a group record batch: padded (B, T) tensors and rewards (P, G).

Copies, stated plainly: ``rewards`` (P, G) is a zero-copy view of the Arrow values buffer
(float32, no nulls, every group the same G). The padded (B, T) tensors need one scatter each,
because Arrow stores ragged lists back to back and padding has to be inserted; the flat
completion tokens and logprobs are read zero-copy and written once into the padded tensors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cluster.contract.schema import SchemaError


@dataclass
class TrainBatch:
    """Padded tensors for the learner. B = P x G rows, T = longest prompt + completion."""

    input_ids: torch.Tensor  # (B, T) int64, prompt then completion, right-padded with 0
    attention_mask: torch.Tensor  # (B, T) bool
    completion_mask: torch.Tensor  # (B, T) bool, True on completion tokens
    behaviour_logprobs: torch.Tensor  # (B, T) float32, logprob of input_ids[b, t]; 0 elsewhere
    rewards: torch.Tensor  # (P, G) float32
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
