"""``duet audit``: check from a run's own records that every group was trained exactly once
or dropped for a named reason.

Sources, all inside ``runs/<name>/``:

- the queue's durable logs (``queue/attempt-*/segments``): every group the queue accepted,
  across queue restarts and resumed sessions — what was *produced*;
- ``ledger.jsonl``, written by the driver as it goes: ``produced`` (groups a rollout call
  put), ``trained`` (step, group ids), ``dropped`` (reason, step, group ids), ``rollback``
  (the learner was restored to the checkpoint of ``to_step``: trainings after it were lost
  with the learner and their groups are trained again; with ``regenerate``, a resumed run
  also rewinds the prompt stream, so drops after that step are redone too), ``pending``
  (groups still queued when the run stopped; a resumed run trains them), ``bad_rows``
  (dataset rows refused at load with ``task.skip_bad_rows``, by reason: they never became
  groups) and ``finished``.

The rules: after applying rollbacks, no group is trained twice; no group is both trained
and dropped; every produced group is trained, dropped or pending. A run without a
``finished`` record (it crashed and was not resumed) fails the audit: its last trainings
may not be in any checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Set, Tuple

from cluster.loop.run_log import read_rows
from cluster.queue.log import read_segment


@dataclass
class AuditReport:
    """What ``audit`` found."""

    run_dir: str
    produced: int = 0
    trained: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)
    pending: int = 0
    bad_rows: int = 0
    rollbacks: int = 0
    trainings_voided: int = 0
    finished: bool = False
    trained_twice: Dict[str, List[int]] = field(default_factory=dict)
    trained_and_dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.finished and not self.trained_twice and not self.trained_and_dropped
                and not self.missing)

    def text(self) -> str:
        lines = [f"audit of {self.run_dir}: {'OK' if self.ok else 'FAILED'}",
                 f"  produced {self.produced}, trained {self.trained}, "
                 f"dropped {sum(self.dropped.values())} "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(self.dropped.items())) or 'none'}), "
                 f"pending {self.pending}; dataset rows skipped at load {self.bad_rows}",
                 f"  learner rollbacks {self.rollbacks} (trainings voided and redone: "
                 f"{self.trainings_voided})"]
        if not self.finished:
            lines.append("  the run has no 'finished' record: it stopped early; resume it with "
                         "`duet train --resume` (same config) and audit again")
        for gid, steps in sorted(self.trained_twice.items())[:20]:
            lines.append(f"  group {gid} trained twice (steps {steps})")
        for gid in self.trained_and_dropped[:20]:
            lines.append(f"  group {gid} was dropped and also trained")
        for gid in self.missing[:20]:
            lines.append(f"  group {gid} was produced but never trained, dropped or pending")
        extra = len(self.missing) - 20
        if extra > 0:
            lines.append(f"  ... and {extra} more missing groups")
        return "\n".join(lines)


def queue_group_ids(run_dir: Path) -> Set[str]:
    """Every group id in the run's durable queue logs (all attempts)."""
    ids: Set[str] = set()
    for segment in sorted(run_dir.glob("queue/attempt-*/segments/seg-*.arrow")):
        for batch in read_segment(segment):
            ids.update(batch.column("group_id").to_pylist())
    return ids


def audit(run_dir: Path) -> AuditReport:
    """Audit one run directory (for a comparison, audit each ``arm-*/seed-*`` folder)."""
    run_dir = Path(run_dir)
    ledger = run_dir / "ledger.jsonl"
    if not ledger.exists():
        raise FileNotFoundError(f"{ledger} not found: is {run_dir} a duet run directory "
                                "(for `duet compare`, audit runs/<name>/arm-<G>/seed-<s>)?")
    report = AuditReport(str(run_dir))
    produced = queue_group_ids(run_dir)
    trained: Dict[str, int] = {}  # group id -> step, rollbacks applied
    dropped: Dict[str, Tuple[str, int]] = {}  # group id -> (reason, step)
    pending: Set[str] = set()
    for row in read_rows(ledger):
        kind, ids = row.get("kind"), row.get("group_ids") or []
        if kind == "produced":
            produced.update(ids)
        elif kind == "trained":
            step = int(row["step"])
            for gid in ids:
                if gid in trained:
                    report.trained_twice.setdefault(gid, [trained[gid]]).append(step)
                trained[gid] = step
                pending.discard(gid)
        elif kind == "dropped":
            for gid in ids:
                dropped[gid] = (str(row.get("reason")), int(row.get("step") or 0))
                pending.discard(gid)
        elif kind == "rollback":
            report.rollbacks += 1
            lost = [gid for gid, step in trained.items() if step > int(row["to_step"])]
            report.trainings_voided += len(lost)
            for gid in lost:
                del trained[gid]
            if row.get("regenerate"):
                for gid in [g for g, (_, step) in dropped.items() if step > int(row["to_step"])]:
                    del dropped[gid]
        elif kind == "pending":
            pending = set(ids) - set(trained) - set(dropped)
        elif kind == "bad_rows":
            report.bad_rows = sum((row.get("counts") or {}).values())
        elif kind == "finished":
            report.finished = True
    report.produced = len(produced | set(trained) | set(dropped))
    report.trained = len(trained)
    for reason, _ in dropped.values():
        report.dropped[reason] = report.dropped.get(reason, 0) + 1
    report.pending = len(pending)
    report.trained_and_dropped = sorted(set(trained) & set(dropped))
    report.missing = sorted(produced - set(trained) - set(dropped) - pending,
                            key=_natural)
    return report


def _natural(gid: str):
    digits = "".join(ch for ch in gid if ch.isdigit())
    return (int(digits) if digits else -1, gid)


def audit_json(report: AuditReport) -> str:
    out = dict(report.__dict__)
    out["ok"] = report.ok
    return json.dumps(out, indent=1)
