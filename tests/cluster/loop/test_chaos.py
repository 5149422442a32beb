"""Chaos: kills at random moments (seeded rounds) and in the windows most likely to expose a
bug — a checkpoint write, a weight sync, an evaluation, between the last step and the finish,
two kills close together. Every run must finish and pass ``duet audit``.

Random rounds take their seeds from ``DUET_CHAOS_SEEDS`` (default 0,1; see ``chaos.py``). The
targeted kills are placed deterministically by wrapping the driver's own calls.
"""

import os
import signal

import pytest
import ray

from cluster.contract.config import load_config
from cluster.loop.driver import Driver
from cluster.loop.run_log import read_rows
from cluster.tools.audit import audit
from learner.learner_actor import LearnerGroup
from tests.cluster.loop.chaos import BASE, STEPS, chaos_round, line, pid_of, seeds_from_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", seeds_from_env())
def test_random_kills_every_round_completes_and_audits_clean(engines, tiny_model_path, tmp_path,
                                                             seed):
    result = chaos_round(seed, engines, tiny_model_path, tmp_path)
    print(line(result))
    survived = {k for k, v in result["killed"].items() if isinstance(v, int)}
    assert result["summary"].steps == STEPS
    assert survived == {"rollout", "queue", "learner"}, result["killed"]
    # One restart, or none when the kill lands after the learner's last call (the step-6
    # checkpoint): then nothing is lost and nothing needs recovering.
    assert result["summary"].learner_restarts in (0, 1)
    report = result["audit"]
    assert report.ok, report.text()
    assert report.trained >= STEPS * 8 - sum(report.dropped.values())


def finish_clean(driver, tmp_path, restarts):
    summary = driver.run()
    assert summary.steps == driver.config.steps
    assert summary.learner_restarts == restarts
    report = audit(tmp_path)
    assert report.ok, report.text()
    return summary


def kill(pid):
    os.kill(pid, signal.SIGKILL)


def test_learner_killed_during_a_checkpoint_write(engines, tiny_model_path, tmp_path, monkeypatch):
    real, hits = LearnerGroup.call, []

    def call(self, method, *args, **kwargs):
        if method == "save" and not hits:  # the step-2 checkpoint
            hits.append(ray.get(self.ranks[0].pid.remote()))
            futures = [getattr(r, method).remote(*args, **kwargs) for r in self.ranks]
            kill(hits[0])  # while the ranks write
            return ray.get(futures)
        return real(self, method, *args, **kwargs)

    monkeypatch.setattr(LearnerGroup, "call", call)
    driver = Driver(load_config(None, BASE), tmp_path, tiny_model_path, engines)
    finish_clean(driver, tmp_path, restarts=1)
    assert hits and not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_learner_killed_before_the_final_checkpoint(engines, tiny_model_path, tmp_path):
    """Checkpoints at step 4 and at the end: the learner dies after the last step, before the
    final checkpoint — the window that escaped recovery before."""
    driver = None

    def after_last_step(row):
        if row["kind"] == "step" and row["step"] == STEPS and not killed:
            killed.append(pid_of(driver, engines, "learner"))
            kill(killed[0])

    killed = []
    driver = Driver(load_config(None, BASE + ["checkpoint_every=4"]), tmp_path,
                    tiny_model_path, engines, progress=after_last_step)
    finish_clean(driver, tmp_path, restarts=1)
    assert killed and (tmp_path / "checkpoints" / f"step-{STEPS:06d}").exists()


def test_learner_and_an_engine_killed_during_weight_syncs(engines, tiny_model_path, tmp_path,
                                                          monkeypatch):
    """The learner dies as it sends the initial weights (before the first step, outside
    the old recovery loop); the engine dies while version 2 is loading into it (Ray restarts
    it, the rest of that update fails on the fresh engine, and the driver resends)."""
    from learner import learner_actor
    from tests.cluster.loop.faults import EngineKillingRank

    real_send = LearnerGroup.send_weights
    killed = {}

    def send_weights(self, version, *args, **kwargs):
        if version == 0 and "learner" not in killed:
            killed["learner"] = ray.get(self.ranks[0].pid.remote())
            kill(killed["learner"])
        return real_send(self, version, *args, **kwargs)

    monkeypatch.setattr(LearnerGroup, "send_weights", send_weights)
    monkeypatch.setattr(learner_actor, "LearnerActor",
                        ray.remote(num_cpus=1, max_restarts=0)(EngineKillingRank))
    driver = Driver(load_config(None, BASE), tmp_path, tiny_model_path, engines)
    finish_clean(driver, tmp_path, restarts=1)
    assert "learner" in killed
    retries = read_rows(tmp_path / "metrics.jsonl", "sync_retry")
    assert [r["policy_version"] for r in retries] == [2]  # the engine killed mid-update
    assert "no weight update in progress" in retries[0]["error"]


def test_engine_killed_while_a_step_generates(engines, tiny_model_path, tmp_path, monkeypatch):
    """Ray restarts the engine and retries the step's generate call on it: with its initial
    weights, so the call generates nothing and says so. The driver resyncs that engine and
    asks again under the same request id; nothing is trained from unpublished weights."""
    real_launch, killed = Driver._launch, []

    def launch(self, step, tag):
        pid = pid_of(self, engines, "rollout") if step == 2 and not killed else None
        pending = real_launch(self, step, tag)
        if pid is not None:  # the call is on its way: it runs, or is retried, after the kill
            killed.append(pid)
            kill(pid)
        return pending

    monkeypatch.setattr(Driver, "_launch", launch)
    driver = Driver(load_config(None, BASE), tmp_path, tiny_model_path, engines)
    finish_clean(driver, tmp_path, restarts=0)
    assert killed
    resyncs = read_rows(tmp_path / "metrics.jsonl", "rollout_resync")
    assert [(r["actors"], r["policy_version"]) for r in resyncs] == [(1, 2)]
    trained = read_rows(tmp_path / "ledger.jsonl", "trained")
    assert len(trained) == STEPS  # the step went ahead once the engine was resynced


def test_engine_killed_as_an_evaluation_starts(engines, tiny_model_path, tmp_path, monkeypatch):
    """Ray restarts the engine and retries the evaluation on it — with its initial weights.
    The driver must notice (the engine reports its version), resync and evaluate again."""
    real_resync, state = Driver._resync_restarted_actors, {}

    def resync_then_kill(self, version):
        real_resync(self, version)
        if state.get("evaluating") and version == 2 and "killed" not in state:
            state["killed"] = pid_of(self, engines, "rollout")
            kill(state["killed"])

    real_evaluate = Driver._evaluate

    def evaluate(self, step, version):
        state["evaluating"] = True
        try:
            return real_evaluate(self, step, version)
        finally:
            state["evaluating"] = False

    monkeypatch.setattr(Driver, "_resync_restarted_actors", resync_then_kill)
    monkeypatch.setattr(Driver, "_evaluate", evaluate)
    driver = Driver(load_config(None, BASE + ["eval_every=2"]), tmp_path, tiny_model_path,
                    engines)
    finish_clean(driver, tmp_path, restarts=0)
    assert "killed" in state
    retries = read_rows(tmp_path / "metrics.jsonl", "eval_retry")
    assert [r["engine_policy_versions"] for r in retries] == [[-1]]  # caught, then redone
    evals = [e for e in driver.summary.eval if e["step"] == 2]
    assert len(evals) == 1 and evals[0]["policy_version"] == 2


def test_two_learner_kills_close_together(engines, tiny_model_path, tmp_path, monkeypatch):
    """The learner dies at step 3, and its replacement dies before it has restored the
    checkpoint: the second failure is recovered like the first."""
    real_group, killed = Driver._learner_group, []

    def learner_group(self, model_path):
        group = real_group(self, model_path)
        if len(killed) == 1:  # the first replacement
            killed.append(ray.get(group.ranks[0].pid.remote()))
            kill(killed[-1])
        return group

    def at_step_three(row):
        if row["kind"] == "step" and row["step"] == 3 and not killed:
            killed.append(pid_of(driver, engines, "learner"))
            kill(killed[0])

    monkeypatch.setattr(Driver, "_learner_group", learner_group)
    driver = None
    driver = Driver(load_config(None, BASE), tmp_path, tiny_model_path, engines,
                    progress=at_step_three)
    finish_clean(driver, tmp_path, restarts=2)
    assert len(killed) == 2


def test_queue_killed_while_trained_groups_await_their_checkpoint(engines, tiny_model_path,
                                                                  tmp_path):
    """Step 1 trained, its groups un-acked until the step-2 checkpoint, and the queue dies
    right then. The restarted queue has them waiting again; the driver must not train them a
    second time."""
    killed = []
    driver = None

    def kill_queue_after_step_one(row):
        if row["kind"] == "step" and row["step"] == 1 and not killed:
            killed.append(pid_of(driver, engines, "queue"))
            kill(killed[0])

    config = load_config(None, BASE + ["steps=4"])
    driver = Driver(config, tmp_path, tiny_model_path, engines, progress=kill_queue_after_step_one)
    summary = driver.run()
    assert killed and summary.steps == 4
    report = audit(tmp_path)
    assert report.ok, report.text()
    assert report.trained == 4 * 8


def test_engine_killed_after_its_run_ended_serves_the_next_run(engines, tiny_model_path,
                                                               tmp_path):
    """Ray restarts an engine killed once a run is over; the run's queue is gone by then.
    The engine must come up unassigned and serve the next run (it failed to start, for
    good, before)."""
    first = Driver(load_config(None, BASE + ["steps=2"]), tmp_path / "first", tiny_model_path,
                   engines)
    first.run()
    kill(pid_of(first, engines, "rollout"))
    second = Driver(load_config(None, BASE + ["steps=2"]), tmp_path / "second",
                    tiny_model_path, engines)
    assert second.run().steps == 2
    report = audit(tmp_path / "second")
    assert report.ok, report.text()


def test_learner_and_engine_killed_together_between_steps(engines, tiny_model_path, tmp_path):
    """Both die while idle after step 3. The restarted engine must be resent the weights,
    but the learner that would send them is dead too: the resend raises into the recovery
    loop, which restarts the learner from its checkpoint and syncs every engine."""
    killed = []

    def at_step_three(row):
        if row["kind"] == "step" and row["step"] == 3 and not killed:
            killed.extend(pid_of(driver, engines, kind) for kind in ("learner", "rollout"))
            for pid in killed:
                kill(pid)

    driver = None
    driver = Driver(load_config(None, BASE), tmp_path, tiny_model_path, engines,
                    progress=at_step_three)
    finish_clean(driver, tmp_path, restarts=1)
    assert len(killed) == 2
