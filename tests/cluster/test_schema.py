"""The group schema: validation errors name field and group; tensors are laid out right."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from cluster.schema import GROUP_SCHEMA, Group, SchemaError, build_batch, to_tensors, validate


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


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: group("bad", rewards=(1.0,)), "rewards"),
        (lambda: group("bad", reward_status=["ok", "crashed"]), "reward_status"),
        (lambda: group("bad", rewards=(float("nan"), 0.0)), "rewards"),
        (lambda: group("bad", completions=([1],), rewards=(1.0,)), "completion_token_ids"),
        (lambda: group("bad", rewards=(1.0, "yes")), "rewards"),
        (lambda: group("bad", finish_reasons=["stop"]), "finish_reasons"),
    ],
)
def test_bad_records_name_field_and_group(make, field):
    with pytest.raises(SchemaError) as err:
        build_batch([group("fine"), make()])
    assert f"group 'bad': field '{field}'" in str(err.value)


def test_logprob_count_mismatch_is_named():
    g = group("bad")
    g.behaviour_logprobs[0] = [-0.1]
    with pytest.raises(SchemaError, match="group 'bad': field 'behaviour_logprobs'"):
        build_batch([group("ok"), g])


def test_nan_reward_allowed_when_flagged():
    g = group("flagged", rewards=(float("nan"), 1.0), reward_status=["error", "ok"])
    t = to_tensors(build_batch([g]))
    assert t.reward_ok.tolist() == [[False, True]]


def test_foreign_schema_is_rejected():
    batch = build_batch([group()])
    wrong = batch.drop_columns(["rewards"])
    with pytest.raises(SchemaError, match="field 'rewards' is missing"):
        validate(wrong)
    cast = pa.RecordBatch.from_arrays(
        [batch.column(i) if f.name != "policy_version" else batch.column(i).cast(pa.int32())
         for i, f in enumerate(GROUP_SCHEMA)],
        names=GROUP_SCHEMA.names)
    with pytest.raises(SchemaError, match="field 'policy_version' has type int32"):
        validate(cast)


def test_mixed_group_sizes_refused_by_to_tensors():
    batch = build_batch([group(), group("g16", [[1]] * 3, [0.0] * 3)])
    with pytest.raises(SchemaError, match="group 'g16'.*single group size"):
        to_tensors(batch)
    assert isinstance(to_tensors(batch.slice(0, 1)).rewards, torch.Tensor)
