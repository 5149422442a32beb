"""The driver's ack/hold bookkeeping against a real ReplayQueue in this process (no Ray).

The scenario each test walks is the one the driver meets: groups trained but waiting for
their checkpoint, a queue that restarts on its log meanwhile, a checkpoint, a learner lost
before its checkpoint.
"""

from prometheus_client import CollectorRegistry

from cluster.contract.schema import Group, build_batch
from cluster.loop.acks import AckBook
from cluster.metrics.catalogue import MetricSet
from cluster.queue.replay_queue import ReplayQueue


def queue_on(log_dir):
    return ReplayQueue(max_staleness=100, log_dir=log_dir, metrics=MetricSet(CollectorRegistry()))


def put(queue, *ids):
    queue.put(build_batch([Group(i, f"p-{i}", [1], [[2], [3]], [[-0.1], [-0.2]], [1.0, 0.0])
                           for i in ids]))


def ids_of(delivery):
    return delivery.batch.column("group_id").to_pylist() if delivery.offsets else []


def test_held_groups_survive_a_queue_restart_and_are_acked_at_the_checkpoint(tmp_path):
    book, queue = AckBook(), queue_on(tmp_path)
    put(queue, "s0", "s1", "s2", "s3")
    first = queue.get(2, 0)
    book.trained(first.offsets)  # trained; the checkpoint comes later
    queue.close()
    queue = queue_on(tmp_path)  # restarted on its log: s0, s1 are waiting again
    assert queue.stats()["waiting_groups"] == 4
    queue.hold(book.held())
    assert queue.stats()["waiting_groups"] == 2
    second = queue.get(4, 0, hold=book.held())
    assert ids_of(second) == ["s2", "s3"]  # never s0, s1 twice
    book.trained(second.offsets)
    assert book.trained_through(queue.stats()["committed_watermark"]) == 3
    assert queue.ack(book.take()) == 4  # the checkpoint is complete
    assert book.held() == [] and queue.pending_ids() == []


def test_a_learner_lost_before_its_checkpoint_retrains_its_groups(tmp_path):
    book, queue = AckBook(), queue_on(tmp_path)
    put(queue, "s0", "s1", "s2")
    book.trained(queue.get(2, 0).offsets)
    assert queue.requeue_inflight() == 2  # the driver's recovery
    book.forget()
    assert ids_of(queue.get(3, 0, hold=book.held())) == ["s0", "s1", "s2"]


def test_without_checkpoints_each_step_acks_its_own_groups(tmp_path):
    book, queue = AckBook(), queue_on(tmp_path)
    put(queue, "s0", "s1", "s2", "s3")
    for _ in range(2):
        book.trained(queue.get(2, 0, hold=book.held()).offsets)
        assert queue.ack(book.take()) == 2
    assert queue.stats()["committed_watermark"] == 3
    assert book.trained_through(3) == 3 and book.held() == []
