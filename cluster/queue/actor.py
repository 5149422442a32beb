"""``ReplayQueueActor``: the replay queue as a restartable Ray actor.

A thin wrapper: all behaviour lives in ``ReplayQueue``. The actor is threaded so a producer
blocked on a full queue does not stop the learner from draining it, and it restarts on
failure; the restarted instance re-opens the same log directory and so redelivers every
un-acked group. Producers' calls are retried by Ray after a restart, and the queue skips a
group id it has already logged, so a retried put never duplicates a group.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import ray

from cluster.contract.config import QueueConfig
from cluster.metrics.catalogue import MetricSet, serve
from cluster.queue.replay_queue import Delivery, ReplayQueue


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=16, num_cpus=0)
class ReplayQueueActor:
    """Ray actor holding one ``ReplayQueue``; see that class for the semantics."""

    def __init__(self, config: QueueConfig, log_dir: Optional[str],
                 metrics_host: str = "127.0.0.1", metrics_port: int = 0) -> None:
        self._queue = ReplayQueue(
            capacity_groups=config.capacity_groups,
            capacity_bytes=config.capacity_bytes,
            max_staleness=config.max_staleness,
            log_dir=log_dir if config.durable else None,
            metrics=MetricSet(),
        )
        self._metrics_port = serve(metrics_port, metrics_host) if metrics_port else None

    def put(self, data, timeout: Optional[float] = None) -> List[int]:
        return self._queue.put(data, timeout=timeout)

    def get(self, max_groups: int, consumer_version: int, timeout: float = 0.0,
            ack: Optional[List[int]] = None, hold: Optional[List[int]] = None) -> Delivery:
        return self._queue.get(max_groups, consumer_version, timeout=timeout, ack=ack,
                               hold=hold)

    def hold(self, offsets: List[int]) -> None:
        self._queue.hold(offsets)

    def ack(self, offsets: List[int]) -> int:
        return self._queue.ack(offsets)

    def drop(self, offsets: List[int], reason: str) -> int:
        return self._queue.drop(offsets, reason)

    def requeue_inflight(self) -> int:
        return self._queue.requeue_inflight()

    def pending_ids(self) -> List[str]:
        return self._queue.pending_ids()

    def stats(self) -> Dict[str, object]:
        return self._queue.stats()

    def export_parquet(self, path: str) -> int:
        return self._queue.export_parquet(path)

    def pid(self) -> int:
        return os.getpid()

    def metrics_port(self) -> Optional[int]:
        return self._metrics_port
