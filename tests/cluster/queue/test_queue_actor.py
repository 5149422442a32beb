"""ReplayQueueActor on a real Ray instance: a SIGKILLed queue loses and repeats nothing."""

import os
import random
import signal
import threading
import time

import pytest

from cluster.contract.config import QueueConfig
from cluster.contract.schema import Group, build_batch

pytestmark = pytest.mark.slow


def batch(prefix, n):
    return build_batch([
        Group(f"{prefix}-{i}", f"{prefix}-{i}", [1], [[2, 3], [4]], [[-0.1, -0.2], [-0.3]],
              [1.0, 0.0]) for i in range(n)])


def test_sigkill_mid_stream_redelivers_unacked_exactly_once(ray_cluster, tmp_path):
    ray = ray_cluster
    from cluster.queue.actor import ReplayQueueActor

    queue = ReplayQueueActor.remote(QueueConfig(capacity_groups=64, max_staleness=100),
                                    str(tmp_path / "queue"))
    produced = [f"b{b}-{i}" for b in range(40) for i in range(4)]

    def producer():
        for b in range(40):
            ray.get(queue.put.remote(batch(f"b{b}", 4)))

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()

    rng = random.Random(7)
    kill_after = rng.randint(5, 15)  # gets before the kill
    acked, delivered_at_kill, redelivered = [], set(), []
    killed, gets = False, 0
    deadline = time.time() + 120
    while len(acked) < len(produced) and time.time() < deadline:
        delivery = ray.get(queue.get.remote(6, 0, 1.0))
        gets += 1
        ids = delivery.batch.column("group_id").to_pylist()
        assert not set(ids) & set(acked), "an acked group was delivered again"
        if killed:
            redelivered.extend(i for i in ids if i in delivered_at_kill)
        if not killed and gets == kill_after and ids:
            # Deliver, then kill before acking: these groups are in flight at the kill.
            delivered_at_kill = set(ids)
            os.kill(ray.get(queue.pid.remote()), signal.SIGKILL)
            killed = True
            continue
        ray.get(queue.ack.remote(delivery.offsets))
        acked.extend(ids)
    thread.join(timeout=60)

    assert killed
    assert sorted(acked) == sorted(produced)  # every group, once
    assert len(acked) == len(set(acked))
    assert sorted(redelivered) == sorted(delivered_at_kill)  # un-acked: exactly once more
    stats = ray.get(queue.stats.remote())
    assert stats["committed_watermark"] == len(produced) - 1
    assert stats["waiting_groups"] == 0 and stats["inflight_groups"] == 0
    ray.kill(queue)
