"""The prompt-source contract: an indexable stream of prompts with reference answers.

A source is addressed by *stream position*: position p always yields the same prompt, so a
rollout worker that restarts and resumes from its cursor regenerates exactly the prompts it
had not finished, and the group id (derived from the position) never repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple


@dataclass(frozen=True)
class Prompt:
    """One prompt and what its completions are scored against."""

    prompt_id: str
    """Stable id of the underlying item (the same item seen in two epochs keeps its id)."""
    text: str
    """The problem: the prompt text, or for a chat-message prompt its last user turn. What the
    engine receives is rendered from it by ``actors.prompts`` (``task.template``)."""
    answer: str
    """Reference answer the reward function checks against."""
    messages: Optional[Tuple[Tuple[str, str], ...]] = None
    """(role, content) turns when the dataset's prompt is a list of chat messages."""


class PromptSource(Protocol):
    """An endless stream of training prompts and a fixed held-out set."""

    def train(self, position: int) -> Prompt:
        """The prompt at stream position ``position`` (deterministic)."""

    def eval_set(self) -> List[Prompt]:
        """Held-out prompts, disjoint from the training stream."""

    def stats(self) -> Dict[str, int]:
        """Counters such as skipped bad rows."""


def shard_positions(worker: int, num_workers: int, cursor: int, count: int) -> List[int]:
    """Stream positions owned by ``worker``: worker, worker + W, ...; ``cursor`` counts its own.

    Returns the next ``count`` positions of this worker starting at its ``cursor``-th.
    """
    return [worker + num_workers * (cursor + i) for i in range(count)]

