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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.contract.files import atomic_write_text
from cluster.contract.schema import GROUP_SCHEMA, combine, from_ipc, to_ipc, validate
from cluster.metrics.catalogue import MetricSet
from cluster.queue.log import COMMIT_FILE, CommitState, SegmentLog


@dataclass
class _Entry:
    """One queued group: row ``index`` of the batch it arrived in (no per-row copy)."""

    offset: int
    source: pa.RecordBatch
    index: int
    nbytes: int
    policy_version: int
    put_time: float


@dataclass
class Delivery:
    """Groups handed to a consumer; ``ack(offsets)`` once they are trained."""

    offsets: List[int]
    batch: pa.RecordBatch  # rows in offset order, GROUP_SCHEMA
    staleness: List[int] = field(default_factory=list)
    stale_ids: List[str] = field(default_factory=list)  # dropped by this call as too old
    waiting: int = 0  # groups still waiting once these were taken

    def __len__(self) -> int:
        return len(self.offsets)

    def __reduce__(self):
        # Across processes the batch travels as one Arrow IPC stream (``to_ipc``).
        return (_delivery, (self.offsets, to_ipc(self.batch), self.staleness, self.stale_ids,
                            self.waiting))


def _delivery(offsets, stream, staleness, stale_ids, waiting) -> Delivery:
    return Delivery(offsets, from_ipc(stream), staleness, stale_ids, waiting)


class QueueClosed(RuntimeError):
    """The queue was closed while a producer or consumer waited on it."""


def _as_batch(data: Union[pa.RecordBatch, pa.Table, bytes, pa.Buffer]) -> pa.RecordBatch:
    if isinstance(data, (bytes, bytearray, memoryview, pa.Buffer)):
        return from_ipc(data)
    if isinstance(data, pa.Table):
        return combine(data)
    if isinstance(data, pa.RecordBatch):
        return data
    raise TypeError(f"put takes an Arrow RecordBatch, Table or IPC bytes, not {type(data)}")


def _row_sizes(batch: pa.RecordBatch) -> np.ndarray:
    """Bytes each group holds: the batch's bytes shared out in proportion to its tokens.

    Exact in total (the sizes sum to ``batch.nbytes``) and per group up to the fixed
    per-record overhead, without slicing every row to measure it.
    """
    if batch.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    prompt = pc.list_value_length(batch.column("prompt_token_ids")).to_numpy()
    completions = batch.column("completion_token_ids")
    per_completion = pc.list_value_length(completions.flatten()).to_numpy()
    starts = completions.offsets.to_numpy()[:-1] - completions.offsets[0].as_py()
    tokens = prompt + np.add.reduceat(per_completion, starts) + 1
    sizes = np.floor(batch.nbytes * tokens / tokens.sum()).astype(np.int64)
    sizes[-1] += batch.nbytes - sizes.sum()
    return sizes


def _gather(entries: List[_Entry]) -> pa.RecordBatch:
    """One batch of the entries' rows, slicing runs of consecutive rows of the same source."""
    if not entries:
        return pa.RecordBatch.from_pylist([], schema=GROUP_SCHEMA)
    pieces, run = [], [entries[0]]
    for entry in entries[1:]:
        last = run[-1]
        if entry.source is last.source and entry.index == last.index + 1:
            run.append(entry)
        else:
            pieces.append(run[0].source.slice(run[0].index, len(run)))
            run = [entry]
    pieces.append(run[0].source.slice(run[0].index, len(run)))
    return pieces[0] if len(pieces) == 1 else pa.concat_batches(pieces)


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
        for offsets, batch in log.replay():
            self._seen_ids.update(batch.column("group_id").to_pylist())
            self._next_offset = max(self._next_offset, int(offsets[-1]) + 1)
            keep = [i for i, o in enumerate(offsets) if o not in self._commit]
            if keep:
                self._admit([offsets[i] for i in keep], batch.take(pa.array(keep, pa.int64())))
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
        batch = self._fresh(validate(_as_batch(data)))
        sizes = _row_sizes(batch)
        accepted: List[int] = []
        deadline = None if timeout is None else start + timeout
        with self._lock:
            i = 0
            while i < batch.num_rows:
                take = self._wait_for_room(sizes[i:], deadline, accepted)
                chunk = batch.slice(i, take)
                offsets = list(range(self._next_offset, self._next_offset + take))
                if self._log is not None:
                    self._log.append(chunk, offsets)
                self._seen_ids.update(chunk.column("group_id").to_pylist())
                self._admit(offsets, chunk, sizes[i:i + take])
                self._next_offset += take
                accepted.extend(offsets)
                i += take
            self._lock.notify_all()
            self._update_gauges()
        self._metrics["duet_queue_put_groups"].inc(len(accepted))
        self._metrics["duet_queue_put_seconds"].observe(time.monotonic() - start)
        return accepted

    def _fresh(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch without groups this queue already accepted (producer retries)."""
        keep, seen_here = [], set()
        with self._lock:
            for i, gid in enumerate(batch.column("group_id").to_pylist()):
                if gid in self._seen_ids or gid in seen_here:
                    self._metrics["duet_queue_duplicate_groups"].inc()
                    continue
                seen_here.add(gid)
                keep.append(i)
        return batch if len(keep) == batch.num_rows else batch.take(pa.array(keep, pa.int64()))

    def _wait_for_room(self, sizes: np.ndarray, deadline: Optional[float],
                       accepted: List[int]) -> int:
        """Wait (lock held) until some groups fit; return how many of ``sizes`` to admit."""
        blocked_since = None
        while True:
            if self._closed:
                raise QueueClosed("replay queue closed while a producer waited for room")
            room_groups = self.capacity_groups - self.held_groups
            fit_bytes = int(np.searchsorted(np.cumsum(sizes),
                                            self.capacity_bytes - self._held_bytes, "right"))
            take = min(room_groups, fit_bytes, len(sizes))
            if take == 0 and self.held_groups == 0:
                # A group larger than the whole byte bound is admitted alone, into an empty
                # queue, rather than blocking forever.
                take = 1
            if take > 0:
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

    def _admit(self, offsets: List[int], batch: pa.RecordBatch,
               sizes: Optional[np.ndarray] = None) -> None:
        sizes = _row_sizes(batch) if sizes is None else sizes
        versions = batch.column("policy_version").to_pylist()
        now = time.time()
        for i, offset in enumerate(offsets):
            entry = _Entry(offset, batch, i, int(sizes[i]), versions[i], now)
            self._waiting.append(entry)
            self._held_bytes += entry.nbytes

    # ------------------------------------------------------------------ consumer side

    def get(self, max_groups: int, consumer_version: int, timeout: float = 0.0,
            ack: Optional[Iterable[int]] = None, hold: Optional[Iterable[int]] = None
            ) -> Delivery:
        """Up to ``max_groups`` fresh groups, oldest first; waits up to ``timeout`` for one.

        Groups produced more than ``max_staleness`` versions before ``consumer_version`` are
        dropped (reason "stale"), counted, and committed so no restart brings them back.
        ``ack`` commits the previous delivery in the same call (one round trip per step).
        ``hold`` names offsets the consumer already has (trained, acked later with their
        checkpoint): they stay in flight. A restarted queue has them waiting again, and
        without this would deliver them a second time (or drop them as stale).
        """
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        if ack:
            self.ack(ack)
        if hold:
            self.hold(hold)
        start = time.monotonic()
        deadline = start + timeout
        stale: List[str] = []
        with self._lock:
            while True:
                picked = self._pick(max_groups, consumer_version, stale)
                remaining = deadline - time.monotonic()
                if picked or remaining <= 0 or self._closed:
                    break
                self._lock.wait(timeout=remaining)
            self._update_gauges()
            waiting = len(self._waiting)
        staleness = [consumer_version - e.policy_version for e in picked]
        for s in staleness:
            self._metrics["duet_queue_staleness"].observe(s)
        self._metrics["duet_queue_get_seconds"].observe(time.monotonic() - start)
        return Delivery([e.offset for e in picked], _gather(picked), staleness, stale, waiting)

    def _pick(self, max_groups: int, consumer_version: int, stale_ids: List[str]
              ) -> List[_Entry]:
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
            stale_ids.extend(e.source.column("group_id")[e.index].as_py() for e in stale)
            self._finish(stale, reason="stale")
        return picked

    def hold(self, offsets: Iterable[int]) -> None:
        """Keep these delivered offsets in flight (see ``get``'s ``hold``)."""
        with self._lock:
            missing = {o for o in offsets if o not in self._inflight and o not in self._commit}
            if missing:  # only after a restart: they are waiting again
                for entry in self._take(sorted(missing)):
                    self._inflight[entry.offset] = entry
                self._update_gauges()

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
                hint = ("" if self._log is not None else
                        "; a queue without a log (queue.durable=false) that crashed and was "
                        "restarted has lost every group it held: set queue.durable=true for "
                        "runs that must survive a queue crash")
                raise KeyError(f"ack of offsets this queue never issued: {unknown[:10]}{hint}")
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

    def pending_ids(self) -> List[str]:
        """Group ids waiting or in flight (not yet acked or dropped), oldest first."""
        with self._lock:
            entries = sorted(list(self._waiting) + list(self._inflight.values()),
                             key=lambda e: e.offset)
            return [e.source.column("group_id")[e.index].as_py() for e in entries]

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
