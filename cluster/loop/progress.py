"""Live progress of a run: a rich status line on a terminal, plain lines otherwise (logs, CI)."""

from __future__ import annotations

import time
from typing import Dict, Optional


def computed(row: Dict[str, object]) -> str:
    """The share of the step's completion tokens the learner computed (the rest were
    zero-advantage rows it skipped), or nothing when the row has no learner figures."""
    received = row.get("tokens_received")
    if not received:
        return ""
    return f"learner computed {float(row.get('tokens_computed') or 0) / float(received):.0%}  "


class Progress:
    """Live progress: a rich status line on a terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, total_steps: int, label: str = "") -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.total, self.label = total_steps, label
        self.start = time.perf_counter()
        self.last_acc: Optional[float] = None
        self._live = None
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live("", console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def __call__(self, row: Dict[str, object]) -> None:
        if row["kind"] == "info":
            self._print(f"{self.label}{row['message']}")
            return
        if row["kind"] == "eval":
            self.last_acc = float(row["accuracy"]) if row.get("accuracy") is not None else None
            sets = row.get("sets") or {}
            each = "; ".join(f"{name} {s['mean_at_k']:.1%} / {s['pass_at_k']:.1%}"
                             for name, s in sets.items())
            greedy = "—" if self.last_acc is None else f"{self.last_acc:.1%}"
            line = (f"{self.label}eval @ step {row['step']}: over {len(sets) or 1} set(s) "
                    f"greedy {greedy}, mean@k {row['mean_at_k']:.1%}, "
                    f"pass@k {row.get('pass_at_k') or float('nan'):.1%} ({row['n']} prompts"
                    + (f"; mean@k / pass@k: {each}" if len(sets) > 1 else "") + ")")
            self._print(line)
            return
        step = int(row["step"])
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total - step) if step else 0.0
        acc = "—" if self.last_acc is None else f"{self.last_acc:.1%}"
        line = (f"{self.label}step {step}/{self.total}  reward {row.get('reward_mean', 0):.3f}  "
                f"acc {acc}  rollouts {row.get('rollouts_total', 0)}  "
                f"tok/s {row.get('tokens_per_s', 0):.0f}  staleness {row.get('staleness_max', 0):.0f}  "
                + computed(row) + f"ETA {eta:.0f}s")
        if self._live is not None:
            self._live.update(line)
        elif step == 1 or step % 10 == 0 or step == self.total:
            print(line, flush=True)

    def _print(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
