"""The worker extension's pieces without an engine.

``tensor_views`` and the two reload entry points are checked here against a recording
model runner (the real engine path runs in test_rollout.py).
"""

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from actors.weight_load import EngineWeights
from actors.weight_receiver import WeightReceiver
from cluster.contract.weights import tensor_views


def sample_tensors():
    return {
        "w": torch.randn(3, 5),
        "b16": torch.randn(4, 2).to(torch.bfloat16),
        "ids": torch.arange(7, dtype=torch.int64),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


def test_tensor_views_equal_safetensors_load_without_copying():
    data = save(sample_tensors())
    buffer = np.frombuffer(data, dtype=np.uint8)  # read-only, as Ray hands it out
    views = dict(tensor_views(buffer))
    want = load(data)
    assert views.keys() == want.keys()
    for name, tensor in want.items():
        assert views[name].dtype == tensor.dtype and views[name].shape == tensor.shape
        assert torch.equal(views[name], tensor)
    lo = buffer.__array_interface__["data"][0]
    assert lo <= views["w"].data_ptr() < lo + len(buffer)  # a view, not a copy


def test_tensor_views_reject_a_truncated_buffer():
    data = save({"w": torch.ones(2)})
    with pytest.raises(ValueError, match="no header"):
        list(tensor_views(data[:4]))
    with pytest.raises(ValueError, match="exceeds"):
        list(tensor_views(data[:12]))


class RecordingRunner:
    """Stands in for vLLM's model runner: keeps (a copy of, or a reference to) each tensor."""

    def __init__(self, copy: bool) -> None:
        self.copy = copy
        self.model = torch.nn.Module()

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        assert is_checkpoint_format
        for name, tensor in weights_iterator:
            kept = tensor.clone() if self.copy else tensor
            self.model.register_parameter(name.replace(".", "_"),
                                          torch.nn.Parameter(kept, requires_grad=False))


def receiver(copy=True):
    r = WeightReceiver()
    r.model_runner = RecordingRunner(copy)
    return r


def test_reload_tensors_copies_and_refuses_aliasing():
    named = list(tensor_views(np.frombuffer(save({"w": torch.ones(4)}), dtype=np.uint8)))
    r = receiver(copy=True)
    assert r.duet_reload_tensors(named) == 1
    assert torch.equal(r.model_runner.model.w, torch.ones(4))
    with pytest.raises(RuntimeError, match="aliases the sync payload"):
        receiver(copy=False).duet_reload_tensors(named)


def test_file_path_writes_buckets_reloads_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("DUET_SYNC_DIR", str(tmp_path))
    r = receiver()

    class SeparateProcessLLM:  # what collective_rpc does across vLLM's engine process
        def collective_rpc(self, method, args=()):
            return [getattr(r, method)(*args)]

    weights = EngineWeights(SeparateProcessLLM(), engine_in_process=False)
    tensors = sample_tensors()
    buckets = [save({k: tensors[k]}) for k in ("w", "ids")]
    weights.reload_from_files(3, [memoryview(b) for b in buckets])
    assert torch.equal(r.model_runner.model.w, tensors["w"])
    assert torch.equal(r.model_runner.model.ids, tensors["ids"])
    assert not list(tmp_path.rglob("*.safetensors"))  # bucket files removed
