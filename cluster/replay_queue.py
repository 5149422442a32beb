"""The replay queue between rollout workers and the learner: Arrow groups, bounded, exactly-once.

Each group is one Arrow record with a queue offset. ``put`` blocks while the queue is full
(groups *and* bytes are bounded), so producers slow down instead of anything being dropped.
``get`` hands out groups no older than ``max_staleness`` policy versions; older ones are
dropped and counted under reason "stale". Delivered groups stay *in flight* until ``ack``:
if the consumer dies, ``requeue_inflight`` gives them back, and if the queue itself dies, a
new queue on the same log directory redelivers every un-acked group and no acked one.

``ReplayQueue`` is a plain thread-safe class; ``ReplayQueueActor`` (in ``queue_actor.py``) is
the thin Ray wrapper the driver starts.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, Iterable, List, Optional, Union

import pyarrow as pa

from cluster.metrics import MetricSet
from cluster.queue_log import COMMIT_FILE, CommitState, SegmentLog, atomic_write_text
from cluster.schema import GROUP_SCHEMA, validate


@dataclass
class _Entry:
    offset: int
    batch: pa.RecordBatch  # one row
    nbytes: int
    policy_version: int
    put_time: float


@dataclass
class Delivery:
    """Groups handed to a consumer; ``ack(offsets)`` once they are trained."""

    offsets: List[int]
    batch: pa.RecordBatch  # rows in offset order, GROUP_SCHEMA
    staleness: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)


class QueueClosed(RuntimeError):
    """The queue was closed while a producer or consumer waited on it."""


def _as_batch(data: Union[pa.RecordBatch, pa.Table, bytes, pa.Buffer]) -> pa.RecordBatch:
    if isinstance(data, (bytes, bytearray, memoryview, pa.Buffer)):
        table = pa.ipc.open_stream(data).read_all()
        return _combine(table)
    if isinstance(data, pa.Table):
        return _combine(data)
    if isinstance(data, pa.RecordBatch):
        return data
    raise TypeError(f"put takes an Arrow RecordBatch, Table or IPC bytes, not {type(data)}")


def _combine(table: pa.Table) -> pa.RecordBatch:
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return pa.concat_batches(batches)


class ReplayQueue:
    """Thread-safe bounded queue of group records with staleness bound and exactly-once acks."""

    def __init__(
        self,
        capacity_groups: int = 4096,
        capacity_bytes: int = 256 * 2**20,
        max_staleness: int = 1,
        log_dir: Optional[Union[str, Path]] = None,
        metrics: Optional[MetricSet] = None,
        segment_bytes: int = 64 * 2**20,
    ) -> None:
        self.capacity_groups = capacity_groups
        self.capacity_bytes = capacity_bytes
        self.max_staleness = max_staleness
        self._metrics = metrics or MetricSet()
        self._lock = threading.Condition()
        self._waiting: Deque[_Entry] = deque()
        self._inflight: Dict[int, _Entry] = {}
        self._held_bytes = 0
        self._next_offset = 0
        self._seen_ids: set = set()
        self._closed = False
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._log: Optional[SegmentLog] = None
        self._commit = CommitState()
        if self._log_dir is not None:
            self._recover(segment_bytes)
        self._update_gauges()

    # ------------------------------------------------------------------ recovery

    def _recover(self, segment_bytes: int) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._commit = CommitState.load(self._log_dir / COMMIT_FILE)
        log = SegmentLog(self._log_dir / "segments", segment_bytes)
        for offset, row in log.replay():
            self._seen_ids.add(row.column("group_id")[0].as_py())
            self._next_offset = max(self._next_offset, offset + 1)
            if offset not in self._commit:
                self._admit(offset, row)
        self._log = log

    # ------------------------------------------------------------------ producer side

    def put(self, data: Union[pa.RecordBatch, pa.Table, bytes], timeout: Optional[float] = None
            ) -> List[int]:
        """Add groups; blocks while the queue is full. Returns the offsets given to new groups.

        A group whose id the queue has already accepted (a producer retrying after a crash)
        is skipped and counted, so a retry never duplicates a group.

        Raises:
            SchemaError: a record does not match the group contract (nothing is added).
            TimeoutError: ``timeout`` passed while full; the message says how many groups
                of this call were accepted before it (their offsets are in ``.accepted``).
        """
        start = time.monotonic()
        batch = validate(_as_batch(data))
        rows = self._fresh_rows(batch)
        accepted: List[int] = []
        deadline = None if timeout is None else start + timeout
        with self._lock:
            i = 0
            while i < len(rows):
                take = self._wait_for_room(rows, i, deadline, accepted)
                chunk = rows[i:i + take]
                offsets = list(range(self._next_offset, self._next_offset + take))
                if self._log is not None:
                    self._log.append(pa.concat_batches(chunk), offsets)
                for offset, row in zip(offsets, chunk):
                    self._seen_ids.add(row.column("group_id")[0].as_py())
                    self._admit(offset, row)
                self._next_offset += take
                accepted.extend(offsets)
                i += take
            self._lock.notify_all()
            self._update_gauges()
        self._metrics["duet_queue_put_groups"].inc(len(accepted))
        self._metrics["duet_queue_put_seconds"].observe(time.monotonic() - start)
        return accepted

    def _fresh_rows(self, batch: pa.RecordBatch) -> List[pa.RecordBatch]:
        rows, seen_here = [], set()
        ids = batch.column("group_id").to_pylist()
        with self._lock:
            for i, gid in enumerate(ids):
                if gid in self._seen_ids or gid in seen_here:
                    self._metrics["duet_queue_duplicate_groups"].inc()
                    continue
                seen_here.add(gid)
                rows.append(batch.slice(i, 1))
        return rows

    def _wait_for_room(self, rows: List[pa.RecordBatch], start: int, deadline: Optional[float],
                       accepted: List[int]) -> int:
        """Wait (lock held) until some rows fit; return how many of rows[start:] to admit."""
        blocked_since = None
        while True:
            if self._closed:
                raise QueueClosed("replay queue closed while a producer waited for room")
            take, groups, held = 0, self.held_groups, self._held_bytes
            for row in rows[start:]:
                size = row.nbytes
                # A group larger than the whole byte bound is admitted alone, into an empty
                # queue, rather than blocking forever.
                fits = groups + 1 <= self.capacity_groups and (
                    held + size <= self.capacity_bytes or groups == 0)
                if not fits:
                    break
                take, groups, held = take + 1, groups + 1, held + size
            if take:
                if blocked_since is not None:
                    self._metrics["duet_queue_blocked_seconds"].inc(
                        time.monotonic() - blocked_since)
                return take
            blocked_since = blocked_since or time.monotonic()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                err = TimeoutError(
                    f"replay queue full ({self.held_groups} groups, {self._held_bytes} bytes) "
                    f"for the whole timeout; {len(accepted)} of this put's groups were accepted")
                err.accepted = list(accepted)  # type: ignore[attr-defined]
                raise err
            self._lock.wait(timeout=remaining)

    def _admit(self, offset: int, row: pa.RecordBatch) -> None:
        entry = _Entry(offset, row, row.nbytes, row.column("policy_version")[0].as_py(),
                       time.time())
        self._waiting.append(entry)
        self._held_bytes += entry.nbytes

    # ------------------------------------------------------------------ consumer side

    def get(self, max_groups: int, consumer_version: int, timeout: float = 0.0) -> Delivery:
        """Up to ``max_groups`` fresh groups, oldest first; waits up to ``timeout`` for one.

        Groups produced more than ``max_staleness`` versions before ``consumer_version`` are
        dropped (reason "stale"), counted, and committed so no restart brings them back.
        """
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        start = time.monotonic()
        deadline = start + timeout
        with self._lock:
            while True:
                picked = self._pick(max_groups, consumer_version)
                remaining = deadline - time.monotonic()
                if picked or remaining <= 0 or self._closed:
                    break
                self._lock.wait(timeout=remaining)
            self._update_gauges()
        staleness = [consumer_version - e.policy_version for e in picked]
        for s in staleness:
            self._metrics["duet_queue_staleness"].observe(s)
        self._metrics["duet_queue_get_seconds"].observe(time.monotonic() - start)
        batch = (pa.concat_batches([e.batch for e in picked]) if picked
                 else pa.RecordBatch.from_pylist([], schema=GROUP_SCHEMA))
        return Delivery([e.offset for e in picked], batch, staleness)

    def _pick(self, max_groups: int, consumer_version: int) -> List[_Entry]:
        picked: List[_Entry] = []
        stale: List[_Entry] = []
        while self._waiting and len(picked) < max_groups:
            entry = self._waiting.popleft()
            if consumer_version - entry.policy_version > self.max_staleness:
                stale.append(entry)
                continue
            self._inflight[entry.offset] = entry
            picked.append(entry)
        if stale:
            self._finish(stale, reason="stale")
        return picked

    def ack(self, offsets: Iterable[int]) -> int:
        """Commit delivered groups as trained; returns how many were newly acked.

        Idempotent: acking twice is a no-op, and an ack retried against a restarted queue
        (where the group is waiting again, not in flight) still commits it. Acking an offset
        the queue never issued is an error.
        """
        offsets = list(offsets)
        with self._lock:
            unknown = [o for o in offsets if not 0 <= o < self._next_offset]
            if unknown:
                raise KeyError(f"ack of offsets this queue never issued: {unknown[:10]}")
            done = self._take(offsets)
            self._finish(done, reason=None)
            self._update_gauges()
        self._metrics["duet_queue_acked_groups"].inc(len(done))
        return len(done)

    def _take(self, offsets: List[int]) -> List[_Entry]:
        """Remove the given offsets from in-flight or waiting (lock held); return the entries."""
        wanted = {o for o in offsets if o not in self._commit}
        taken = [self._inflight.pop(o) for o in list(wanted) if o in self._inflight]
        left = wanted - {e.offset for e in taken}
        if left:
            keep: Deque[_Entry] = deque()
            for entry in self._waiting:
                (taken if entry.offset in left else keep).append(entry)
            self._waiting = keep
        return taken

    def drop(self, offsets: Iterable[int], reason: str) -> int:
        """Commit delivered groups as dropped for ``reason`` (e.g. 'tie', 'too_long')."""
        with self._lock:
            done = self._take(list(offsets))
            self._finish(done, reason=reason)
            self._update_gauges()
        return len(done)

    def requeue_inflight(self) -> int:
        """Return every delivered, un-acked group to the front (the consumer restarted)."""
        with self._lock:
            entries = sorted(self._inflight.values(), key=lambda e: e.offset)
            self._inflight.clear()
            self._waiting.extendleft(reversed(entries))
            self._lock.notify_all()
            self._update_gauges()
        return len(entries)

    def _finish(self, entries: List[_Entry], reason: Optional[str]) -> None:
        """Release entries (lock held) and commit them durably as acked or dropped."""
        if not entries:
            return
        for entry in entries:
            self._held_bytes -= entry.nbytes
            self._commit.add(entry.offset)
        if reason is not None:
            self._commit.dropped[reason] = self._commit.dropped.get(reason, 0) + len(entries)
            self._metrics["duet_queue_dropped_groups"].labels(reason=reason).inc(len(entries))
        if self._log_dir is not None:
            atomic_write_text(self._log_dir / COMMIT_FILE, self._commit.to_json())
        self._lock.notify_all()

    # ------------------------------------------------------------------ state

    @property
    def held_groups(self) -> int:
        return len(self._waiting) + len(self._inflight)

    def stats(self) -> Dict[str, object]:
        """Depth, bytes, in-flight count, next offset and drop counts by reason."""
        with self._lock:
            return {
                "waiting_groups": len(self._waiting),
                "inflight_groups": len(self._inflight),
                "held_bytes": self._held_bytes,
                "next_offset": self._next_offset,
                "committed_watermark": self._commit.watermark,
                "dropped": dict(self._commit.dropped),
            }

    def _update_gauges(self) -> None:
        self._metrics["duet_queue_depth_groups"].set(len(self._waiting))
        self._metrics["duet_queue_depth_bytes"].set(self._held_bytes)
        self._metrics["duet_queue_inflight_groups"].set(len(self._inflight))
        age = time.time() - self._waiting[0].put_time if self._waiting else 0.0
        self._metrics["duet_queue_oldest_age_seconds"].set(age)

    def export_parquet(self, path: Union[str, Path]) -> int:
        """Write every group this queue ever accepted to Parquet; returns the row count."""
        if self._log is None:
            raise RuntimeError("Parquet export needs a durable queue (log_dir)")
        with self._lock:
            self._log.close()  # seal the open segment so its footer-less stream is complete
            return self._log.export_parquet(Path(path))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._log is not None:
                self._log.close()
            self._lock.notify_all()
