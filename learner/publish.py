"""The learner's side of a weight sync: its weights as a stream, the engines as a client, and
the transports between them.

Shaped on vLLM's trainer-side API (``vllm.distributed.weight_transfer``) so that its own
engines plug in: a *source* with ``metadata()`` and a fresh iteration per pass, a *client*
with ``init_weight_transfer_engine`` / ``start_weight_update`` / ``update_weights`` /
``finish_weight_update``, and a send that runs on every rank — rank 0 sends, the others only
join ZeRO-3's gathers, one tensor at a time.

- ``object_store``: duet's sender. Tensors are packed into safetensors buckets as they are
  gathered; each bucket is ``ray.put`` and loaded by every engine while the next one is
  packed, with at most ``IN_FLIGHT`` outstanding, so a sync's extra memory is a few buckets
  whatever the model's size (``peak_staged_bytes`` reports it).
- ``nccl`` / ``ipc``: vLLM's ``NCCLTrainerWeightTransferEngine`` and
  ``IPCTrainerWeightTransferEngine``, created once per learner and engine set and reused;
  the client gives each engine its own rank in the NCCL group (vLLM's default assumes one
  engine).

Every transport starts with the manifest (version, tensor names, probe) and ends with each
engine checking that every tensor arrived and running the probe.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from cluster.contract.weights import (
    WeightManifest,
    WeightSyncError,
    as_payload,
    digest,
    marked_buckets,
)

IN_FLIGHT = 2  # buckets loading while the next is packed: enough to overlap, few to hold


@dataclass(frozen=True)
class TensorMeta:
    """One tensor as vLLM's ``ParamMeta``: name, dtype on the wire, full shape."""

    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]


class LearnerWeights:
    """The model's full tensors in ``state_dict`` order (vLLM's ``WeightSource`` protocol).

    Under ZeRO-3 each parameter is gathered on its own (a collective every rank joins in the
    same order) and copied out before it is released again, so no rank holds the whole
    model at once. Tied tensors appear under each of their names.
    """

    def __init__(self, module: torch.nn.Module, zero3: bool) -> None:
        self.module, self.zero3 = module, zero3

    def _tensors(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict(keep_vars=True)

    def metadata(self) -> List[TensorMeta]:
        return [TensorMeta(name, t.dtype, tuple(getattr(t, "ds_shape", t.shape)))
                for name, t in self._tensors().items()]

    def names(self) -> List[str]:
        return list(self._tensors())

    def __iter__(self) -> Iterator[Tuple[str, torch.Tensor]]:
        for name, tensor in self._tensors().items():
            if self.zero3 and hasattr(tensor, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                    full = tensor.data.detach().clone()
                yield name, full
            else:
                yield name, tensor.detach()


class EngineClient:
    """The rollout actors as vLLM's ``VLLMWeightSyncClient``, plus duet's bucket calls.

    Every call fans out to the actors and waits for all. ``strict``: the first error
    raises (vLLM's transports, where one missing peer stalls the group); otherwise an
    actor that fails is recorded in ``errors`` and left out of the rest of the update, so
    the others finish and the driver resends to it alone.
    """

    def __init__(self, actors: Sequence[Any], backend: str, strict: bool) -> None:
        self.actors, self.backend, self.strict = list(actors), backend, strict
        self.manifest: Optional[WeightManifest] = None
        self.verify = True
        self.errors: Dict[int, BaseException] = {}
        self.timings: Dict[int, Dict[str, float]] = {}

    def reset(self, manifest: WeightManifest, verify: bool = True) -> None:
        """A new update: ``verify`` False lets each engine run the probe in its next call
        rather than at the finish (``RolloutWorker.finish_weight_update``)."""
        self.manifest, self.verify, self.errors, self.timings = manifest, verify, {}, {}

    def _live(self) -> List[Tuple[int, Any]]:
        return [(i, a) for i, a in enumerate(self.actors) if i not in self.errors]

    def submit(self, method: str, *args, per_actor=None) -> Dict[int, Any]:
        """Start ``method`` on every live actor; ``per_actor(i, args)`` may vary the args."""
        return {i: getattr(a, method).remote(*(per_actor(i, args) if per_actor else args))
                for i, a in self._live()}

    def wait(self, futures: Dict[int, Any]) -> Dict[int, Any]:
        import ray

        out = {}
        for i, future in futures.items():
            try:
                out[i] = ray.get(future)
            except Exception as err:  # noqa: BLE001 - recorded per actor, or raised below
                err = getattr(err, "cause", None) or err  # without Ray's wrapping
                if self.strict:
                    raise WeightSyncError(f"rollout actor {i}: {err}") from None
                self.errors.setdefault(i, err)
        return out

    # vLLM's VLLMWeightSyncClient: the four calls its trainer engines make.

    def init_weight_transfer_engine(self, init_info: Dict[str, Any]) -> None:
        def own_rank(i: int, args: tuple) -> tuple:
            info = dict(args[1])
            if "rank_offset" in info:  # one NCCL rank per engine, after the sender's 0
                info["rank_offset"] = info["rank_offset"] + i
            return (args[0], info)

        self.wait(self.submit("init_weight_transfer", self.backend, init_info,
                              per_actor=own_rank))

    def start_weight_update(self) -> None:
        self.wait(self.submit("start_weight_update", self.manifest))

    def update_weights(self, update_info: Dict[str, Any]) -> None:
        self.wait(self.submit("transfer_update", update_info))

    def finish_weight_update(self, weight_version: Optional[str] = None) -> None:
        self.timings.update(self.wait(self.submit("finish_weight_update", self.verify)))


def send_buckets(source: LearnerWeights, client: Optional[EngineClient], bucket_bytes: int
                 ) -> Dict[str, Any]:
    """The object-store transport, on every rank (``client`` only on rank 0).

    Returns the digests, byte count and ``peak_staged_bytes``: the most bucket bytes put
    in the store and not yet loaded by every engine, at any moment (the bucket being packed
    included).
    """
    import ray

    if client is None:  # not the sender: join the gathers, ship nothing
        for _ in source:
            pass
        return {}
    # Not awaited: an actor runs its calls in the order they were made, so the buckets
    # queue up behind the start; its errors surface with the first wait.
    # Saying "buckets" lets each engine begin its reload while the first bucket is packed.
    outstanding: deque = deque([(client.submit("start_weight_update", client.manifest,
                                               "buckets"), 0)])
    digests: List[str] = []
    staged = peak = total = 0
    finish = None
    for index, (data, _names, last) in enumerate(marked_buckets(iter(source), bucket_bytes)):
        size = len(data)
        peak = max(peak, staged + size)
        ref = ray.put(as_payload(data))
        digests.append(digest(data))
        del data
        staged += size
        total += size
        # The last bucket's call also finishes the update: one engine call fewer.
        futures = client.submit("load_bucket", index, digests[-1], [ref],
                                client.verify if last else None)
        if last:
            finish = futures
        outstanding.append((futures, size))
        del ref  # the engines' loads hold it now; it is freed once they are done
        while len(outstanding) >= IN_FLIGHT:
            futures, size = outstanding.popleft()
            client.wait(futures)
            staged -= size
    if finish is None:  # no tensors at all: the finish still says what is missing
        finish = client.submit("finish_weight_update", client.verify)
    for futures, _ in outstanding:
        client.wait(futures)
    client.timings.update(client.wait(finish))
    return {"digests": digests, "bytes": total, "peak_staged_bytes": peak}


class VllmSender:
    """vLLM's trainer-side engine for ``nccl`` or ``ipc``, kept across syncs.

    ``packed``: tensors travel packed into buffers of ``buffer_bytes`` (vLLM's packed
    producer; for nccl, a few buffers in flight). Unpacked ipc exports every tensor where it
    lies, with no staging copy — right unless the source copies (ZeRO-3 gathers do).
    """

    def __init__(self, backend: str, rank: int, source: LearnerWeights,
                 client: Optional[EngineClient], address: str, packed: bool,
                 buffer_bytes: int) -> None:
        """``client``: the engines, on rank 0 only; ``address``: where rank 0 listens."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        if backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            engines = len(client.actors) if client is not None else 0
            info = NCCLTrainerInitInfo(master_address=address, master_port=free_port(),
                                       world_size=1 + engines, rank=rank, packed=packed,
                                       packed_buffer_size_bytes=buffer_bytes)
        elif backend == "ipc":
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            info = IPCTrainerInitInfo(rank=rank, packed=packed,
                                      packed_buffer_size_bytes=buffer_bytes)
        else:
            raise ValueError(f"no vLLM weight transfer for {backend!r}")
        self.client = client
        self.engine = WeightTransferTrainerFactory.trainer_init(
            info, client=client if client is not None else _NoClient(), source=source)

    def send(self) -> Dict[str, Any]:
        self.engine.send_weights()
        return {}

    def shutdown(self) -> None:
        self.engine.shutdown()


class _NoClient:
    """What a non-sender rank hands vLLM's trainer engine: it never calls it."""

    def init_weight_transfer_engine(self, init_info):  # pragma: no cover - sender only
        raise AssertionError("only rank 0 drives the engines")

    start_weight_update = update_weights = finish_weight_update = init_weight_transfer_engine


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]

