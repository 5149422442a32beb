"""The driver's side of exactly-once: which delivered groups are trained but not yet acked.

A group the learner trained is acknowledged to the queue only once a checkpoint holding that
update is complete (at once, per step, when checkpoints are off). Until then its offset is
*held*: passed with every ``get`` and re-held after a queue restart, so a restarted queue
neither delivers it again nor counts it as waiting. A learner restored from a checkpoint
forgets them: the queue requeues its in-flight groups and they are trained again.
"""

from __future__ import annotations

from typing import List


class AckBook:
    """Trained-but-unacked queue offsets of one run attempt."""

    def __init__(self) -> None:
        self._offsets: List[int] = []

    def trained(self, offsets: List[int]) -> None:
        """The learner stepped on these groups."""
        self._offsets.extend(offsets)

    def held(self) -> List[int]:
        """Offsets the queue must keep in flight (for ``get(hold=...)`` and ``hold``)."""
        return list(self._offsets)

    def trained_through(self, committed_watermark: int) -> int:
        """Highest offset a checkpoint written now covers (trained, or acked before)."""
        return max(self._offsets + [committed_watermark])

    def take(self) -> List[int]:
        """Offsets to ack now that their update is checkpointed (or needs no checkpoint)."""
        taken, self._offsets = self._offsets, []
        return taken

    def forget(self) -> None:
        """The learner was restored from a checkpoint: these updates were lost with it."""
        self._offsets = []
