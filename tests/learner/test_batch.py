"""The learner's tensor view of group records: layout, zero-copy rewards, slices, one G per batch."""

import numpy as np
import pytest
import torch

from cluster.contract.schema import Group, SchemaError, build_batch
from learner.batch import to_tensors


def group(gid="g0", completions=([4, 5], []), rewards=(1.0, 0.0), **kw):
    completions = [list(c) for c in completions]
    logps = [[-0.5] * len(c) for c in completions]
    return Group(gid, f"p-{gid}", kw.pop("prompt", [1, 2, 3]), completions, logps,
                 list(rewards), **kw)


def test_tensors_layout():
    batch = build_batch([group(), group("g1", ([8], [9, 10, 11]), (0.0, 0.0), prompt=[7])])
    t = to_tensors(batch)
    assert t.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0],
                                     [7, 8, 0, 0, 0], [7, 9, 10, 11, 0]]
    assert t.completion_mask.sum(1).tolist() == [2, 0, 1, 3]
    assert t.attention_mask.sum(1).tolist() == [5, 3, 2, 4]
    assert t.rewards.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert (t.behaviour_logprobs[t.completion_mask] == -0.5).all()
    assert (t.behaviour_logprobs[~t.completion_mask] == 0).all()
    assert t.group_ids == ["g0", "g1"]


def test_rewards_are_a_zero_copy_view():
    batch = build_batch([group(), group("g1")])
    t = to_tensors(batch)
    arrow_values = batch.column("rewards").flatten().to_numpy(zero_copy_only=True)
    assert np.shares_memory(t.rewards.numpy(), arrow_values)


def test_sliced_batches_convert_correctly():
    batch = build_batch([group(f"g{i}", ([i] * i, [i + 1]), prompt=[i]) for i in range(1, 5)])
    t = to_tensors(batch.slice(2, 2))
    assert t.group_ids == ["g3", "g4"]
    assert t.input_ids[0, :4].tolist() == [3, 3, 3, 3]


def test_mixed_group_sizes_refused_by_to_tensors():
    batch = build_batch([group(), group("g16", [[1]] * 3, [0.0] * 3)])
    with pytest.raises(SchemaError, match="group 'g16'.*single group size"):
        to_tensors(batch)
    assert isinstance(to_tensors(batch.slice(0, 1)).rewards, torch.Tensor)
