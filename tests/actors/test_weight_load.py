"""The worker extension's pieces without an engine.

``tensor_views``, the load entry points and a streamed update's checks run here against a
recording model (the real engine path runs in test_rollout.py and test_transfer.py).
"""

import logging

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


class RecordingModel(torch.nn.Module):
    """Stands in for vLLM's model: keeps (a copy of, or a reference to) each tensor loaded."""

    def __init__(self, copy: bool) -> None:
        super().__init__()
        self.copy = copy

    def load_weights(self, weights):
        for name, tensor in weights:
            kept = tensor.clone() if self.copy else tensor
            self.register_parameter(name.replace(".", "_"),
                                    torch.nn.Parameter(kept, requires_grad=False))


class RecordingRunner:
    def __init__(self, copy: bool) -> None:
        self.model = RecordingModel(copy)

    def get_model(self):
        return self.model


@pytest.fixture(autouse=True)
def no_layerwise_bookkeeping(monkeypatch):
    """vLLM's layer-wise reload hooks need a real vLLM model; the recording one has none."""
    import vllm.model_executor.model_loader.reload as reload

    monkeypatch.setattr(reload, "initialize_layerwise_reload", lambda model: None)
    monkeypatch.setattr(reload, "finalize_layerwise_reload", lambda model, config: None)


def receiver(copy=True):
    r = WeightReceiver()
    r.model_runner = RecordingRunner(copy)
    r.vllm_config = type("Config", (), {"model_config": None})()
    return r


def test_loaded_tensors_are_copied_and_aliasing_is_refused():
    named = list(tensor_views(np.frombuffer(save({"w": torch.ones(4)}), dtype=np.uint8)))
    r = receiver(copy=True)
    r.duet_begin_reload()
    assert r.duet_load_tensors(named) == 1
    r.duet_finish_reload()
    assert torch.equal(r.model_runner.model.w, torch.ones(4))
    lazy = receiver(copy=False)
    lazy.duet_begin_reload()
    lazy.duet_load_tensors(named)
    with pytest.raises(RuntimeError, match="aliases the sync payload"):
        lazy.duet_finish_reload()


def test_file_path_writes_each_bucket_loads_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setenv("DUET_SYNC_DIR", str(tmp_path))
    r = receiver()

    class SeparateProcessLLM:  # what collective_rpc does across vLLM's engine process
        def collective_rpc(self, method, args=()):
            return [getattr(r, method)(*args)]

    weights = EngineWeights(SeparateProcessLLM(), engine_in_process=False)
    tensors = sample_tensors()
    buckets = [save({k: tensors[k]}) for k in ("w", "ids")]
    r.duet_begin_reload()
    for i, data in enumerate(buckets):
        weights.load_from_file(3, i, memoryview(data))
    r.duet_finish_reload()
    assert torch.equal(r.model_runner.model.w, tensors["w"])
    assert torch.equal(r.model_runner.model.ids, tensors["ids"])
    assert not list(tmp_path.rglob("*.safetensors"))  # bucket files removed


def test_a_streamed_update_checks_order_digests_and_completeness():
    """Buckets out of order, a corrupted one, or a tensor that never came are errors that
    name the version, and each leaves the engine needing a fresh update."""
    from cluster.contract.weights import WeightManifest, WeightSyncError, digest

    r = receiver()

    class InProcessLLM:
        def collective_rpc(self, method, args=()):
            return [getattr(r, method)(*args)]

        def reset_prefix_cache(self):
            pass

    weights = EngineWeights(InProcessLLM(), engine_in_process=True)
    buckets = [save({"w": torch.ones(2)}), save({"b": torch.zeros(3)})]
    manifest = WeightManifest(version=4, digests=(), total_bytes=0, names=("w", "b"))

    weights.begin(manifest)
    with pytest.raises(WeightSyncError, match="bucket 1 arrived where bucket 0 was due"):
        weights.load_bucket(1, digest(buckets[1]), buckets[1])
    weights.begin(manifest)
    with pytest.raises(WeightSyncError, match="version 4: bucket 0 is corrupted"):
        weights.load_bucket(0, digest(buckets[1]), buckets[0])
    with pytest.raises(WeightSyncError, match="no weight update in progress"):
        weights.load_bucket(1, digest(buckets[1]), buckets[1])
    weights.begin(manifest)
    weights.load_bucket(0, digest(buckets[0]), buckets[0])
    with pytest.raises(WeightSyncError, match="1 tensor.* never arrived .*e.g. b"):
        weights.finish()
    weights.begin(manifest)
    for i, data in enumerate(buckets):
        weights.load_bucket(i, digest(data), data)
    with pytest.raises(WeightSyncError, match="version 4: the manifest carries no probe"):
        weights.finish()  # unverifiable weights are never reported as loaded


def test_routine_reload_lines_are_dropped_and_nothing_else(caplog):
    """An update makes vLLM log that the rotary table "failed to load" (it is computed, and
    kept) and that the prefix cache was reset: every step, and neither is news. Once an
    update begins, exactly those two records are dropped; the same warning for a layer
    that holds weights still reaches the log."""
    from vllm.logger import init_logger

    layerwise = init_logger("vllm.model_executor.model_loader.reload.layerwise")
    block_pool = init_logger("vllm.v1.core.block_pool")
    receiver().duet_begin_reload()
    receiver().duet_begin_reload()  # installed once, however many updates
    assert sum(type(f).__name__ == "RoutineReloadFilter" for f in layerwise.filters) == 1
    with caplog.at_level(logging.INFO):
        layerwise.warning("%s: Failed to load weights", "RotaryEmbedding")
        block_pool.info("Successfully reset prefix cache")
        layerwise.warning("%s: Failed to load weights", "Qwen2MLP")
        block_pool.warning("Failed to reset prefix cache because some blocks (3) are not "
                           "freed yet")
    assert [r.getMessage() for r in caplog.records] == [
        "Qwen2MLP: Failed to load weights",
        "Failed to reset prefix cache because some blocks (3) are not freed yet"]


def test_a_sender_that_names_the_mode_starts_the_engine_before_the_first_chunk():
    """``start_weight_update(manifest, "buckets")``: the engine begins its reload at once,
    while the learner still packs the first bucket; the bucket then only loads. Without a
    mode the first chunk starts it, as before; an unknown mode is refused."""
    from cluster.contract.weights import WeightManifest, WeightSyncError, digest

    calls = []
    r = receiver()

    class InProcessLLM:
        def collective_rpc(self, method, args=()):
            calls.append(method)
            return [getattr(r, method)(*args)]

        def reset_prefix_cache(self):
            pass

    weights = EngineWeights(InProcessLLM(), engine_in_process=True)
    data = save({"w": torch.ones(2)})
    manifest = WeightManifest(version=5, digests=(), total_bytes=0, names=("w",))
    weights.begin(manifest, "buckets")
    assert calls == ["duet_begin_reload"]
    weights.load_bucket(0, digest(data), data)
    assert calls == ["duet_begin_reload", "duet_load_tensors"]

    calls.clear()
    weights.begin(manifest)
    assert calls == []
    weights.load_bucket(0, digest(data), data)
    assert calls == ["duet_begin_reload", "duet_load_tensors"]

    with pytest.raises(WeightSyncError, match="unknown weight update mode 'files'"):
        weights.begin(manifest, "files")
