"""The group schema: validation errors name the field and the group."""

import pyarrow as pa
import pytest

from cluster.contract.schema import (
    GROUP_SCHEMA,
    Group,
    SchemaError,
    build_batch,
    from_ipc,
    to_ipc,
    validate,
)


def group(gid="g0", completions=([4, 5], []), rewards=(1.0, 0.0), **kw):
    completions = [list(c) for c in completions]
    logps = [[-0.5] * len(c) for c in completions]
    return Group(gid, f"p-{gid}", kw.pop("prompt", [1, 2, 3]), completions, logps,
                 list(rewards), **kw)


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
    batch = build_batch([g])  # a NaN reward is valid where the sample is flagged
    assert batch.column("reward_status")[0].as_py() == ["error", "ok"]


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


def test_a_batch_crosses_as_one_ipc_stream_and_comes_back_equal():
    batch = build_batch([group("a"), group("b", completions=([7], [8, 9]))])
    stream = to_ipc(batch)
    assert isinstance(stream, bytes)
    assert from_ipc(stream).equals(batch)
    empty = build_batch([])
    assert from_ipc(to_ipc(empty)).equals(empty) and from_ipc(to_ipc(empty)).num_rows == 0
    # Several batches in one stream come back as one.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, GROUP_SCHEMA) as writer:
        writer.write_batch(batch.slice(0, 1))
        writer.write_batch(batch.slice(1))
    assert from_ipc(sink.getvalue()).equals(batch)
