"""The training driver: rollout actors, the replay queue and the learner group, run as one loop.

``sync`` mode is on-policy: generate a step's groups, train on them, publish and verify the
new weights on every rollout actor, repeat. ``async`` mode launches the next step's
generation before training the current one, so engines keep sampling while the learner
steps; groups more than ``queue.max_staleness`` versions old are dropped by the queue, and
truncated importance sampling (``algo.tis_cap``) corrects for the lag using the engines'
behaviour log-probs.

Exactly-once: a step's groups are acked only once a checkpoint that includes their update
is complete (per step when checkpoints are off). If the learner dies, the driver restores
the last complete checkpoint, puts the un-acked groups back in the queue and replays them,
so every group ends up trained once in the final model's lineage. A run that cannot
recover raises ``RunFailed`` with the reason (the CLI exits non-zero).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pyarrow as pa
import ray
from ray.exceptions import RayActorError

from cluster.contract.config import RunConfig, to_yaml
from cluster.loop.acks import AckBook
from cluster.loop.checkpoint import (
    CheckpointWriteError,
    latest_checkpoint,
    read_state,
    record_reference,
    write_checkpoint,
)
from cluster.loop.evaluation import StaleEvaluation, evaluate_sets
from cluster.loop.metrics import LoopMetrics
from cluster.loop.placement import learner_placement
from cluster.loop.run_log import RunLog
from cluster.loop.tracking import TrackedRun, open_tracker, summary_values
from cluster.metrics.catalogue import serve_once
from cluster.queue.actor import ReplayQueueActor
from learner.learner_actor import LearnerGroup, combine_metrics

MAX_LEARNER_RESTARTS = 3
MAX_EVAL_TRIES = 3
MAX_RESYNCS = 3  # an engine that comes back unverified this often in one step is broken


class RunFailed(RuntimeError):
    """The run stopped and could not recover; the message says why."""


@dataclass
class RunSummary:
    """What a finished run reports (also written to summary.json)."""

    steps: int = 0
    policy_version: int = 0
    rollouts: int = 0
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    eval: List[Dict[str, float]] = field(default_factory=list)
    learner_restarts: int = 0
    dropped: Dict[str, int] = field(default_factory=dict)
    idle_fraction: Dict[str, float] = field(default_factory=dict)


def split(total: int, parts: int) -> List[int]:
    """``total`` items over ``parts`` workers as evenly as possible."""
    return [total // parts + (i < total % parts) for i in range(parts)]


class Driver:
    """Runs one training run (or one arm of a comparison) on existing rollout actors."""

    def __init__(self, config: RunConfig, run_dir: Path, model_path: str, actors: list,
                 progress: Optional[Callable[[Dict[str, object]], None]] = None,
                 resume: bool = False, tracked: Optional[TrackedRun] = None) -> None:
        """``tracked``: where and as what the experiment trackers see this run (a
        comparison's arm; default: a run of its own, ``cluster.loop.tracking``)."""
        self.config, self.run_dir, self.model_path = config, Path(run_dir), model_path
        self.actors = actors
        self.progress = progress or (lambda row: None)
        self.resume = resume
        self.log = RunLog(self.run_dir)
        # Per-group accounting: which step trained each group, or why it was dropped.
        self.ledger = RunLog(self.run_dir, "ledger")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.summary = RunSummary()
        self.acks = AckBook()
        self._sync_futures: Optional[list] = None  # async mode: updates still in flight
        # The last delivery's count of groups left waiting (None: ask the queue), and a
        # step's ack on its way to the queue; the queue runs the driver's calls in order,
        # so neither costs a round trip of its own.
        self._waiting: Optional[int] = None
        self._ack_sent = None
        self._busy = {"rollout": 0.0, "learner": 0.0}
        self.metrics = LoopMetrics(config.name)
        self.tracker = open_tracker(
            config, tracked or TrackedRun(self.run_dir, self.run_dir, config.name), resume,
            warn=self._tracking_failed)
        if config.cluster.metrics_port:
            port = serve_once(config.cluster.metrics_port, config.cluster.metrics_host)
            self.progress({"kind": "info", "message": "metrics at "
                           f"http://{config.cluster.metrics_host}:{port}/metrics"})

    def _tracking_failed(self, message: str) -> None:
        """A tracker that failed: said once, in the log and on the progress line."""
        self.log.write("tracking_error", message=message)
        self.progress({"kind": "info", "message": message})

    # ------------------------------------------------------------------ set-up

    def _start(self) -> Tuple[int, int]:
        """Start queue and learner (from the newest checkpoint when resuming)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(self.config))
        self.tracker.params(self.config)
        attempt = len(list((self.run_dir / "queue").glob("attempt-*")))
        queue_name = f"duet-queue-{uuid.uuid4().hex[:12]}"
        cluster = self.config.cluster
        self.queue = ReplayQueueActor.options(name=queue_name).remote(
            self.config.queue, str(self.run_dir / "queue" / f"attempt-{attempt}"),
            cluster.metrics_host, cluster.metrics_port + 1 if cluster.metrics_port else 0)
        ray.get([a.reset.remote(self.config, queue_name, str(self.run_dir / "state"))
                 for a in self.actors])
        skipped = ray.get(self.actors[0].source_stats.remote())
        if skipped:  # dataset rows refused at load (task.skip_bad_rows): never became groups
            self.ledger.write("bad_rows", counts=skipped)
            self.summary.dropped["bad_row"] = sum(skipped.values())
        # The KL anchor is the run's initial policy, whichever checkpoint the learner resumes
        # or recovers from: recorded in the run folder once, at the run's first start.
        self.reference = (str(record_reference(self.model_path, self.run_dir))
                          if self.config.algo.kl_coef > 0 else None)
        ckpt = latest_checkpoint(self.ckpt_dir) if self.resume else None
        step, version = 0, 0
        if ckpt is not None:
            state = read_state(ckpt)
            step, version = state["step"], state["policy_version"]
            self.learner = self._learner_group(str(ckpt / "model"))
            self.learner.call("load", str(ckpt))
            ray.get([a.set_cursor.remote(c) for a, c in zip(self.actors, state["cursors"])])
            self.summary.rollouts = state.get("rollouts", 0)
            self.log.write("resume", step=step, policy_version=version, checkpoint=str(ckpt))
        else:
            self.learner = self._learner_group(self.model_path)
            if self.resume:  # nothing was checkpointed: start the prompt stream over
                ray.get([a.set_cursor.remote(0) for a in self.actors])
        if self.resume:
            # Whatever was trained after the checkpoint is lost; the prompt stream rewinds
            # to the checkpoint's cursors, so those groups are produced and trained again.
            self.ledger.write("rollback", to_step=step, regenerate=True)
        return step, version

    def _learner_group(self, model_path: str) -> LearnerGroup:
        placement, owned = learner_placement(self.config, self.actors)
        return LearnerGroup(self.config, model_path, placement, reference_path=self.reference,
                            owns_placement=owned)

    # ------------------------------------------------------------------ weights

    def _sync_weights(self, version: int) -> Dict[str, float]:
        """Send ``version`` to every engine (``learner.publish``) and wait until each holds
        it (a step's own sync is sent with its training: ``_one_step``)."""
        start = time.perf_counter()
        futures = self.learner.send_weights(version, list(self.actors), wait=False)
        row = self._await_sync(self.actors, futures, version)
        row["sync_s"] = time.perf_counter() - start
        return row

    def _await_sync(self, actors: list, futures: list, version: int) -> Dict[str, float]:
        """The sync's figures once every engine holds ``version``. An engine whose update
        failed (a corrupted bucket, a probe mismatch, a crash Ray restarted it from part
        way) is sent the version once more, alone; failing again stops the run with the
        version and the reason. A learner that dies while sending raises ``RayActorError``
        into the recovery loop."""
        return self._settle_sync(actors, ray.get(futures)[0], version)

    def _settle_sync(self, actors: list, report: Dict[str, object], version: int
                     ) -> Dict[str, float]:
        """``_await_sync`` once rank 0's report is in hand."""
        per_actor = dict(report["timings"])
        for i, (kind, reason) in sorted(report["errors"].items()):
            self.log.write("sync_retry", policy_version=version, actor=i,
                           error=f"{kind}: {reason}"[:500])
            again = self.learner.send_weights(version, [actors[i]])
            if again["errors"]:
                kind, reason = again["errors"][0]
                what = ("failed verification" if kind == "WeightSyncError"
                        else "could not be delivered")
                raise RunFailed(f"the weights of policy version {version} {what} twice on "
                                f"rollout actor {i}: {reason}") from None
            per_actor[i] = again["timings"][0]
        timings = list(per_actor.values())
        row = {"sync_send_s": report["seconds"],
               "sync_bytes": float(report["manifest"].total_bytes),
               "sync_staged_bytes": float(report["peak_staged_bytes"])}
        probed = [t["probe_max_abs_diff"] for t in timings if "probe_max_abs_diff" in t]
        if probed:  # verified now (otherwise by each engine's next call: ``_generated``)
            row["probe_max_abs_diff"] = max(probed)
        for phase in ("transfer", "load", "verify"):
            row[f"sync_{phase}_s"] = max(t[phase] for t in timings)
        return row

    def _resync_restarted_actors(self, version: int) -> None:
        """A rollout actor Ray restarted comes back with its initial weights: resend them."""
        states = ray.get([a.state.remote() for a in self.actors])
        stale = [a for a, s in zip(self.actors, states) if s["policy_version"] != version]
        if stale:
            self._await_sync(stale, self.learner.send_weights(version, stale, wait=False),
                             version)
            self.log.write("rollout_resync", actors=len(stale), policy_version=version)
            self.metrics.restarted("rollout", len(stale))

    # ------------------------------------------------------------------ the loop

    def _launch(self, step: int, attempt_tag: str) -> List[Tuple[object, int, str, object]]:
        """Start a step's generation: (actor, groups, request id, future) per engine asked."""
        waiting, self._waiting = self._waiting, None
        if self.acks.held():  # a restarted queue counts them as waiting: they are not
            ray.get(self.queue.hold.remote(self.acks.held()))
            waiting = None
        if waiting is None:
            waiting = ray.get(self.queue.stats.remote())["waiting_groups"]
        need = max(0, self.config.algo.prompts_per_step - waiting)
        if need == 0:
            return []
        request = f"{self.config.name}-{attempt_tag}-{step}"
        return [(a, n, request, a.generate.remote(n, request))
                for a, n in zip(self.actors, split(need, len(self.actors))) if n]

    def _generated(self, pending, version: int) -> list:
        """Each launched generation's stats. An engine without verified weights (Ray
        restarted it, its update failed part way, or the probe its last update owed failed
        in this call) generated nothing: it is sent ``version`` again, verified before the
        answer, and asked again under the same request id. So no round trip checks the
        engines before each step, and none verifies their weights after each sync."""
        stats = ray.get([future for *_, future in pending])
        for _ in range(MAX_RESYNCS):
            stale = [i for i, s in enumerate(stats) if s.unverified]
            if not stale:
                return stats
            for i in stale:
                if stats[i].sync_error:
                    self.log.write("sync_retry", policy_version=version,
                                   actor=self.actors.index(pending[i][0]),
                                   error=f"WeightSyncError: {stats[i].sync_error}"[:500])
            actors = [pending[i][0] for i in stale]
            self._await_sync(actors, self.learner.send_weights(version, actors, wait=False),
                             version)
            self.log.write("rollout_resync", actors=len(actors), policy_version=version)
            self.metrics.restarted("rollout", len(actors))
            again = ray.get([a.generate.remote(n, request)
                             for a, n, request, _ in (pending[i] for i in stale)])
            for i, s in zip(stale, again):
                stats[i] = s
        raise RunFailed(f"rollout actor(s) came back without verified weights after "
                        f"{MAX_RESYNCS} resyncs to policy version {version}")

    def _collect(self, pending, step: int, version: int) -> Dict[str, float]:
        stats = self._generated(pending, version)
        out = {"generate_s": max((s.generate_seconds for s in stats), default=0.0),
               "reward_s": max((s.reward_seconds for s in stats), default=0.0),
               "queue_put_s": max((s.queue_seconds for s in stats), default=0.0),
               "rollouts": float(sum(s.rollouts for s in stats)),
               "completion_tokens": float(sum(s.completion_tokens for s in stats)),
               "groups_put": float(sum(s.groups_put for s in stats)),
               "groups_tied": float(sum(s.groups_tied for s in stats)),
               "reward_flags": float(sum(s.reward_flags for s in stats))}
        probed = [s.probe_max_abs_diff for s in stats if s.probe_max_abs_diff is not None]
        if probed:  # of the weights these rollouts came from
            out["probe_max_abs_diff"] = max(probed)
        for s in stats:
            if s.group_ids:
                self.ledger.write("produced", step=step, group_ids=s.group_ids)
            for reason, ids in s.dropped_ids.items():
                self._dropped(reason, step, ids)
            busy = s.generate_seconds + s.reward_seconds + s.queue_seconds
            self._busy["rollout"] += busy / len(self.actors)
        return out

    def _dropped(self, reason: str, step: int, group_ids: List[str]) -> None:
        """The one place a dropped group is counted: ledger, summary and metric agree."""
        self.ledger.write("dropped", reason=reason, step=step, group_ids=group_ids)
        self.summary.dropped[reason] = self.summary.dropped.get(reason, 0) + len(group_ids)
        self.metrics.dropped(reason, len(group_ids))

    def _take_step_batch(self, version: int, step: int
                         ) -> Tuple[Optional[pa.RecordBatch], List[int], Dict[str, float]]:
        start = time.perf_counter()
        # Trained groups awaiting their checkpoint's ack stay in flight even if the queue
        # restarted meanwhile (it would otherwise deliver them again).
        delivery = ray.get(self.queue.get.remote(self.config.algo.prompts_per_step, version, 5.0,
                                                 hold=self.acks.held()))
        self._settle_ack()  # ran before the get: done by now
        self._waiting = delivery.waiting
        info = {"queue_get_s": time.perf_counter() - start,
                "staleness_max": float(max(delivery.staleness, default=0))}
        if delivery.stale_ids:
            self._dropped("stale", step, delivery.stale_ids)
        if not delivery.offsets:
            return None, [], info
        batch = delivery.batch
        ok = [all(s == "ok" for s in row) for row in batch.column("reward_status").to_pylist()]
        bad = [o for o, good in zip(delivery.offsets, ok) if not good]
        if bad:
            ray.get(self.queue.drop.remote(bad, "reward_error"))
            ids = batch.column("group_id").to_pylist()
            self._dropped("reward_error", step, [i for i, good in zip(ids, ok) if not good])
            batch = batch.filter(pa.array(ok))
        offsets = [o for o, good in zip(delivery.offsets, ok) if good]
        return (batch if offsets else None), offsets, info

    def _evaluate(self, step: int, version: int) -> Dict[str, float]:
        """Every evaluation set on all engines, of exactly ``version``: an engine Ray
        restarted during the call ran the retried call on its initial weights, so it is
        resynced and asked again. Per-prompt rows go to ``evals/step-<N>/<set>.jsonl``."""
        for _ in range(MAX_EVAL_TRIES):
            self._resync_restarted_actors(version)
            try:
                result = evaluate_sets(self.actors, self.run_dir / "evals" / f"step-{step}",
                                       version)
                break
            except StaleEvaluation as err:
                self.log.write("eval_retry", step=step, policy_version=version,
                               engine_policy_versions=err.versions)
        else:
            raise RunFailed(f"evaluation at step {step} never ran on policy version {version}: "
                            f"a rollout actor restarted during each of {MAX_EVAL_TRIES} tries")
        sets, avg = result["sets"], result["average"]
        if not sets:  # no set configured (eval.held_out false, eval.sets empty): nothing to log
            return {}
        # accuracy / mean_at_k / pass_at_k: the average over sets (the paper's "average"
        # column), which the progress line and the report's headline use.
        row = {"step": step, "policy_version": version, "accuracy": avg["accuracy"],
               "mean_at_k": avg["mean_at_k"], "pass_at_k": avg["pass_at_k"],
               "k": max(s["k"] for s in sets.values()), "n": sum(s["n"] for s in sets.values()),
               "sets": sets, "eval_s": result["seconds"], "rollouts": self.summary.rollouts,
               "wall_s": time.perf_counter() - self._t0}
        self.summary.eval.append(row)
        self.log.write("eval", **row)
        self.tracker.eval(row)
        for name, summary in sets.items():
            self.log.write("eval_set", step=step, policy_version=version, set=name, **summary)
        self.metrics.eval(row)
        self.progress({"kind": "eval", **row})
        return row

    def run(self) -> RunSummary:
        """The whole run. Every call to an actor that can die — sync, generation, training,
        evaluation, checkpoints, the final checkpoint — sits in one loop: a dead learner
        (or any actor Ray could not bring back) is recovered from the newest complete
        checkpoint and the run goes on; one that cannot be recovered raises ``RunFailed``."""

        try:
            return self._run()
        except BaseException:
            self.tracker.close(failed=True)
            self._release()  # a run that stops frees its learner and queue for the next
            raise

    def _run(self) -> RunSummary:
        setup_start = time.perf_counter()
        step, version = self._start()
        self._t0 = time.perf_counter()
        attempt, failure, pending, started = 0, None, None, False
        every = self.config.eval_every
        while True:
            try:
                if failure is not None:
                    attempt += 1
                    step, version = self._recover(failure, attempt)
                    failure, pending = None, None
                if not started:
                    self._sync_weights(version)
                    # Wall time counts training only, so arms with different start-up
                    # costs compare fairly.
                    self._t0 = time.perf_counter()
                    self.summary.setup_seconds = self._t0 - setup_start
                    self._evaluate(step, version)
                    started = True
                if step >= self.config.steps or self._out_of_budget():
                    last = self.summary.eval[-1] if self.summary.eval else {}
                    if (last.get("step"), last.get("policy_version")) != (step, version):
                        self._evaluate(step, version)
                    if self._checkpointed_step() != step:
                        self._checkpoint(step, version)
                    return self._finish(step, version)
                step, version, pending = self._one_step(step, version, pending, f"a{attempt}")
                if every and step % every == 0 and step < self.config.steps:
                    self._evaluate(step, version)
            except RayActorError as err:
                failure = err
            except FloatingPointError as err:
                raise RunFailed(str(err)) from None

    def _release(self) -> None:
        if getattr(self, "learner", None) is not None:
            self.learner.kill()
        if getattr(self, "queue", None) is not None:
            ray.kill(self.queue)

    def _checkpointed_step(self) -> Optional[int]:
        latest = latest_checkpoint(self.ckpt_dir)
        return read_state(latest)["step"] if latest is not None else None

    def _out_of_budget(self) -> bool:
        c = self.config
        if c.max_rollouts and self.summary.rollouts >= c.max_rollouts:
            return True
        return bool(c.max_wall_seconds) and time.perf_counter() - self._t0 >= c.max_wall_seconds

    def _one_step(self, step: int, version: int, pending, tag: str):
        async_mode = self.config.cluster.mode == "async"
        row: Dict[str, object] = {"step": step + 1}
        t_step = time.perf_counter()
        if pending is None:
            pending = self._launch(step, tag)
        t = time.perf_counter()
        row.update(self._collect(pending, step + 1, version))
        if self._sync_futures:  # async: surface a failed sync before going on
            row.update(self._await_sync(self.actors, self._sync_futures, version))
            self._sync_futures = None
        row["wait_rollout_s"] = time.perf_counter() - t
        batch, offsets, info = self._take_step_batch(version, step + 1)
        row.update(info)
        pending = None
        if async_mode and step + 1 < self.config.steps:
            pending = self._launch(step + 1, tag)  # engines sample while the learner trains
        if batch is not None:
            if self.config.cluster.placement == "colocated":  # the rank beside it trains
                ray.get([a.sleep.remote() for a in self.actors])
            version += 1
            # The ranks send the step's weights as soon as it is done. Each engine checks
            # them by probe in its next generate call, before any sample leaves it
            # (``_generated``), not as an engine call of its own.
            if async_mode:  # queued behind the step; awaited after the next step's rollouts
                trained = self.learner.train_step(batch, wait=False)
                self._sync_futures = self.learner.send_weights(version, list(self.actors),
                                                               wait=False, verify=False)
                per_rank, report = ray.get(trained), None
            else:  # the step and its send in one call to each rank
                done = ray.get(self.learner.train_and_send(batch, version, list(self.actors),
                                                           verify=False))
                per_rank, report = [d["metrics"] for d in done], done[0]["sync"]
            metrics = combine_metrics(per_rank)
            self.ledger.write("trained", step=step + 1, attempt=tag,
                              group_ids=batch.column("group_id").to_pylist())
            self._busy["learner"] += metrics["learner_seconds"]
            row.update({k: v for k, v in metrics.items()})
            if report is not None:
                row.update(self._settle_sync(self.actors, report, version))
                row["sync_s"] = report["seconds"]  # what the step waits for: the ranks' send
            self.acks.trained(offsets)
        self.summary.rollouts += int(row["rollouts"])
        step += 1
        if not self.config.checkpoint_every:
            self._settle_ack()
            self._ack_sent = self.queue.ack.remote(self.acks.take())
        elif step % self.config.checkpoint_every == 0:
            self._checkpoint(step, version)
        elapsed = time.perf_counter() - self._t0
        row.update({"policy_version": version, "rollouts_total": self.summary.rollouts,
                    "wall_s": elapsed, "step_s": time.perf_counter() - t_step,
                    "tokens_per_s": (row.get("completion_tokens", 0.0)
                                     / max(row.get("generate_s", 0.0), 1e-9))})
        self.log.write("step", **row)
        self.tracker.step(row)
        self.metrics.step(row)
        self.progress({"kind": "step", **row})
        return step, version, pending

    # ------------------------------------------------------------------ checkpoints, recovery

    def _settle_ack(self) -> None:
        """Wait for the ack on its way (its error, if any, surfaces here)."""
        sent, self._ack_sent = self._ack_sent, None
        if sent is not None:
            ray.get(sent)

    def _checkpoint(self, step: int, version: int) -> Path:
        """Write a checkpoint atomically (``cluster.loop.checkpoint``), then ack its groups.

        A write that fails (disk full, permissions) stops the run: the previous complete
        checkpoint is untouched and ``--resume`` continues from it once the cause is fixed.
        """
        def fill(tmp: Path) -> Dict[str, object]:
            self.learner.call("save", str(tmp), self.model_path)
            cursors = [s["cursor"] for s in ray.get([a.state.remote() for a in self.actors])]
            queue = ray.get(self.queue.stats.remote())
            return {"step": step, "policy_version": version, "cursors": cursors,
                    "rollouts": self.summary.rollouts, "time": time.time(),
                    # This attempt's queue offsets: groups up to "trained_through" are in
                    # this checkpoint (acked just below); later ones are replayed or
                    # regenerated.
                    "queue": {"next_offset": queue["next_offset"],
                              "trained_through": self.acks.trained_through(
                                  queue["committed_watermark"])}}

        try:
            final = write_checkpoint(self.ckpt_dir, step, fill, self.config.keep_checkpoints)
        except CheckpointWriteError as err:
            previous = latest_checkpoint(self.ckpt_dir)
            raise RunFailed(
                f"checkpoint of step {step} could not be written to {self.ckpt_dir} ({err}); "
                + (f"the previous checkpoint {previous.name} is complete and untouched: "
                   "fix the cause (e.g. free disk space) and continue with --resume"
                   if previous else "no earlier checkpoint exists")) from None
        self._settle_ack()
        acked = self.acks.take()
        if acked:
            ray.get(self.queue.ack.remote(acked))
        self.log.write("checkpoint", step=step, policy_version=version, path=str(final))
        return final

    def _recover(self, err: Exception, attempt: int) -> Tuple[int, int]:
        """Restart the learner group from the newest complete checkpoint and replay."""
        self.summary.learner_restarts += 1
        self.metrics.restarted("learner")
        if attempt > MAX_LEARNER_RESTARTS:
            raise RunFailed(f"learner failed {attempt} times; last error: {err}") from None
        self.learner.kill()
        ckpt = latest_checkpoint(self.ckpt_dir)
        if ckpt is None:
            step, version, path = 0, 0, self.model_path
        else:
            state = read_state(ckpt)
            step, version, path = state["step"], state["policy_version"], str(ckpt / "model")
        self.learner = self._learner_group(path)
        if ckpt is not None:
            self.learner.call("load", str(ckpt))
        # An ack already sent runs before the requeue (the queue keeps the driver's order).
        self._ack_sent, self._waiting = None, None
        requeued = ray.get(self.queue.requeue_inflight.remote())
        self.acks.forget()
        self._sync_weights(version)
        # Trainings after the checkpoint were lost with the learner; the queue redelivers
        # their groups (the prompt stream is not rewound, so drops stand).
        self.ledger.write("rollback", to_step=step, regenerate=False)
        self.log.write("learner_restart", attempt=attempt, from_step=step, requeued=requeued,
                       error=str(err)[:500])
        return step, version

    def _finish(self, step: int, version: int) -> RunSummary:
        wall = time.perf_counter() - self._t0
        self.summary.steps, self.summary.policy_version = step, version
        self.summary.wall_seconds = wall
        self.summary.idle_fraction = {role: max(0.0, 1 - busy / wall)
                                      for role, busy in self._busy.items()}
        self._settle_ack()
        self.ledger.write("pending", group_ids=ray.get(self.queue.pending_ids.remote()))
        self.ledger.write("finished", step=step)
        self.log.write("summary", **{k: v for k, v in self.summary.__dict__.items()
                                     if not isinstance(v, (list, dict))})
        self.log.finish()
        self.ledger.close()
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary.__dict__, indent=1))
        self.tracker.summary(summary_values(self.summary.__dict__))
        self.tracker.close()
        self._release()
        return self.summary
