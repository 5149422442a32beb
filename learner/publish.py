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
engine checking that every tensor arrived and running the probe. Every wait on an engine is
bounded (``EngineClient.timeout_s``); for ``nccl`` / ``ipc``, ``VllmTransport`` checks each
engine's state and has every engine acknowledge the update's start before any tensor moves,
and drops the trainer engine after any failure so the next sync builds a fresh one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
    model at once. Tied tensors appear under each of their names. ``drain`` finishes a pass
    a failed send left part way, so the other ranks' gathers are not left waiting.
    """

    def __init__(self, module: torch.nn.Module, zero3: bool) -> None:
        self.module, self.zero3 = module, zero3
        self._pass: Optional[Iterator[Tuple[str, torch.Tensor]]] = None

    def _tensors(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict(keep_vars=True)

    def metadata(self) -> List[TensorMeta]:
        return [TensorMeta(name, t.dtype, tuple(getattr(t, "ds_shape", t.shape)))
                for name, t in self._tensors().items()]

    def names(self) -> List[str]:
        return list(self._tensors())

    def largest(self) -> Tuple[str, int]:
        """The largest tensor a pass yields: its name and bytes."""
        sizes = {m.name: m.dtype.itemsize * math.prod(m.shape) for m in self.metadata()}
        name = max(sizes, key=sizes.get)
        return name, sizes[name]

    def __iter__(self) -> Iterator[Tuple[str, torch.Tensor]]:
        self._pass = self._gathered()
        return self._pass

    def drain(self) -> None:
        """Run the rest of the current pass (all of one, if none started) without using
        it: under ZeRO-3 every rank must join every gather, the sender included, even when
        its send failed part way. Without ZeRO-3 there is nothing to join."""
        if self.zero3:
            for _ in (self._pass if self._pass is not None else self._gathered()):
                pass
        self._pass = None

    def _gathered(self) -> Iterator[Tuple[str, torch.Tensor]]:
        for name, tensor in self._tensors().items():
            if self.zero3 and hasattr(tensor, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                    full = tensor.data.detach().clone()
                yield name, full
            else:
                yield name, tensor.detach()


class AdapterWeights(LearnerWeights):
    """A LoRA model's adapter tensors only, under the names PEFT saves them (``learner.adapters``):
    the engines keep their base weights and load the adapter as a vLLM LoRA."""

    def _tensors(self) -> Dict[str, torch.Tensor]:
        from learner.adapters import adapter_parameters

        return dict(adapter_parameters(self.module))

    def adapter_config(self) -> str:
        from learner.adapters import adapter_config_json

        return adapter_config_json(self.module)


class EngineClient:
    """The rollout actors as vLLM's ``VLLMWeightSyncClient``, plus duet's bucket calls.

    Every call fans out to the actors and waits for all. ``strict``: the first error
    raises (vLLM's transports, where one missing peer stalls the group); otherwise an
    actor that fails is recorded in ``errors`` and left out of the rest of the update, so
    the others finish and the driver resends to it alone.
    """

    def __init__(self, actors: Sequence[Any], backend: str, strict: bool,
                 timeout_s: Optional[float] = None) -> None:
        """``timeout_s``: how long one wait on an actor may take (None: unbounded); an
        actor that takes longer has failed (``WeightSyncError`` naming it)."""
        self.actors, self.backend, self.strict = list(actors), backend, strict
        self.timeout_s = timeout_s
        self.manifest: Optional[WeightManifest] = None
        self.verify = True
        self.started = False  # every engine acknowledged this update's start
        self.errors: Dict[int, BaseException] = {}
        self.timings: Dict[int, Dict[str, float]] = {}

    def reset(self, manifest: WeightManifest, verify: bool = True) -> None:
        """A new update: ``verify`` False lets each engine run the probe in its next call
        rather than at the finish (``RolloutWorker.finish_weight_update``)."""
        self.manifest, self.verify, self.errors, self.timings = manifest, verify, {}, {}
        self.started = False

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
                out[i] = ray.get(future, timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:
                err = WeightSyncError(f"no answer within {self.timeout_s:g} s "
                                      "(rollout.sync_timeout_s)")
                if self.strict:
                    raise WeightSyncError(f"rollout actor {i}: {err}") from None
                self.errors.setdefault(i, err)
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
        """Every engine wakes and begins the update, and says so. Made before the
        transfer (``VllmTransport``), so vLLM's own call inside the send is then a no-op:
        no tensor moves toward an engine that has not acknowledged."""
        if not self.started:
            self.wait(self.submit("start_weight_update", self.manifest))
            self.started = True

    def transfer_states(self) -> Dict[int, Dict[str, Any]]:
        """Each engine's process and the transport it has joined (``RolloutWorker.transfer_state``)."""
        return self.wait(self.submit("transfer_state"))

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


def transfer_buffer_bytes(bucket_bytes: int, largest_bytes: int) -> int:
    """A packed transport's buffer: ``bucket_bytes``, or the largest tensor where that is
    bigger. vLLM's packed IPC producer refuses a tensor larger than its buffer (the
    embeddings of Qwen2.5-Math-1.5B are ~467 MB, of 7B ~1.09 GB, against 64 MiB buckets),
    and its NCCL producer sends one as an over-size chunk anyway."""
    return max(bucket_bytes, largest_bytes)


class VllmSender:
    """vLLM's trainer-side engine for ``nccl`` or ``ipc``, kept across syncs.

    ``packed``: tensors travel packed into buffers of ``transfer_buffer_bytes`` (vLLM's
    packed producer; for nccl, a few buffers in flight). Unpacked ipc exports every tensor
    where it lies, with no staging copy — right unless the source copies (ZeRO-3 gathers do).
    """

    def __init__(self, backend: str, rank: int, source: LearnerWeights,
                 client: Optional[EngineClient], address: str, packed: bool,
                 buffer_bytes: int) -> None:
        """``client``: the engines, on rank 0 only; ``address``: where rank 0 listens;
        ``buffer_bytes``: the packed buffer's least size (grown to the largest tensor)."""
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        largest, largest_bytes = source.largest()
        self.buffer_bytes = transfer_buffer_bytes(buffer_bytes, largest_bytes) if packed else 0
        if packed:
            check_buffer_fits(backend, self.buffer_bytes, largest, largest_bytes)
        if backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            engines = len(client.actors) if client is not None else 0
            info = NCCLTrainerInitInfo(master_address=address, master_port=free_port(),
                                       world_size=1 + engines, rank=rank, packed=packed,
                                       packed_buffer_size_bytes=self.buffer_bytes or buffer_bytes)
        elif backend == "ipc":
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            info = IPCTrainerInitInfo(rank=rank, packed=packed,
                                      packed_buffer_size_bytes=self.buffer_bytes or buffer_bytes)
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


def check_buffer_fits(backend: str, buffer_bytes: int, largest: str, largest_bytes: int) -> None:
    """On a GPU, refuse a packed buffer the device has no room for, before anything moves,
    with the sizes and what to change (``duet train --dry-run`` plans it: ``ipc buffer``)."""
    if not torch.cuda.is_available():
        return
    free, _ = torch.cuda.mem_get_info()
    if buffer_bytes > free:
        gib = 2**30
        raise WeightSyncError(
            f"the packed {backend} buffer needs {buffer_bytes / gib:.2f} GiB (the largest "
            f"tensor, {largest}, is {largest_bytes / gib:.2f} GiB) and this GPU has "
            f"{free / gib:.2f} GiB free: lower rollout.gpu_memory_utilization or "
            "learner.micro_batch_tokens (see the memory plan of duet train --dry-run)")


class VllmTransport:
    """One learner rank's side of the ``nccl`` / ``ipc`` transports across syncs: the
    trainer engine (``VllmSender``), rebuilt whenever it cannot be trusted.

    A sync, on every rank: rank 0 asks each engine for its state (process, joined
    transport) and has each acknowledge the update's start, every wait bounded by the
    client's timeout; the ranks then agree (``agree``: rank 0's value on every rank) on
    going on, and on whether to build a new trainer engine — none yet, another engine set,
    an engine restarted (a new process, no transport joined), or the last send failed.
    Only then does any tensor move. A send that fails drops the trainer engine on the rank
    it failed on (vLLM's NCCL group is unusable after a failure), drains the source so
    ZeRO-3's gathers on the other ranks complete, and raises ``WeightSyncError``.
    """

    def __init__(self, backend: str, rank: int, address: Callable[[], str],
                 agree: Callable[[Any], Any], timeout_s: Optional[float],
                 client_cls: type = EngineClient) -> None:
        """``address``: where rank 0 listens (asked on each build); ``agree``: a collective
        that returns rank 0's value on every rank; ``client_cls``: how rank 0 reaches the
        engines (``EngineClient``: Ray actors)."""
        self.backend, self.rank, self.address, self.agree = backend, rank, address, agree
        self.timeout_s, self.client_cls = timeout_s, client_cls
        self.sender: Optional[VllmSender] = None
        self.key: Optional[tuple] = None
        self.builds = 0  # trainer engines built, for tests and logs

    def send(self, source: LearnerWeights, actors: Sequence[Any], manifest, verify: bool,
             packed: bool, buffer_bytes: int) -> Optional[EngineClient]:
        """Send ``source`` to ``actors``; returns the client with each engine's timings
        (rank 0; None elsewhere). Raises ``WeightSyncError`` on rank 0 when it fails."""
        plan = self.agree(self._prepare(actors, manifest, verify) if self.rank == 0 else None)
        if plan[0] == "fail":
            self.drop()
            if self.rank == 0:
                raise WeightSyncError(plan[1])
            return None
        try:
            if plan[0] == "build" or self.sender is None:
                self.drop()
                client = self._client if self.rank == 0 else None
                self.sender = VllmSender(self.backend, self.rank, source, client,
                                         self.address(), packed, buffer_bytes)
                self.key, self.builds = plan[1], self.builds + 1
            else:  # kept: this sync's source (the pass ``drain`` finishes), its client
                self.sender.engine.source = source
                if self.rank == 0:
                    self.sender.client.reset(manifest, verify)
                    self.sender.client.started = True
            self.sender.send()
        except Exception as err:  # noqa: BLE001 - every failure: drop, drain, say which
            self.drop()
            source.drain()
            if isinstance(err, WeightSyncError):
                raise
            raise WeightSyncError(f"{self.backend} weight transfer failed: "
                                  f"{type(err).__name__}: {err}") from err
        return self.sender.client if self.rank == 0 else None

    def _prepare(self, actors: Sequence[Any], manifest, verify: bool) -> tuple:
        """Rank 0: ``("fail", why)``, or ``("build" | "keep", key)`` once every engine has
        said where it stands and acknowledged the update's start."""
        client = self.client_cls(actors, self.backend, strict=True, timeout_s=self.timeout_s)
        try:
            states = client.transfer_states()
            key = (self.backend,) + tuple(
                (str(getattr(a, "_actor_id", id(a))), states[i]["pid"])
                for i, a in enumerate(actors))
            stale = any(states[i]["backend"] != self.backend for i in states)
            build = self.sender is None or key != self.key or stale
            client.reset(manifest, verify)
            client.start_weight_update()
        except WeightSyncError as err:
            return ("fail", f"{self.backend} weight sync not started: {err}")
        self._client = client
        return ("build" if build else "keep", key)

    def drop(self) -> None:
        """Shut the trainer engine down (a failed one may raise doing so: it is gone
        either way); the next sync builds a fresh one."""
        sender, self.sender, self.key = self.sender, None, None
        if sender is not None:
            try:
                sender.shutdown()
            except Exception:  # noqa: BLE001 - nothing left to save in a broken group
                pass


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

