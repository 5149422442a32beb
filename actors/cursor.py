"""A rollout worker's place in the prompt stream, persisted atomically after every put.

The cursor counts the worker's own stream positions already turned into groups. With it
sits the last generate request's id and how many groups that request has put, so a call
retried after a crash finishes the original request instead of producing a second one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from cluster.contract.files import atomic_write_json


class CursorFile:
    """``rollout-<worker>.json`` under a run's state folder."""

    def __init__(self, state_dir: str, worker: int) -> None:
        self.path = Path(state_dir) / f"rollout-{worker}.json"
        state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.cursor: int = state.get("cursor", 0)
        self.request: Optional[str] = state.get("request")
        self.request_done: int = state.get("request_done", 0)

    def done_for(self, request_id: Optional[str]) -> int:
        """Groups already put for ``request_id`` (0 for a new request); makes it current."""
        done = self.request_done if request_id is not None and request_id == self.request else 0
        self.request, self.request_done = request_id, done
        return done

    def advance(self, positions: int, groups_put: int) -> None:
        """Record ``positions`` more consumed and ``groups_put`` more put for the request."""
        self.cursor += positions
        self.request_done += groups_put
        self.save()

    def set(self, cursor: int) -> None:
        self.cursor = cursor
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"cursor": self.cursor, "request": self.request,
                                      "request_done": self.request_done})
