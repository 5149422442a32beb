"""One learner rank: deal a step's rows to ranks, micro-batch by tokens, train with the pure core.

Every rank receives the whole step (a group record batch through the Ray object store) and
computes every group's advantages from its rewards (P, G), never from row order. The rows
an update computes (all of them, or with ``learner.skip_zero_advantage`` those whose
advantage is not exactly zero) are then dealt to ranks by tokens, and each rank packs its
share into micro-batches. Each rank passes the mini-batch's *global* token and sequence
counts to ``policy_loss``, so the per-rank losses sum to the whole-batch loss whichever rows
were computed where; the loss is multiplied by W because DeepSpeed averages gradients over
ranks. Ranks run the same number of micro-batches (padded with empty ones), as ZeRO-3 needs
every rank in every collective.

Batches arrive on the CPU (Arrow) and each micro-batch moves to the engine's device, so the
same code trains on gloo/CPU and NCCL/GPU. Ray is imported only where a rank talks to it
(sending weights, ``learner.publish``), so a rank also runs, and is tested, in a plain
process.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pyarrow as pa
import torch

from cluster.contract.config import RunConfig
from cluster.contract.schema import from_ipc
from cluster.contract.threads import use_cpu_threads
from cluster.contract.weights import (
    BUCKET_BYTES,
    PROBE_PREFIX,
    WeightSyncError,
    start_manifest,
)
from learner.adapters import is_adapter, load_model
from learner.algo import compute_advantages, informative, policy_loss
from learner.batch import TrainBatch, to_tensors
from learner.host_memory import keep_freed_memory, refaults
from learner.publish import (
    AdapterWeights,
    EngineClient,
    LearnerWeights,
    VllmTransport,
    send_buckets,
)

RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=5)


def node_address() -> str:
    """This node's address as the other nodes of the Ray cluster see it (loopback without Ray)."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Log-prob of each token given its prefix: (B, T) ids -> (B, T-1) for positions 1..T-1."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask.long()).logits[:, :-1]
    logits = logits.float()
    picked = logits.gather(-1, input_ids[:, 1:, None])[..., 0]
    return picked - torch.logsumexp(logits, dim=-1)


def micro_batches(rows: Sequence[int], lengths: torch.Tensor, token_budget: int) -> List[List[int]]:
    """Rows packed so rows x longest-row stays within ``token_budget``, taken in order of
    length: a micro-batch pads to its longest row, so rows of like length go together.
    (The loss sums over rows with global normalisers, so their grouping does not change it.)"""
    out: List[List[int]] = []
    current: List[int] = []
    longest = 0
    for r in sorted(rows, key=lambda r: int(lengths[r])):
        width = max(longest, int(lengths[r]))
        if current and width * (len(current) + 1) > token_budget:
            out.append(current)
            current, width = [], int(lengths[r])
        current.append(r)
        longest = width
    if current:
        out.append(current)
    return out


# Token fractions that skipped rows would add nothing to (a zero advantage clips nothing):
# each rank reports its hits over the whole mini-batch's tokens, and the ranks' shares sum to
# the fraction computing every row gives.
SHARES = ("clip_frac", "dual_clip_frac")


def balance(rows: Sequence[int], lengths: torch.Tensor, world_size: int) -> List[List[int]]:
    """``rows`` dealt to ``world_size`` ranks by tokens: longest first, each to the rank
    holding the fewest tokens so far (ties: the lower rank), so ranks finish together
    whichever rows were skipped. Deterministic: every rank computes the same deal."""
    shares: List[List[int]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for r in sorted(rows, key=lambda r: (-int(lengths[r]), r)):
        k = min(range(world_size), key=lambda i: (loads[i], i))
        shares[k].append(r)
        loads[k] += int(lengths[r])
    return shares


def release_cached_memory(device: torch.device) -> None:
    """On a GPU, wait for the rank's queued work, then hand the caching allocator's free
    blocks back to the device: a step's activations and logits (~10 GB for 16k tokens of a
    152k vocabulary in fp32) stay cached otherwise, where a colocated engine cannot wake
    into them. Nothing to do on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


class LearnerRank:
    """One data-parallel learner process holding a DeepSpeed engine."""

    def __init__(self, config: RunConfig, rank: int, world_size: int) -> None:
        """Cheap: no process group or model yet. Rank 0 opens the rendezvous store on its
        own node, on a port the OS picks and the store holds, so no port is released
        before use and ranks on other nodes find it (``rendezvous``, then ``start``)."""
        self.config, self.rank, self.world_size = config, rank, world_size
        self.skips_zero_advantage, self.skip_reason = config.zero_advantage_skip()
        torch.manual_seed(config.seed + rank)
        self._store = None
        if rank == 0:
            self._store = torch.distributed.TCPStore(
                node_address(), 0, world_size, is_master=True, timeout=RENDEZVOUS_TIMEOUT,
                wait_for_workers=False)

    def rendezvous(self) -> Tuple[str, int]:
        """Rank 0: the (address, port) every rank joins the process group through."""
        if self._store is None:
            raise RuntimeError(f"rank {self.rank} holds no rendezvous; ask rank 0")
        return node_address(), self._store.port

    def start(self, model_path: str, master: Optional[Tuple[str, int]] = None,
              reference_path: Optional[str] = None, sharing: int = 1) -> None:
        """Join the process group at ``master`` (rank 0: its own store), load the model,
        build the DeepSpeed engine. A collective: every rank calls it together.

        ``reference_path``: the KL reference policy (the run's initial policy, which the
        driver records in the run folder); default ``model_path``. ``sharing``: ranks on
        this rank's node, who share its cores (``cluster.contract.threads``)."""
        from transformers import AutoModelForCausalLM

        from cluster.contract.hub import local_folder
        from learner import engine as ds

        model_path = local_folder(model_path)  # a hub snapshot: this node's cache
        config = self.config
        use_cpu_threads(config, "learner", sharing)
        self.keeps_freed_memory = config.keeps_freed_memory() and keep_freed_memory()
        store = self._store
        if store is None:
            if master is None:
                raise ValueError(f"rank {self.rank} needs rank 0's rendezvous address")
            store = torch.distributed.TCPStore(master[0], master[1], self.world_size,
                                               is_master=False, timeout=RENDEZVOUS_TIMEOUT)
        ds.init_distributed(self.rank, self.world_size, store)
        # With LoRA: the frozen base and its adapters (a LoRA checkpoint's model/ is one).
        model = load_model(model_path, config.model.lora, config.model.trust_remote_code)
        self.lora = is_adapter(model_path) or config.model.lora.rank > 0
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if self.lora:  # the frozen embeddings' output must carry grad for the adapters'
                model.enable_input_require_grads()
        self.vocab_size = model.config.vocab_size
        self.reference = None
        if config.algo.kl_coef > 0:
            self.reference = AutoModelForCausalLM.from_pretrained(
                reference_path or model_path, dtype=torch.float32,
                trust_remote_code=config.model.trust_remote_code)
            self.reference.eval().requires_grad_(False)
        self.engine = ds.build_engine(model, config.learner,
                                      bf16=config.model.dtype == "bfloat16")
        self.device = torch.device(self.engine.device)
        if self.reference is not None:
            self.reference.to(self.device)
        self._ds = ds
        if self.rank == 0 and self.skip_reason and config.learner.skip_zero_advantage == "auto":
            print(f"learner: computing zero-advantage rows too ({self.skip_reason})", flush=True)
        self._probe_guess: Tuple[int, ...] = ()  # the last probe's greedy tokens
        self.steps_done = 0
        self.bad_steps = 0

    # ------------------------------------------------------------------ training

    def train_step(self, batch: Union[pa.RecordBatch, bytes]) -> Dict[str, float]:
        """One optimizer step per mini-batch, over ``ppo_epochs`` passes; returns metrics.
        ``batch``: a record batch, or one as an Arrow IPC stream (``to_ipc``).

        Rows whose advantage is exactly zero are skipped where that is exact
        (``RunConfig.zero_advantage_skip``): their loss and its gradient are exactly zero
        at kl_coef 0, and the normalisers below stay the whole mini-batch's, so only the
        work changes. ``rows_computed`` / ``tokens_computed`` (this rank's, one pass) and
        ``rows_received`` / ``tokens_received`` (the step's) show what it saved."""
        start = time.perf_counter()
        if not isinstance(batch, pa.RecordBatch):
            batch = from_ipc(batch)
        algo = self.config.algo
        t = to_tensors(batch)
        advantages = compute_advantages(t.rewards, algo.advantage, algo.std, algo.eps)  # (P, G)
        row_adv = advantages.reshape(-1)  # (B,): rows are group-major by construction
        # (B,) rows that get a forward. ``!= 0`` keeps NaN rows, so a NaN advantage still
        # makes the update non-finite (and skipped) exactly as computing it would.
        computed = row_adv != 0 if self.skips_zero_advantage else torch.ones_like(row_adv, dtype=torch.bool)
        lengths = t.attention_mask.sum(1)
        old_logp = (self._old_logprobs(t, computed)
                    if (algo.ppo_epochs > 1 or algo.mini_batches > 1) else None)
        num_groups = t.rewards.shape[0]
        bounds = [round(num_groups * k / algo.mini_batches) for k in range(algo.mini_batches + 1)]
        minis = [list(range(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a]
        sums: Dict[str, float] = {}
        tokens = 0
        skipped = 0
        rows_computed = tokens_computed = 0
        for epoch in range(algo.ppo_epochs):
            for groups in minis:
                metrics, n_rows, n_tokens, ok = self._train_minibatch(
                    t, groups, row_adv, old_logp, lengths, computed)
                tokens += n_tokens
                if epoch == 0:
                    rows_computed += n_rows
                    tokens_computed += n_tokens
                skipped += not ok
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
        updates = algo.ppo_epochs * len(minis)
        out = {k: v / updates for k, v in sums.items()}
        out.update({
            "tokens": float(tokens),
            "rows_computed": float(rows_computed),
            "tokens_computed": float(tokens_computed),
            "rows_received": float(t.input_ids.shape[0]),
            "tokens_received": float(t.completion_mask[:, 1:].sum()),
            "groups": float(num_groups),
            "informative_groups": float(informative(t.rewards).sum()),
            "reward_mean": float(t.rewards.mean()),
            "skipped_updates": float(skipped),
            "learner_seconds": time.perf_counter() - start,
            "lr": float(self.engine.get_lr()[0]),
        })
        self.steps_done += 1
        return out

    def plan(self, rows: Sequence[int], lengths: torch.Tensor) -> List[List[List[int]]]:
        """Every rank's micro-batches for ``rows`` (the rows computed in one update), the
        same on every rank: rows dealt to ranks by tokens (``balance``), then packed under
        ``learner.micro_batch_tokens`` (``micro_batches``)."""
        budget = self.config.learner.micro_batch_tokens
        return [micro_batches(share, lengths, budget)
                for share in balance(rows, lengths, self.world_size)]

    def _train_minibatch(self, t: TrainBatch, groups: Sequence[int], row_adv: torch.Tensor,
                         old_logp: Optional[torch.Tensor], lengths: torch.Tensor,
                         computed: torch.Tensor) -> Tuple[Dict[str, float], int, int, bool]:
        """One update over the mini-batch's ``groups``: (metrics over this rank's computed
        tokens, rows and tokens it computed, whether the step was taken)."""
        algo = self.config.algo
        size = t.group_size
        all_rows = [g * size + j for g in groups for j in range(size)]
        mask_all = t.completion_mask[:, 1:]
        # The whole mini-batch's normalisers, skipped rows included: what makes the skip exact.
        totals = dict(total_tokens=float(mask_all[all_rows].sum()), total_seqs=float(len(all_rows)),
                      norm_len=float(self.config.rollout.max_new_tokens))
        plans = self.plan([r for r in all_rows if computed[r]], lengths)
        mine = plans[self.rank]
        # Every rank runs as many micro-batches as the busiest (ZeRO-3 gathers in every
        # forward), and at least one, so a mini-batch with nothing to compute still steps
        # the optimizer (Adam's moments and weight decay advance as they would).
        count = max(1, max(len(p) for p in plans))
        mine = mine + [[]] * (count - len(mine))
        metrics_sum: Dict[str, float] = {}
        my_tokens = my_rows = 0
        loss_total = pg_total = 0.0
        dev = self.device
        for i, rows in enumerate(mine):
            empty = not rows
            # An empty micro-batch: a 2-token slice of row 0 with nothing unmasked, so its
            # gradient is exactly zero and it costs next to nothing.
            width = 2 if empty else int(lengths[rows].max())
            rows = rows or [0]
            ids = t.input_ids[rows, :width].to(dev)
            attn = t.attention_mask[rows, :width].to(dev)
            mask = t.completion_mask[rows, 1:width].to(dev).float() * (0.0 if empty else 1.0)
            logp = token_logprobs(self.engine, ids, attn)
            old = (old_logp[rows, :width - 1].to(dev) if old_logp is not None else logp.detach())
            ref = None
            if self.reference is not None:
                with torch.no_grad():
                    ref = token_logprobs(self.reference, ids, attn)
            loss, metrics = policy_loss(
                logp, old, row_adv[rows].to(dev), mask,
                clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
                ratio_level=algo.ratio_level, aggregation=algo.aggregation,
                behaviour_logp=t.behaviour_logprobs[rows, 1:width].to(dev), tis_cap=algo.tis_cap,
                ref_logp=ref, kl_coef=algo.kl_coef, kl_estimator=algo.kl_estimator, **totals)
            self.engine.set_gradient_accumulation_boundary(i == count - 1)
            # DeepSpeed averages gradients over ranks; the shard losses already sum to the
            # global loss, so undo the average.
            self.engine.backward(loss * self.world_size)
            loss_total += float(loss.detach())
            pg_total += float(metrics.pop("pg_loss"))
            for k in metrics:  # every key, every step: 0 where nothing was computed
                metrics_sum.setdefault(k, 0.0)
            if not empty:
                n = int(mask.sum())
                my_tokens += n
                my_rows += len(rows)
                for k, v in metrics.items():
                    metrics_sum[k] = metrics_sum.get(k, 0.0) + float(v) * n
        ok = math.isfinite(loss_total)
        if ok:
            self.engine.step()
            self.bad_steps = 0
        else:
            self.engine.zero_grad()
            self.bad_steps += 1
            if self.bad_steps >= self.config.learner.max_bad_steps:
                raise FloatingPointError(
                    f"non-finite loss in {self.bad_steps} consecutive updates "
                    f"(learner.max_bad_steps={self.config.learner.max_bad_steps}); stopping")
        out = {k: v / max(my_tokens, 1) for k, v in metrics_sum.items()}
        for k in SHARES:  # this rank's share of the whole mini-batch's fraction
            if k in out:
                out[k] = metrics_sum[k] / max(totals["total_tokens"], 1.0)
        # Both are this rank's share of the whole mini-batch's loss (global normalisers):
        # the ranks' shares sum to it, skipped rows adding exactly nothing.
        out["loss"] = loss_total
        out["pg_loss"] = pg_total
        return out, my_rows, my_tokens, ok

    @torch.no_grad()
    def _old_logprobs(self, t: TrainBatch, computed: torch.Tensor) -> torch.Tensor:
        """Log-probs under the weights at the start of the step (pi_old) of the ``computed``
        rows; zeros for the rest, which no update reads."""
        out = torch.zeros(t.input_ids.shape[0], t.input_ids.shape[1] - 1)
        lengths = t.attention_mask.sum(1)
        rows = [r for r in range(t.input_ids.shape[0]) if computed[r]]
        for chunk in micro_batches(rows, lengths, self.config.learner.micro_batch_tokens):
            width = int(lengths[chunk].max())
            out[chunk, :width - 1] = token_logprobs(
                self.engine, t.input_ids[chunk, :width].to(self.device),
                t.attention_mask[chunk, :width].to(self.device)).cpu()
        return out

    # ------------------------------------------------------------------ weights

    def train_and_send(self, batch: Union[pa.RecordBatch, bytes], version: int,
                       actors: Sequence[object], bucket_bytes: int = BUCKET_BYTES,
                       verify: bool = True) -> Dict[str, object]:
        """``train_step``, then ``send_weights`` of the weights it made: ``{"metrics":
        the step's, "sync": the send's report (rank 0; None elsewhere)}``. One call where
        the training loop would make two back to back (a collective, as both are)."""
        metrics = self.train_step(batch)
        return {"metrics": metrics,
                "sync": self.send_weights(version, actors, bucket_bytes, verify)}

    def send_weights(self, version: int, actors: Sequence[object],
                     bucket_bytes: int = BUCKET_BYTES, verify: bool = True
                     ) -> Optional[Dict[str, object]]:
        """Send the current weights to the rollout ``actors`` over the configured transport
        (``learner.publish``). A collective: every rank calls it, rank 0 drives the engines
        and returns the manifest, each actor's timings, the actors that failed (by index,
        with the reason) and the transport's figures. ``verify=False``: each engine runs
        the probe in its next call instead of before answering."""
        start = time.perf_counter()
        zero3 = self.engine.zero_optimization_stage() == 3
        source = (AdapterWeights if self.lora else LearnerWeights)(self.engine.module, zero3)
        transport = self.config.rollout.weight_transfer
        manifest, client = None, None
        if self.rank == 0 or zero3:  # under ZeRO-3 the probe's forward is a collective too
            # Rank 0 alone guesses the greedy tokens from the last probe (one forward when
            # right); ZeRO-3's ranks must run the same passes, so they never guess.
            manifest = start_manifest(version, source.names(), self.engine.module,
                                      self.vocab_size, self.config.model.dtype,
                                      guess=() if zero3 else self._probe_guess,
                                      adapter_config=source.adapter_config() if self.lora
                                      else "")
            self._probe_guess = manifest.probe_token_ids[PROBE_PREFIX:]
        if self.config.cluster.placement == "colocated":  # the engines wake next
            self.release_cached_memory()
        timeout = self.config.rollout.sync_timeout_s
        if transport == "object_store":
            client = (EngineClient(actors, transport, strict=False, timeout_s=timeout)
                      if self.rank == 0 else None)
            if client is not None:
                client.reset(manifest, verify)
            sent = send_buckets(source, client, bucket_bytes)
        else:
            sent, client = {}, None
            try:
                client = self._transport(transport).send(
                    source, actors, manifest, verify, packed=transport == "nccl" or zero3,
                    buffer_bytes=bucket_bytes)
            except WeightSyncError as err:  # every engine is sent it again, alone
                client = EngineClient(actors, transport, strict=True)
                client.errors = {i: err for i in range(len(actors))}
        if self.rank != 0:
            return None
        total = sent.get("bytes") or sum(m.dtype.itemsize * math.prod(m.shape)
                                         for m in source.metadata())
        return {"manifest": dataclasses.replace(manifest, digests=tuple(sent.get("digests", ())),
                                                total_bytes=total),
                "timings": client.timings,
                "errors": {i: (type(e).__name__, str(e)) for i, e in client.errors.items()},
                "seconds": time.perf_counter() - start,
                "peak_staged_bytes": sent.get("peak_staged_bytes", 0)}

    def _transport(self, backend: str) -> VllmTransport:
        """This rank's side of vLLM's ``nccl`` / ``ipc`` transport, kept across syncs."""
        kept = getattr(self, "_vllm_transport", None)
        if kept is None or kept.backend != backend:
            if kept is not None:
                kept.drop()
            kept = self._vllm_transport = VllmTransport(
                backend, self.rank, node_address, self._agree,
                self.config.rollout.sync_timeout_s)
        return kept

    def _agree(self, value):
        """Rank 0's ``value`` on every rank (a collective)."""
        if self.world_size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def release_cached_memory(self) -> None:
        """Colocated on a GPU: give the step's cached blocks (activations, logits) back to
        the device before an engine beside a rank wakes into its budget, on every rank
        before any engine is woken (a collective: rank 0 wakes them all)."""
        release_cached_memory(self.device)
        if self.world_size > 1:
            torch.distributed.barrier()

    def weights(self) -> Dict[str, torch.Tensor]:
        """Full weights on every rank (a collective), for tests and checkpoints."""
        with self._ds.full_parameters(self.engine):
            return {k: v.clone() for k, v in self._ds.named_full_tensors(self.engine)}

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder: str, tokenizer_path: str) -> None:
        """Optimizer/scheduler state and RNG state of every rank, and (rank 0) an HF model."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        self._ds.save_state(self.engine, folder, self.rank)
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_file(rng, os.path.join(folder, f"rng-rank{self.rank}.safetensors"))
        with self._ds.full_parameters(self.engine):
            if self.rank == 0:
                from transformers import AutoTokenizer

                model_dir = os.path.join(folder, "model")
                self.engine.module.save_pretrained(model_dir, safe_serialization=True)
                AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(model_dir)

    def load(self, folder: str) -> None:
        from safetensors.torch import load_file

        self._ds.load_state(self.engine, folder, self.rank,
                            os.path.join(folder, "model"))
        rng = os.path.join(folder, f"rng-rank{self.rank}.safetensors")
        if os.path.exists(rng):
            state = load_file(rng)
            torch.set_rng_state(state["torch"])
            if "cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda"], self.device)

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def placement_group_id(self) -> str:
        """The placement group this actor runs in (colocation checks)."""
        import ray

        return ray.get_runtime_context().get_placement_group_id()

    def threads(self) -> int:
        """The torch threads this rank computes with."""
        return torch.get_num_threads()

    def host_memory(self) -> Dict[str, object]:
        """Whether this rank keeps the host memory it frees (``learner.host_memory``), and
        the page faults of touching a freed 32 MiB block again: none when it does."""
        return {"kept": self.keeps_freed_memory, "refaults": refaults()}

    def pid(self) -> int:
        return os.getpid()
