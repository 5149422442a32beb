"""ReplayQueue without Ray: round trips, backpressure, staleness, durability, exactly-once."""

import pickle
import threading
import time

import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cluster.contract.schema import Group, build_batch, to_ipc
from cluster.metrics.catalogue import MetricSet
from cluster.queue.log import COMMIT_FILE
from cluster.queue.replay_queue import ReplayQueue
from learner.batch import to_tensors


def make_queue(**kw):
    kw.setdefault("metrics", MetricSet(CollectorRegistry()))
    return ReplayQueue(**kw)


def groups(n, size=2, version=0, prefix="g", length=4):
    return [
        Group(f"{prefix}{i}", f"p{i}", [1, 2], [[3] * length for _ in range(size)],
              [[-0.1] * length for _ in range(size)], [float(i % 2)] + [0.0] * (size - 1),
              policy_version=version)
        for i in range(n)
    ]


def metric(queue, name, **labels):
    return queue._metrics.registry.get_sample_value(name, labels or None)


@st.composite
def group_sets(draw):
    size = draw(st.sampled_from([2, 16]))
    count = draw(st.integers(1, 6))
    out = []
    for i in range(count):
        lengths = draw(st.lists(st.integers(0, 12), min_size=size, max_size=size))
        prompt = draw(st.lists(st.integers(0, 50_000), min_size=1, max_size=8))
        comps = [draw(st.lists(st.integers(0, 50_000), min_size=n, max_size=n)) for n in lengths]
        logps = [draw(st.lists(st.floats(-30, 0, width=32), min_size=n, max_size=n))
                 for n in lengths]
        rewards = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=size, max_size=size))
        out.append(Group(f"g{i}", f"p{i}", prompt, comps, logps, rewards,
                         policy_version=draw(st.integers(0, 3))))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(group_sets())
def test_round_trip_schema_queue_tensors(gs):
    """Groups -> Arrow -> queue -> tensors, with both process crossings as they happen:
    the producer's batch as an IPC stream, the delivery pickled (as Ray sends it)."""
    queue = make_queue(max_staleness=10)
    queue.put(to_ipc(build_batch(gs)))
    sent = queue.get(max_groups=len(gs), consumer_version=3)
    delivery = pickle.loads(pickle.dumps(sent))
    assert (delivery.offsets, delivery.staleness, delivery.waiting) == (
        sent.offsets, sent.staleness, sent.waiting)
    assert delivery.batch.equals(sent.batch)
    assert len(delivery) == len(gs)
    t = to_tensors(delivery.batch)
    size = len(gs[0].rewards)
    assert t.rewards.shape == (len(gs), size)
    assert t.rewards.tolist() == [g.rewards for g in gs]
    assert t.group_ids == [g.group_id for g in gs]
    for p, g in enumerate(gs):
        for j, (tokens, logps) in enumerate(zip(g.completion_token_ids, g.behaviour_logprobs)):
            row = p * size + j
            plen = len(g.prompt_token_ids)
            assert t.input_ids[row, :plen].tolist() == g.prompt_token_ids
            assert t.input_ids[row][t.completion_mask[row]].tolist() == tokens
            got = t.behaviour_logprobs[row][t.completion_mask[row]]
            assert torch.equal(got, torch.tensor(logps, dtype=torch.float32))
            assert int(t.attention_mask[row].sum()) == plen + len(tokens)


def test_backpressure_blocks_and_resumes():
    queue = make_queue(capacity_groups=4, capacity_bytes=10**9)
    queue.put(build_batch(groups(4, prefix="a")))
    done = threading.Event()

    def producer():
        queue.put(build_batch(groups(3, prefix="b")))
        done.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    assert not done.wait(0.5)  # full: the producer waits, nothing is dropped
    assert queue.stats()["waiting_groups"] == 4
    delivery = queue.get(max_groups=2, consumer_version=0)
    assert not done.wait(0.3)  # in-flight groups still hold their room until acked
    queue.ack(delivery.offsets)  # room for two of the three
    time.sleep(0.2)
    assert not done.is_set() and queue.stats()["waiting_groups"] == 4
    queue.ack(queue.get(max_groups=2, consumer_version=0).offsets)
    thread.join(timeout=10)
    assert done.is_set()
    assert metric(queue, "duet_queue_blocked_seconds_total") > 0
    assert queue.get(10, 0).batch.column("group_id").to_pylist() == ["b0", "b1", "b2"]


def test_byte_bound_holds():
    one = build_batch(groups(1)).nbytes
    queue = make_queue(capacity_groups=1000, capacity_bytes=int(one * 3.5))
    with pytest.raises(TimeoutError, match="3 of this put's groups were accepted") as err:
        queue.put(build_batch(groups(5)), timeout=0.2)
    assert err.value.accepted == [0, 1, 2]
    assert queue.stats()["held_bytes"] <= one * 3.5


def test_put_timeout_then_retry_loses_nothing():
    queue = make_queue(capacity_groups=2)
    batch = build_batch(groups(3))
    with pytest.raises(TimeoutError):
        queue.put(batch, timeout=0.1)
    queue.ack(queue.get(2, 0).offsets)
    assert queue.put(batch) == [2]  # the two accepted groups are recognised, one is new
    assert metric(queue, "duet_queue_duplicate_groups_total") == 2


def test_staleness_bound_drops_and_counts():
    queue = make_queue(max_staleness=1)
    queue.put(build_batch(groups(3, version=0, prefix="old")))
    queue.put(build_batch(groups(2, version=2, prefix="new")))
    delivery = queue.get(max_groups=10, consumer_version=2)
    assert delivery.batch.column("group_id").to_pylist() == ["new0", "new1"]
    assert delivery.staleness == [0, 0]
    assert queue.stats()["dropped"] == {"stale": 3}
    assert metric(queue, "duet_queue_dropped_groups_total", reason="stale") == 3
    queue.put(build_batch(groups(1, version=1, prefix="edge")))
    assert len(queue.get(10, consumer_version=2)) == 1  # exactly at the bound is kept


def test_a_delivery_counts_the_groups_left_waiting():
    """The driver plans its next launch from this count instead of asking for the stats."""
    queue = make_queue(max_staleness=0)
    queue.put(build_batch(groups(2, version=0, prefix="old")))
    queue.put(build_batch(groups(5, version=1, prefix="new")))
    first = queue.get(max_groups=3, consumer_version=1)  # the two stale ones are dropped
    assert len(first) == 3 and first.waiting == 2 == queue.stats()["waiting_groups"]
    last = queue.get(max_groups=3, consumer_version=1)
    assert len(last) == 2 and last.waiting == 0 == queue.stats()["waiting_groups"]


def test_get_waits_for_a_producer():
    queue = make_queue()
    threading.Timer(0.2, lambda: queue.put(build_batch(groups(1)))).start()
    assert len(queue.get(4, 0, timeout=10)) == 1
    assert len(queue.get(4, 0, timeout=0.05)) == 0


def test_requeue_inflight_redelivers_in_order():
    queue = make_queue()
    queue.put(build_batch(groups(4)))
    queue.get(2, 0)
    assert queue.requeue_inflight() == 2
    again = queue.get(4, 0)
    assert again.offsets == [0, 1, 2, 3]


def test_ack_errors_and_idempotence():
    queue = make_queue()
    queue.put(build_batch(groups(2)))
    d = queue.get(2, 0)
    assert queue.ack(d.offsets) == 2
    assert queue.ack(d.offsets) == 0
    with pytest.raises(KeyError, match="never issued"):
        queue.ack([99])


def test_restart_redelivers_unacked_only(tmp_path):
    queue = make_queue(log_dir=tmp_path)
    queue.put(build_batch(groups(6)))
    acked = queue.get(2, 0)
    queue.ack(acked.offsets)
    queue.get(2, 0)  # delivered, never acked: the consumer died with them
    del queue  # no close(): as if the process were killed

    again = make_queue(log_dir=tmp_path)
    d = again.get(10, 0)
    assert d.batch.column("group_id").to_pylist() == ["g2", "g3", "g4", "g5"]
    assert again.put(build_batch(groups(6))) == []  # producer retries are recognised
    again.ack(d.offsets)
    assert again.stats()["committed_watermark"] == 5


def test_held_offsets_survive_a_restart_in_flight(tmp_path):
    queue = make_queue(log_dir=tmp_path, max_staleness=0)
    queue.put(build_batch(groups(4)))
    trained = queue.get(2, 0)  # trained; acked only with the next checkpoint
    del queue

    again = make_queue(log_dir=tmp_path, max_staleness=0)
    # Without hold, g0/g1 would be delivered (and trained) a second time, or dropped as
    # stale once the consumer's version moved on, though they are in the learner's weights.
    d = again.get(10, 0, hold=trained.offsets)
    assert d.batch.column("group_id").to_pylist() == ["g2", "g3"]
    assert again.stats()["inflight_groups"] == 4 and again.stats()["dropped"] == {}
    assert again.requeue_inflight() == 4  # a learner crash still gets them back
    again.ack(trained.offsets)
    assert again.get(10, 0).batch.column("group_id").to_pylist() == ["g2", "g3"]


def test_torn_segment_tail_is_ignored(tmp_path):
    queue = make_queue(log_dir=tmp_path)
    queue.put(build_batch(groups(3)))
    queue.close()
    segment = sorted((tmp_path / "segments").glob("seg-*.arrow"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b"\xff\xff\xff\xff\x10\x00\x00\x00torn")
    again = make_queue(log_dir=tmp_path)
    assert again.get(10, 0).offsets == [0, 1, 2]


def test_commit_file_is_atomic(tmp_path):
    queue = make_queue(log_dir=tmp_path)
    queue.put(build_batch(groups(2)))
    queue.ack(queue.get(2, 0).offsets)
    assert not list(tmp_path.glob(".*.tmp"))
    assert '"watermark": 1' in (tmp_path / COMMIT_FILE).read_text()


def test_parquet_export(tmp_path):
    queue = make_queue(log_dir=tmp_path / "q")
    queue.put(build_batch(groups(3)))
    queue.put(build_batch(groups(2, prefix="h")))
    rows = queue.export_parquet(tmp_path / "samples.parquet")
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "samples.parquet")
    assert rows == 5 and table.column("queue_offset").to_pylist() == [0, 1, 2, 3, 4]
    queue.put(build_batch(groups(1, prefix="k")))  # the log keeps working after export


def test_ipc_bytes_accepted():
    batch = build_batch(groups(2))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    queue = make_queue()
    assert queue.put(sink.getvalue().to_pybytes()) == [0, 1]


def _rss_mib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024


def test_memory_stays_within_byte_bound():
    """Pump ~1 GiB through a 32 MiB queue: resident memory grows by far less than that."""
    bound = 32 * 2**20
    queue = make_queue(capacity_groups=10**6, capacity_bytes=bound)
    batch = build_batch(groups(8, size=16, length=512))  # ~0.6 MiB of Arrow per put
    baseline = _rss_mib()
    peak = baseline
    stop = threading.Event()

    def consumer():
        while not stop.is_set() or queue.stats()["waiting_groups"]:
            d = queue.get(64, 0, timeout=0.05)
            if d.offsets:
                queue.ack(d.offsets)

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    pumped = 0
    for i in range(2100):
        renamed = batch.set_column(0, "group_id",
                                   pa.array([f"r{i}-{j}" for j in range(8)], pa.string()))
        queue.put(renamed)
        pumped += renamed.nbytes
        assert queue.stats()["held_bytes"] <= bound
        if i % 50 == 0:
            peak = max(peak, _rss_mib())
    stop.set()
    thread.join()
    assert pumped > 2**30
    # generous margin: the bound plus allocator slack, far below what was pumped
    assert peak - baseline < 4 * bound / 2**20 + 200
