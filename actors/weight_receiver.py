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

GPU path: vLLM's native weight-transfer API with the NCCL engine (``NcclWeightTransfer``
builds its requests). It cannot run on these machines; its request contract is unit-tested
against vLLM's own request classes, and the README's status table says it has not yet run
on a GPU.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from typing import Dict, Iterator, List, Sequence, Tuple

# safetensors dtype codes -> torch dtype names.
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}


def tensor_views(buffer) -> Iterator[Tuple[str, object]]:
    """(name, tensor) for each tensor of a safetensors buffer, as views of it (no copy).

    The tensors share the buffer's memory and are read-only when it is (Ray's store):
    only read them. Raises ValueError on a malformed header.
    """
    import torch

    view = memoryview(buffer).cast("B")
    if len(view) < 8:
        raise ValueError(f"safetensors buffer of {len(view)} bytes has no header")
    size = struct.unpack("<Q", view[:8])[0]
    if 8 + size > len(view):
        raise ValueError(f"safetensors header of {size} bytes exceeds the {len(view)}-byte buffer")
    header = json.loads(bytes(view[8:8 + size]))
    base = 8 + size
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, _DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        if count == 0:
            yield name, torch.empty(info["shape"], dtype=dtype)
            continue
        with warnings.catch_warnings():  # "buffer is not writable": read-only by design
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(view, dtype=dtype, count=count, offset=base + start)
        yield name, flat.view(info["shape"])


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


class NcclWeightTransfer:
    """Requests for vLLM's native NCCL weight transfer (GPU path; not yet run on a GPU).

    The learner's rank 0 joins the NCCL group as rank 0 and broadcasts tensors in the
    order of ``names``; each engine receives them through ``update_weights``.
    """

    def __init__(self, master_address: str, master_port: int, rank_offset: int,
                 world_size: int, packed: bool = True) -> None:
        self.init_info = {
            "master_address": master_address,
            "master_port": master_port,
            "rank_offset": rank_offset,
            "world_size": world_size,
            "packed": packed,
        }

    def init_request(self) -> Dict[str, object]:
        return {"init_info": dict(self.init_info)}

    @staticmethod
    def update_request(names: List[str], dtype_names: List[str], shapes: List[List[int]]
                       ) -> Dict[str, object]:
        if not len(names) == len(dtype_names) == len(shapes):
            raise ValueError("names, dtype_names and shapes must have one entry per tensor")
        return {"update_info": {"names": names, "dtype_names": dtype_names, "shapes": shapes}}

    def sync(self, llm, version: int, names: List[str], dtype_names: List[str],
             shapes: List[List[int]]) -> None:
        """One versioned update on an engine whose transfer engine is initialised."""
        llm.start_weight_update()
        llm.update_weights(self.update_request(names, dtype_names, shapes))
        llm.finish_weight_update(weight_version=str(version))
