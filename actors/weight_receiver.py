"""The vLLM side of weight sync: a worker extension that reloads weights in place.

``WeightReceiver`` is passed to ``vllm.LLM(worker_extension_cls=...)`` and runs inside the
engine's worker process; it imports nothing of duet's learner (no DeepSpeed in the engine).

Every transport follows vLLM's own update lifecycle: begin (``initialize_layerwise_reload``),
any number of chunks into ``model.load_weights`` (checkpoint format; a layer is processed —
on CPU, repacked — once all its tensors arrived), finish (``finalize_layerwise_reload``).
That is what lets weights arrive a bucket at a time, never the whole model at once. A small
model on CPU takes a shorter road to the same result (``actors.packed_reload``).

- object store (CPU and fallback): the rollout actor resolves each safetensors bucket from
  Ray's shared memory and checks its digest; with the engine core in the actor's process
  (duet's default) the tensors are zero-copy views (``duet_load_tensors``), with vLLM's
  separate engine process the bucket is written to a node-local file (``duet_load_files``).
- nccl / ipc (GPUs): vLLM's own engine-side classes (``WeightTransferEngineFactory``:
  ``NCCLWeightTransferEngine``, ``IPCWeightTransferEngine``) receive what learner rank 0
  sends through vLLM's trainer-side classes; duet hosts them here (``duet_transfer_*``)
  because vLLM wires them only into its GPU worker, so the same code runs on every backend.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from actors.packed_reload import PackedReload

# What vLLM logs on every in-place update that is not news: the rotary table is computed
# from the config, never loaded, so its layer "fails to load" each time and keeps its
# values; the prefix cache is reset by design. At one update a step they would fill the
# engine's log (and keep Ray's log monitor busy) with lines a user should not act on.
ROUTINE_RELOAD_LOGS = {
    "vllm.model_executor.model_loader.reload.layerwise": ("%s: Failed to load weights",
                                                          ("RotaryEmbedding",)),
    "vllm.v1.core.block_pool": ("Successfully reset prefix cache", ()),
}


class RoutineReloadFilter(logging.Filter):
    """Drops exactly one routine record (message template and arguments) of one logger."""

    def __init__(self, msg: str, args: tuple) -> None:
        super().__init__()
        self.msg, self.args = msg, args

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == self.msg and tuple(record.args or ()) == self.args)


def quiet_routine_reload_logs() -> None:
    """Install the filters once per process (the engine's worker's)."""
    for name, (msg, args) in ROUTINE_RELOAD_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineReloadFilter) for f in logger.filters):
            logger.addFilter(RoutineReloadFilter(msg, args))


def under_engine_config(method):
    """Run a worker-extension entry point under the engine's own config
    (``set_current_vllm_config``), as vLLM's GPU worker runs its weight-transfer calls: a
    quantized or FP8 layer reads it while it reprocesses reloaded weights, and without it
    reads vLLM's defaults instead."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config):
            return method(self, *args, **kwargs)

    return wrapped


class WeightReceiver:
    """vLLM worker extension: methods callable through ``LLM.collective_rpc``. Every entry
    point that touches the weights runs under the engine's config (``under_engine_config``)."""

    def duet_pid(self) -> int:
        """The process the engine's worker runs in (in the actor's, or its own)."""
        return os.getpid()

    # ------------------------------------------------------------------ lifecycle

    def _duet_model(self):
        return self.model_runner.get_model()

    def _duet_packed(self) -> Optional[PackedReload]:
        """The small-CPU-model reload (``actors.packed_reload``), or None: built once."""
        if not hasattr(self, "_duet_packed_reload"):
            self._duet_packed_reload = PackedReload.build(self._duet_model())
        return self._duet_packed_reload

    @under_engine_config
    def duet_begin_reload(self) -> None:
        """Start an in-place update: on a small CPU model into stand-ins repacked at the
        finish, otherwise with vLLM's layer-wise reload (layers are reprocessed as their
        tensors complete)."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        quiet_routine_reload_logs()
        packed = self._duet_packed()
        if packed is not None:
            packed.begin()
        else:
            initialize_layerwise_reload(self._duet_model())
        self._duet_spans: List[Tuple[int, int]] = []

    @under_engine_config
    def duet_load_tensors(self, named: Sequence[Tuple[str, object]]) -> int:
        """Load (name, tensor) pairs; only when the engine shares the caller's process
        (across processes, vLLM's rpc serialisation turns tensors into lists)."""
        self._duet_load(iter(named))
        # Where the pairs lived: the caller frees that memory, so no parameter may keep it.
        self._duet_spans.extend((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
                                for _, t in named if t.numel())
        return len(named)

    @under_engine_config
    def duet_load_files(self, paths: Sequence[str]) -> int:
        """Load safetensors bucket files (the separate-engine-process path)."""
        from safetensors import safe_open

        count = 0

        def tensors() -> Iterator[Tuple[str, object]]:
            nonlocal count
            for path in paths:
                with safe_open(path, framework="pt") as fh:
                    for name in fh.keys():
                        count += 1
                        yield name, fh.get_tensor(name)

        self._duet_load(tensors())
        return count

    def _duet_load(self, named: Iterator[Tuple[str, object]]) -> None:
        packed = self._duet_packed()
        if packed is not None:
            packed.load(named)
        else:
            self._duet_model().load_weights(named)

    @under_engine_config
    def duet_finish_reload(self) -> None:
        """Process what is left and check that no parameter borrows a sync buffer."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        packed = self._duet_packed()
        if packed is not None:
            packed.finish()
        else:
            finalize_layerwise_reload(self._duet_model(), self.vllm_config.model_config)
        spans, self._duet_spans = sorted(getattr(self, "_duet_spans", [])), []
        for pname, param in self._duet_model().named_parameters():
            ptr = param.data_ptr()
            if any(lo <= ptr < hi for lo, hi in spans):
                raise RuntimeError(f"engine parameter {pname} still aliases the sync payload "
                                   "after reload; refusing to use a borrowed buffer")
        self._duet_reset_caches()

    def _duet_reset_caches(self) -> None:
        # What vLLM's own reload_weights invalidates besides the prefix cache.
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            getattr(self.model_runner, reset, lambda: None)()

    # ------------------------------------------------------------------ vLLM's transports

    @under_engine_config
    def duet_transfer_init(self, backend: str, init_info: Dict[str, Any]) -> None:
        """Create vLLM's engine-side transfer engine for ``backend`` and join the sender."""
        from vllm.config.weight_transfer import WeightTransferConfig
        from vllm.distributed.weight_transfer import WeightTransferEngineFactory

        old = getattr(self, "_duet_transfer", None)
        if old is not None:
            old.shutdown()
        engine = WeightTransferEngineFactory.create_engine(
            WeightTransferConfig(backend=backend), self.vllm_config, self.device,
            self._duet_model())
        self._duet_transfer = None
        engine.init_transfer_engine(engine.parse_init_info(init_info))
        self._duet_transfer = engine

    def _duet_engine(self):
        engine = getattr(self, "_duet_transfer", None)
        if engine is None:
            raise RuntimeError("no weight transfer engine: duet_transfer_init first")
        return engine

    @under_engine_config
    def duet_transfer_start(self) -> None:
        self._duet_engine().start_weight_update()

    @under_engine_config
    def duet_transfer_update(self, update_info: Dict[str, Any]) -> None:
        self._duet_engine().update_weights(update_info)

    @under_engine_config
    def duet_transfer_finish(self) -> None:
        self._duet_engine().finish_weight_update()
        self._duet_reset_caches()

    @under_engine_config
    def duet_transfer_shutdown(self) -> None:
        engine, self._duet_transfer = getattr(self, "_duet_transfer", None), None
        if engine is not None:
            engine.shutdown()
