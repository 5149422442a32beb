"""The vLLM side of weight sync: a worker extension that reloads weights in place.

``WeightReceiver`` is passed to ``vllm.LLM(worker_extension_cls=...)`` and runs inside the
engine's worker process; it imports nothing of duet's learner (no DeepSpeed in the engine).

CPU path (runs here): the rollout actor receives the learner's safetensors buckets through
the Ray object store as read-only views of its shared memory and checks each bucket's
digest. With the engine core in the actor's own process (duet's default), tensors are
zero-copy views into those buckets (``tensor_views``) handed to ``duet_reload_tensors``;
with vLLM's separate engine process, the buckets are written to node-local files
(``/dev/shm`` when available) and ``duet_reload`` streams them. Either way the worker feeds
``model_runner.reload_weights`` (layer-wise in-place reload in checkpoint format, which also
redoes the CPU backend's weight repacking), which makes the only copy of the bytes.

The GPU transports (vLLM's own weight-transfer engines) are not wired yet; see the README's
status table.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence, Tuple


class WeightReceiver:
    """vLLM worker extension: methods callable through ``LLM.collective_rpc``."""

    def duet_pid(self) -> int:
        """The process the engine's worker runs in (in the actor's, or its own)."""
        return os.getpid()

    def duet_reload(self, paths: Sequence[str]) -> int:
        """Reload the model from safetensors bucket files in place; returns tensors loaded."""
        from safetensors import safe_open

        count = 0

        def tensors() -> Iterator[Tuple[str, object]]:
            nonlocal count
            for path in paths:
                with safe_open(path, framework="pt") as fh:
                    for name in fh.keys():
                        count += 1
                        yield name, fh.get_tensor(name)

        self.model_runner.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return count

    def duet_reload_tensors(self, named: Sequence[Tuple[str, object]]) -> int:
        """Reload from (name, tensor) pairs; only when the engine shares the caller's process
        (across processes, vLLM's rpc serialisation turns tensors into lists).

        The pairs may be views of memory the caller frees afterwards, so the engine must
        have copied them: a parameter left pointing into them is an error, not a crash later.
        """
        self.model_runner.reload_weights(weights_iterator=iter(named), is_checkpoint_format=True)
        spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
                       for _, t in named if t.numel())
        for pname, param in self.model_runner.model.named_parameters():
            ptr = param.data_ptr()
            if any(lo <= ptr < hi for lo, hi in spans):
                raise RuntimeError(f"engine parameter {pname} still aliases the sync payload "
                                   "after reload; refusing to use a borrowed buffer")
        return len(named)
