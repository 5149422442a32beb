"""The GPU first-contact script's learner and engine sides (``benchmarks/ipc_gpu.py``), on CPU.

Real: vLLM 0.32's ``packed_ipc_producer`` / ``packed_ipc_consumer`` and ``PackedBufferImporter``,
duet's ``LearnerWeights``, buffer sizing and probe, the script's chunk-by-chunk handshake and
its engine stand-in. Stand-ins (``tests/learner/cuda_standins``): CUDA-IPC handles through an
in-process registry and the staging buffer in host memory; the engine runs on a thread with
queues where the script gives it a process of its own on the GPU.
"""

import queue
import threading

import pytest
import torch

from benchmarks.ipc_gpu import EngineStandIn, load_packed_tensor, probe_report, send_packed
from cluster.contract.weights import start_manifest
from cluster.policy.embedded import build_model
from learner.publish import LearnerWeights, transfer_buffer_bytes
from tests.learner.cuda_standins import FAKE_GPU_UUID, use_ipc_standins


def test_the_script_sends_a_model_whose_largest_tensor_exceeds_the_bucket(monkeypatch):
    use_ipc_standins(monkeypatch)
    packed = load_packed_tensor(None)
    learner, engine_model = build_model(seed=1).eval(), build_model(seed=2).eval()
    source = LearnerWeights(learner, zero3=False)
    name, largest = source.largest()
    bucket = largest // 4  # as a 1.5B embedding is to a 64 MiB bucket, and more
    with pytest.raises(ValueError, match="exceeds buffer_size_bytes"):
        list(packed.packed_ipc_producer(iter(source), FAKE_GPU_UUID, lambda i: i[1], bucket))
    buffer = transfer_buffer_bytes(bucket, largest)

    to_engine, from_engine = queue.Queue(), queue.Queue()
    engine = EngineStandIn(engine_model, packed, device_index=None)
    finished = {}

    def serve():
        while True:
            kind, payload = to_engine.get()
            if kind == "chunk":
                engine.receive(payload)
                from_engine.put(("ok", None))
            else:
                finished.update(engine.finish(payload))
                return

    thread = threading.Thread(target=serve)
    thread.start()
    sent = send_packed(source, packed, buffer, FAKE_GPU_UUID, to_engine, from_engine)
    manifest = start_manifest(1, source.names(), learner, learner.config.vocab_size)
    to_engine.put(("finish", list(manifest.probe_token_ids)))
    thread.join(timeout=60)

    total = sum(t.numel() * t.element_size() for t in learner.state_dict().values())
    assert sent["bytes"] == total and sent["chunks"] > 1
    for pname, tensor in learner.state_dict().items():  # the engine now holds the learner's
        assert torch.equal(engine_model.state_dict()[pname], tensor), pname
    assert len(finished["digests"]) == len(learner.state_dict())
    report = probe_report(list(manifest.probe_logprobs), finished["probe"])
    assert set(report) == {"eager"}  # FlashAttention's kernel only on a GPU
    assert report["eager"]["within_tolerance"] and report["eager"]["max_abs_diff"] < 1e-4
