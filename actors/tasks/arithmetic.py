"""The embedded synthetic task: seeded integer addition, e.g. "37+45=" -> "82".

``digits`` sets the difficulty (operand size). Every prompt is a pure function of
(seed, position), so the stream is reproducible without storing it, and the held-out set
is drawn from a separate seed stream and removed from training by value.
"""

from __future__ import annotations

import random
from typing import Dict, List, Tuple

from actors.tasks.base import Prompt

_EVAL_SALT = 0x5EED_E7A1


def _operands(rng: random.Random, digits: int) -> Tuple[int, int]:
    hi = 10**digits - 1
    return rng.randint(0, hi), rng.randint(0, hi)


def render(a: int, b: int) -> Prompt:
    return Prompt(prompt_id=f"{a}+{b}", text=f"{a}+{b}=", answer=str(a + b))


def verify(completion: str, answer: str) -> float:
    """1.0 if the completion (up to end of text) is exactly the answer, else 0.0."""
    return 1.0 if completion.strip() == answer else 0.0


class ArithmeticTask:
    """Addition of two ``digits``-digit numbers; a deterministic, endless prompt stream."""

    def __init__(self, digits: int = 2, seed: int = 0, eval_size: int = 200) -> None:
        self.digits, self.seed = digits, seed
        rng = random.Random(seed ^ _EVAL_SALT)
        held_out: Dict[str, Prompt] = {}
        space = (10**digits) ** 2
        while len(held_out) < min(eval_size, space // 4):
            p = render(*_operands(rng, digits))
            held_out[p.prompt_id] = p
        self._eval = list(held_out.values())
        self._held_out = set(held_out)

    def train(self, position: int) -> Prompt:
        rng = random.Random(f"{self.seed}:{position}")
        while True:
            p = render(*_operands(rng, self.digits))
            if p.prompt_id not in self._held_out:
                return p

    def eval_set(self) -> List[Prompt]:
        return list(self._eval)

    def stats(self) -> Dict[str, int]:
        return {}
