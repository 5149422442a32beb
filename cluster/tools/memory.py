"""Per-GPU memory plan of a run: what a learner rank and an engine hold, and whether it fits.

Estimates, stated with their terms so a user can check them:

- learner rank (DeepSpeed ZeRO, Adam): the weights in the training dtype (partitioned over
  the ranks under ZeRO-3), an fp32 gradient partition, an fp32 master copy when training in
  bf16, Adam's two fp32 moments (partitioned), a frozen KL reference model when
  ``algo.kl_coef > 0``, the activations of one micro-batch (``learner.micro_batch_tokens``;
  ~34 x hidden bytes per token and layer in 16-bit, only the layer inputs kept under
  gradient checkpointing) and its logits: bf16, the fp32 copy and log-softmax, and their
  gradients (tokens x vocabulary x 16 B); under ZeRO-2 a full gradient buffer too;
- engine (vLLM): it reserves ``rollout.gpu_memory_utilization`` of the GPU, holds the
  weights in it and gives the rest, less a working margin, to the KV cache
  (2 x layers x kv heads x head dim x dtype bytes per token).

- weight transfer: a packed transport stages tensors in a buffer on the learner's GPU of
  ``BUCKET_BYTES``, or of the largest tensor where that is bigger (the embeddings:
  ``learner.publish.transfer_buffer_bytes``) — one for ``ipc`` under ZeRO-3, two in flight
  for ``nccl`` on rank 0;
- colocated (``cluster.placement=colocated``): a GPU holds an engine and a learner rank
  that take turns. While the rank trains, the engine sleeps at level 2 and holds nothing.
  When the engine wakes for the sync and generation, the rank has emptied its CUDA cache
  but keeps its resident state (weights, fp32 gradient partitions, master weights, Adam
  moments, a KL reference): that, the engine's whole budget and the ipc buffer must fit.

With ``cluster.gpu_memory_gib`` set, a plan whose GPUs cannot hold what is placed on them
is refused before anything starts. The learner terms are checked with ``LEARNER_HEADROOM``:
the one GPU measurement so far peaked 1.27x above them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from cluster.contract.config import RunConfig
from cluster.contract.weights import BUCKET_BYTES

GIB = 2**30
ENGINE_MARGIN = 0.1  # of an engine's reservation, for its activations and CUDA graphs
# The one measurement so far (benchmarks/results/2026-11-26-h100-learner_gpu.json: 1.54B,
# one ZeRO-2 rank, bf16, 8192-token micro-batches) peaked at 61.3 GiB where these terms give
# 48.4 (allocator caching and transient buffers): the fit check adds this much headroom.
LEARNER_HEADROOM = 1.3
# Per token and vocabulary entry: bf16 logits, their fp32 copy and log-softmax, and the
# gradients of both in the backward pass.
LOGIT_BYTES = 16


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know about a decoder-only transformer."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def largest_tensor(self, dtype_bytes: int) -> float:
        """Bytes of the largest weight tensor: the (input or output) embedding, or an MLP
        projection where that is wider."""
        return max(self.vocab, self.intermediate) * self.hidden * dtype_bytes

    @property
    def params(self) -> float:
        kv = self.kv_heads * self.head_dim
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv + self.hidden + 2 * kv
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * layer + embeddings + self.hidden


# Models the presets name, for planning on a machine that does not hold them.
KNOWN = {
    "qwen2.5-math-1.5b": ModelShape(1536, 28, 12, 2, 8960, 151936, True),
    "qwen2.5-math-7b": ModelShape(3584, 28, 28, 4, 18944, 152064, False),
}


def model_shape(config: RunConfig) -> ModelShape:
    """From ``model.path``'s config.json when it is there, else from a known model's name."""
    folder = Path(config.model.path)
    if (folder / "config.json").exists():
        c = json.loads((folder / "config.json").read_text())
        return ModelShape(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                          c.get("num_key_value_heads", c["num_attention_heads"]),
                          c.get("intermediate_size", 4 * c["hidden_size"]), c["vocab_size"],
                          bool(c.get("tie_word_embeddings", False)))
    name = folder.name.lower()
    for key, shape in KNOWN.items():
        if key in name:
            return shape
    raise ValueError(f"cannot tell the shape of model.path={config.model.path}: give a folder "
                     "with a config.json")


def adapter_params(config: RunConfig, shape: ModelShape) -> float:
    """LoRA's trainable parameters: rank x (inputs + outputs) of every adapted projection."""
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    sizes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
             "gate_proj": (h, shape.intermediate), "up_proj": (h, shape.intermediate),
             "down_proj": (shape.intermediate, h)}
    lora = config.model.lora
    return shape.layers * lora.rank * sum(sum(sizes[m]) for m in lora.target_modules
                                          if m in sizes)


def learner_bytes(config: RunConfig, shape: ModelShape) -> Dict[str, float]:
    """One learner rank's GPU memory by term (bytes). With LoRA the base is frozen in the
    training dtype and only the adapter has gradients, master weights and Adam moments."""
    if config.model.lora.rank > 0:
        return lora_learner_bytes(config, shape)
    return learner_full_terms(config, shape)


def learner_full_terms(config: RunConfig, shape: ModelShape) -> Dict[str, float]:
    """Full fine-tuning's terms (bytes)."""
    p, ranks = shape.params, config.learner.num_ranks
    b = 2 if config.model.dtype == "bfloat16" else 4
    tokens = config.learner.micro_batch_tokens
    per_layer = 34 * shape.hidden * tokens * b / 2  # 34 h bytes per token in 16-bit
    if config.model.gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden * b + per_layer
    else:
        activations = shape.layers * per_layer
    zero3 = config.learner.zero_stage == 3
    return {
        "weights": p * b / (ranks if zero3 else 1),
        # ZeRO-2 keeps a full gradient buffer in the training dtype as backward runs
        "gradients (training dtype)": 0.0 if zero3 else p * b,
        "gradients (fp32, partitioned)": 4 * p / ranks,
        "master weights (fp32, partitioned)": 4 * p / ranks if b == 2 else 0.0,
        "Adam moments (fp32, partitioned)": 8 * p / ranks,
        "KL reference": p * b if config.algo.kl_coef > 0 else 0.0,
        "activations (one micro-batch)": activations,
        "logits, forward and backward": tokens * shape.vocab * LOGIT_BYTES,
    }


# Terms a learner rank holds between steps; the rest (activations, logits, ZeRO-2's full
# gradient buffer) are freed when the step ends and returned to the device before a
# colocated engine wakes (``learner.rank.release_cached_memory``).
RESIDENT = ("weights", "gradients (fp32, partitioned)", "master weights (fp32, partitioned)",
            "Adam moments (fp32, partitioned)", "KL reference", "weights (frozen base)",
            "LoRA adapter", "adapter gradients", "adapter master weights (fp32)",
            "adapter Adam moments (fp32)")


def transfer_buffer(config: RunConfig, shape: ModelShape) -> Optional[Tuple[str, float]]:
    """The weight transfer's staging on a learner rank's GPU, as (what, bytes), or None
    where the transport stages nothing there."""
    transfer = config.rollout.weight_transfer
    b = 2 if config.model.dtype == "bfloat16" else 4
    size = max(BUCKET_BYTES, shape.largest_tensor(b))
    if transfer == "ipc":
        if config.learner.zero_stage == 3:  # ZeRO-3's gathered copies travel packed
            return "ipc buffer", size
        return "ipc buffer: none (ZeRO-2 exports each tensor where it lies)", 0.0
    if transfer == "nccl":
        return "nccl buffers (rank 0, 2 in flight)", 2 * size
    return None


def lora_learner_bytes(config: RunConfig, shape: ModelShape) -> Dict[str, float]:
    b = 2 if config.model.dtype == "bfloat16" else 4
    a, ranks = adapter_params(config, shape), config.learner.num_ranks
    zero3 = config.learner.zero_stage == 3
    full = learner_full_terms(config, shape)
    return {
        "weights (frozen base)": shape.params * b / (ranks if zero3 else 1),
        "LoRA adapter": a * b,
        "adapter gradients": a * b,
        "adapter master weights (fp32)": 4 * a if b == 2 else 0.0,
        "adapter Adam moments (fp32)": 8 * a,
        "KL reference": full["KL reference"],
        "activations (one micro-batch)": full["activations (one micro-batch)"],
        "logits, forward and backward": full["logits, forward and backward"],
    }


def kv_bytes_per_token(config: RunConfig, shape: ModelShape) -> float:
    b = 2 if config.model.dtype == "bfloat16" else 4
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * b


@dataclass
class MemoryPlan:
    """The per-GPU estimate and, when the GPU size is known, what does not fit."""

    learner: Dict[str, float]
    engine_weights: float
    engine_reserved: Optional[float]
    kv_sequences: Optional[float]
    gpu_bytes: Optional[float]
    problems: List[str]
    buffer: Optional[Tuple[str, float]] = None
    colocated: Optional[Dict[str, float]] = None

    def text(self) -> str:
        gib = lambda x: f"{x / GIB:,.1f} GiB"  # noqa: E731
        rank = sum(self.learner.values())
        lines = ["memory plan (per GPU, estimates; see cluster/tools/memory.py):",
                 f"  learner rank   : {gib(rank)} ({gib(rank * LEARNER_HEADROOM)} with the "
                 f"x{LEARNER_HEADROOM:g} headroom measured on an H100)"]
        lines += [f"    {k:34s} {gib(v)}" for k, v in self.learner.items() if v]
        lines.append(f"  engine weights : {gib(self.engine_weights)}")
        if self.engine_reserved is not None:
            lines.append(f"  engine reserves: {gib(self.engine_reserved)} (weights + KV cache "
                         f"for ~{self.kv_sequences:,.0f} sequences of model.max_model_len)")
        if self.buffer is not None:
            what, size = self.buffer
            lines.append(f"  {what:15s}: {gib(size)}" if size else f"  {what}")
        if self.colocated is not None:
            c = self.colocated
            lines.append(f"  colocated      : training {gib(c['training'])} (the rank, with "
                         f"headroom; the engine asleep, level 2); awake {gib(c['awake'])} "
                         f"(the rank's resident {gib(c['resident'])} + the engine's "
                         f"{gib(c['engine'])} + the buffer {gib(c['buffer'])})"
                         + (f", x{c['bundles']:g} per GPU" if c["bundles"] > 1 else ""))
        if self.gpu_bytes is None:
            lines.append("  GPU size not given: set cluster.gpu_memory_gib to check the fit")
        else:
            lines.append(f"  GPU            : {gib(self.gpu_bytes)} — "
                         + ("fits" if not self.problems else "DOES NOT FIT"))
        lines += [f"  ! {p}" for p in self.problems]
        return "\n".join(lines)


def memory_plan(config: RunConfig, shape: ModelShape) -> MemoryPlan:
    """Estimate each GPU's load under ``config``'s placement and check it against the GPU."""
    learner = learner_bytes(config, shape)
    rank_total = sum(learner.values())
    b = 2 if config.model.dtype == "bfloat16" else 4
    weights = shape.params * b
    gpu = config.cluster.gpu_memory_gib * GIB or None
    util = config.rollout.gpu_memory_utilization
    problems: List[str] = []
    reserved = sequences = colocated = None
    buffer = transfer_buffer(config, shape)
    buffer_bytes = buffer[1] if buffer is not None else 0.0
    if gpu is not None:
        reserved = util * gpu
        kv = reserved * (1 - ENGINE_MARGIN) - weights
        sequences = max(kv, 0) / kv_bytes_per_token(config, shape) / config.model.max_model_len
        if sequences < 1:
            problems.append(
                f"an engine's share ({util:g} of {gpu / GIB:g} GiB) cannot hold the "
                f"{weights / GIB:.1f} GiB of weights and one {config.model.max_model_len}-token "
                "sequence: raise rollout.gpu_memory_utilization, or give engines more GPU")
        share = config.cluster.gpus_per_actor
        per_gpu = max(1, math.floor(1 / share)) if share < 1 else 1
        if config.cluster.placement == "colocated":
            colocated = colocated_load(config, learner, reserved, buffer_bytes, per_gpu)
            problems += colocated_problems(config, colocated, gpu)
        else:
            # The worst GPU a packed placement can give: as many learner ranks as fit on
            # it, the rest engines (each reserving its share of the whole GPU).
            ranks = min(per_gpu, config.learner.num_ranks)
            engines = min(per_gpu - ranks, config.rollout.num_workers)
            load = (ranks * (rank_total * LEARNER_HEADROOM + buffer_bytes) / max(share, 1)
                    + engines * reserved)
            if load > gpu:
                problems.append(
                    f"a GPU holding {ranks} learner rank(s) and {engines} engine(s) needs "
                    f"{load / GIB:.1f} GiB of {gpu / GIB:g}: " + FEWER_LEARNER_BYTES
                    + ", or give each actor more GPU")
    return MemoryPlan(learner, weights, reserved, sequences, gpu, problems, buffer, colocated)


FEWER_LEARNER_BYTES = ("add learner ranks (ZeRO partitions the optimizer over them), use "
                       "learner.zero_stage=3, lower learner.micro_batch_tokens, turn on "
                       "model.gradient_checkpointing")


def colocated_load(config: RunConfig, learner: Dict[str, float], reserved: float,
                   buffer_bytes: float, bundles: int) -> Dict[str, float]:
    """A colocated GPU's two moments (bytes): the ranks training beside sleeping engines,
    and the engines awake beside the ranks' resident state and transfer buffers."""
    resident = sum(v for k, v in learner.items() if k in RESIDENT)
    return {"bundles": bundles, "resident": resident, "engine": reserved,
            "buffer": buffer_bytes,
            "training": bundles * sum(learner.values()) * LEARNER_HEADROOM,
            "awake": bundles * (resident + reserved + buffer_bytes)}


def colocated_problems(config: RunConfig, load: Dict[str, float], gpu: float) -> List[str]:
    problems = []
    if load["training"] > gpu:
        problems.append(f"colocated, a GPU's learner rank(s) need {load['training'] / GIB:.1f} "
                        f"GiB of {gpu / GIB:g} to train: " + FEWER_LEARNER_BYTES)
    if load["awake"] > gpu:
        room = gpu / load["bundles"] - load["resident"] - load["buffer"]
        fits = math.floor(100 * room / gpu) / 100
        hint = (f"set rollout.gpu_memory_utilization to at most {fits:.2f} (or leave it "
                "null to fit the placement), or " if fits > 0 else "")
        problems.append(
            f"colocated, an engine that wakes beside its learner rank needs "
            f"{load['awake'] / GIB:.1f} GiB of {gpu / GIB:g} (the rank keeps "
            f"{load['resident'] / GIB:.1f} GiB of weights and optimizer state, the engine "
            f"takes {load['engine'] / GIB:.1f}, the ipc buffer {load['buffer'] / GIB:.1f}): "
            + hint + "add learner ranks" + (" or use learner.zero_stage=3" if
                                            config.learner.zero_stage != 3 else "")
            + " to shrink the rank's share")
    return problems


def checked_plan(config: RunConfig) -> Optional[MemoryPlan]:
    """The plan of a GPU run (None on CPU, or when the model's shape is unknown); a plan that
    does not fit ``cluster.gpu_memory_gib`` is a ``ConfigError`` naming what to change."""
    from cluster.contract.config import ConfigError

    if config.gpus == 0:
        return None
    try:
        shape = model_shape(config)
    except ValueError:
        return None
    plan = memory_plan(config, shape)
    if plan.problems:
        raise ConfigError("cluster.gpu_memory_gib", "the plan does not fit the GPUs:\n"
                          + plan.text(), value=config.cluster.gpu_memory_gib)
    return plan
