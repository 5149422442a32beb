"""Stand-ins for what vLLM's weight-transfer classes need from CUDA and NCCL, so that those
classes themselves run on a CPU machine.

Only the device layer is replaced; vLLM's trainer and engine classes, its packing and
metadata, its layer-wise reload and duet's source, client and verification all run for real.

- ``GlooGroup``: the NCCL communicator's ``broadcast(tensor, src, stream)`` over a gloo
  process group of its own (a TCP store rendezvous, as vLLM's ``StatelessProcessGroup``).
  It records what went through it, so tests can compare both sides' chunk layout.
- CUDA streams, ``torch.accelerator`` device index and synchronisation: no-ops.
- CUDA-IPC: ``reduce_tensor`` / ``rebuild_cuda_tensor`` through an in-process registry
  (the trainer and the engine share the test's process), keyed like vLLM's handles by a
  GPU UUID; packed IPC's staging buffer in host memory.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
from typing import Dict, List

import torch
import torch.distributed as dist

FAKE_GPU_UUID = "GPU-standin-0000"


class GlooGroup:
    """What vLLM's ``PyNcclCommunicator`` offers a transfer engine, over gloo."""

    log: Dict[int, List[int]] = {}  # rank -> bytes of each broadcast, in order

    def __init__(self, address: str, port: int, rank: int, world_size: int) -> None:
        store = dist.TCPStore(address, port, world_size, is_master=rank == 0,
                              timeout=datetime.timedelta(seconds=60))
        self.rank = rank
        self.group = dist.ProcessGroupGloo(store, rank, world_size)
        GlooGroup.log[rank] = []

    def broadcast(self, tensor: torch.Tensor, src: int, stream=None) -> None:
        flat = tensor.view(-1)
        # gloo broadcasts fixed-width types; weights travel as raw bytes either way.
        raw = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        self.group.broadcast([raw], opts).wait()
        GlooGroup.log[self.rank].append(raw.numel())

    def destroy(self) -> None:
        self.group = None


class _NullStream:
    def synchronize(self) -> None:
        pass


def use_nccl_standins(monkeypatch) -> None:
    """vLLM's NCCL transfer engines, both sides, with ``GlooGroup`` for the communicator."""
    from vllm.distributed.weight_transfer import nccl_engine, packed_tensor

    GlooGroup.log = {}
    monkeypatch.setattr(nccl_engine, "open_trainer_endpoint", lambda info: GlooGroup(
        info.master_address, info.master_port, 0, info.world_size))
    monkeypatch.setattr(nccl_engine, "worker_init_process_group", lambda info, parallel: GlooGroup(
        info.master_address, info.master_port, info.rank_offset + parallel.rank,
        info.world_size))
    monkeypatch.setattr(packed_tensor, "_get_streams",
                        lambda device, n: tuple(_NullStream() for _ in range(n)))
    _no_cuda_device(monkeypatch)


def _no_cuda_device(monkeypatch) -> None:
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _NullStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "ipc_collect", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=0: type("Props", (), {"uuid": FAKE_GPU_UUID})())


class IpcRegistry:
    """In-process 'shared memory': the handle names a tensor the registry holds."""

    tensors: Dict[int, torch.Tensor] = {}
    exported: List[int] = []
    _ids = itertools.count()

    @classmethod
    def reduce_tensor(cls, tensor: torch.Tensor):
        key = next(cls._ids)
        cls.tensors[key] = tensor
        cls.exported.append(tensor.numel() * tensor.element_size())
        # vLLM overwrites index 6 (the device index) on the receiving side.
        return None, ("standin", key, None, None, None, None, 0)

    @classmethod
    def rebuild_cuda_tensor(cls, *args) -> torch.Tensor:
        return cls.tensors[args[1]]


def use_ipc_standins(monkeypatch) -> None:
    """vLLM's CUDA-IPC transfer engines, both sides, with ``IpcRegistry`` for the handles.
    Packed: the producer's staging buffer, which vLLM allocates on ``cuda``, is allocated
    in host memory instead (``torch.empty(..., device="cuda")`` only)."""
    import torch.multiprocessing.reductions as reductions
    from vllm.distributed.weight_transfer import ipc_engine, packed_tensor

    IpcRegistry.tensors, IpcRegistry.exported = {}, []
    for module in (ipc_engine, packed_tensor):
        monkeypatch.setattr(module, "reduce_tensor", IpcRegistry.reduce_tensor)
    monkeypatch.setattr(ipc_engine, "rebuild_cuda_tensor", IpcRegistry.rebuild_cuda_tensor)
    monkeypatch.setattr(reductions, "rebuild_cuda_tensor", IpcRegistry.rebuild_cuda_tensor)
    empty = torch.empty

    def host_empty(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", host_empty)
    _no_cuda_device(monkeypatch)
