"""Durable state of the replay queue: an append-only Arrow IPC segment log and a commit file.

Every accepted group is appended to the current segment (``seg-NNNNNN.arrow``, an Arrow IPC
stream) together with its queue offset before ``put`` returns. Which offsets are finished
(acked by the learner, or dropped for a named reason) lives in ``committed.json``, rewritten
atomically (temp file, fsync, rename) on every change, so a crash leaves either the old or the
new file, never half of one. A torn record at the end of a segment (a crash mid-append) is
ignored on replay: its ``put`` never returned, so the producer still holds that group and its
retry is accepted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.contract.schema import GROUP_SCHEMA

OFFSET_FIELD = "queue_offset"
LOG_SCHEMA = GROUP_SCHEMA.append(pa.field(OFFSET_FIELD, pa.int64(), nullable=False))
COMMIT_FILE = "committed.json"


class CommitState:
    """Finished offsets, compacted as a watermark (all offsets <= it) plus a sparse set."""

    def __init__(self, watermark: int = -1, above: Optional[Set[int]] = None,
                 dropped: Optional[Dict[str, int]] = None) -> None:
        self.watermark = watermark
        self.above: Set[int] = set(above or ())
        self.dropped: Dict[str, int] = dict(dropped or {})

    def __contains__(self, offset: int) -> bool:
        return offset <= self.watermark or offset in self.above

    def add(self, offset: int) -> None:
        if offset in self:
            return
        self.above.add(offset)
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)

    def to_json(self) -> str:
        return json.dumps({"watermark": self.watermark, "above": sorted(self.above),
                           "dropped": self.dropped}, indent=1)

    @classmethod
    def load(cls, path: Path) -> "CommitState":
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(int(data["watermark"]), set(map(int, data["above"])),
                       {str(k): int(v) for k, v in data.get("dropped", {}).items()})
        except (ValueError, KeyError, TypeError) as err:
            raise RuntimeError(
                f"{path}: unreadable queue commit file ({err}); it is written atomically, so "
                "this file was edited or damaged by hand: restore it or remove the queue "
                "directory to start the queue empty") from None


class SegmentLog:
    """Append-only Arrow IPC segments holding every accepted group with its offset."""

    def __init__(self, directory: Path, segment_bytes: int = 64 * 2**20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._sink: Optional[pa.OSFile] = None
        self._writer: Optional[pa.ipc.RecordBatchStreamWriter] = None
        self._index = len(self.segments())

    def segments(self) -> List[Path]:
        return sorted(self.directory.glob("seg-*.arrow"))

    def append(self, batch: pa.RecordBatch, offsets: List[int]) -> None:
        """Append groups with their offsets; returns once the bytes reached the OS."""
        if self._writer is None or self._sink.tell() >= self.segment_bytes:
            self._roll()
        logged = batch.append_column(pa.field(OFFSET_FIELD, pa.int64(), nullable=False),
                                     pa.array(offsets, type=pa.int64()))
        self._writer.write_batch(logged)
        self._sink.flush()

    def _roll(self) -> None:
        self.close()
        path = self.directory / f"seg-{self._index:06d}.arrow"
        self._index += 1
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, LOG_SCHEMA)

    def replay(self) -> Iterator[Tuple[List[int], pa.RecordBatch]]:
        """Every logged batch as (offsets, batch in GROUP_SCHEMA), in log order."""
        for path in self.segments():
            for batch in read_segment(path):
                yield (batch.column(OFFSET_FIELD).to_pylist(),
                       batch.drop_columns([OFFSET_FIELD]))

    def export_parquet(self, path: Path) -> int:
        """Write every logged group (with offsets) to one Parquet file, atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        rows = 0
        with pq.ParquetWriter(str(tmp), LOG_SCHEMA) as writer:
            for seg in self.segments():
                for batch in read_segment(seg):
                    writer.write_batch(batch)
                    rows += batch.num_rows
        os.replace(tmp, path)
        return rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
        self._writer, self._sink = None, None


def read_segment(path: Path) -> Iterator[pa.RecordBatch]:
    """Batches of one segment; stops quietly at a torn tail left by a crash."""
    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowInvalid, OSError):
        return  # empty or torn before the schema: nothing was acknowledged from it
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError):
            return
        yield batch
