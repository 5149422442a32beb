"""Rollout workers: a vLLM engine that samples G completions per prompt, scores and queues them.

``RolloutWorker`` is the plain class (used directly by benchmarks); ``RolloutActor`` is the
restartable Ray actor around it. A worker owns the stream positions ``worker, worker + W,
...`` of the prompt source and a *cursor* into them, persisted atomically after every put, so
a restarted worker resumes exactly where its last accepted groups end: nothing is produced
twice (the queue also ignores a group id it has seen) and nothing is skipped. Completions are
sampled with a per-prompt seed derived from the run seed and the stream position.

Ties (every completion of a group scored the same) carry no signal for GRPO. With
``tie_handling``: ``keep`` queues them (zero advantage), ``drop`` discards and counts them,
and ``resample`` (2-GRPO+RS) draws fresh prompts until the step's quota of informative
groups is met or ``resample_budget`` x the nominal rollouts have been spent.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import ray

from actors.reward import RewardPool
from actors.tasks.base import Prompt, make_source, shard_positions
from actors.weight_receiver import tensor_views
from cluster.config import RunConfig
from cluster.queue_log import atomic_write_text
from cluster.schema import Group, build_batch
from cluster.weight_sync import WeightManifest, WeightSyncError, compare_probe, digest


@dataclass
class StepStats:
    """What one ``generate`` call did."""

    groups_put: int = 0
    groups_tied: int = 0
    groups_dropped: Dict[str, int] = field(default_factory=dict)
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

    def drop(self, reason: str, group_id: str) -> None:
        self.groups_dropped[reason] = self.groups_dropped.get(reason, 0) + 1
        self.dropped_ids.setdefault(reason, []).append(group_id)


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
    )


def sync_dir() -> Path:
    """Node-local folder for weight buckets: shared memory when there is some."""
    base = os.environ.get("DUET_SYNC_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    path = Path(base) / f"duet-sync-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class RolloutWorker:
    """One vLLM engine plus its prompt shard, cursor, reward pool and weight receiver."""

    def __init__(self, config: RunConfig, worker: int, model_path: str, home_dir: str,
                 queue=None) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.rollout.kv_cache_gib))
        # Read by vLLM when the engine is built: the engine core runs in this process or
        # in a child of its own.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if config.rollout.engine_in_process else "1"
        from transformers import AutoTokenizer
        from vllm import LLM

        self.worker = worker
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=config.model.trust_remote_code)
        self.llm = LLM(**engine_kwargs(config, model_path))
        self.rewards: Optional[RewardPool] = None
        self.policy_version = 0
        # After a restart by Ray, pick up the run (config, queue, cursor) this worker served.
        self._assignment = Path(home_dir) / f"assignment-{worker}.json"
        state_dir = home_dir
        if self._assignment.exists():
            from cluster.config import load_config

            saved = json.loads(self._assignment.read_text())
            config, state_dir = load_config(saved["config"]), saved["state_dir"]
            queue = ray.get_actor(saved["queue"]) if saved["queue"] else None
            self.policy_version = -1  # initial weights, not the run's: the driver resyncs
        self._assign(config, queue, state_dir)

    def _assign(self, config: RunConfig, queue, state_dir: str) -> None:
        if self.rewards is not None:
            self.rewards.close()
        self.config, self.queue = config, queue
        self.source = make_source(config.task, config.seed)
        self.rewards = RewardPool(config.rollout.reward, config.rollout.reward_workers,
                                  config.rollout.reward_timeout_s)
        self._state_path = Path(state_dir) / f"rollout-{self.worker}.json"
        state = self._load_state()
        self.cursor = state.get("cursor", 0)
        # The last generate request and how many groups it had put: a call retried after a
        # crash finishes that request instead of producing a second step's worth.
        self._request = (state.get("request"), state.get("request_done", 0))

    def reset(self, config: RunConfig, queue_name: Optional[str], state_dir: str) -> None:
        """Serve another run (or comparison arm) with this engine: config, queue, cursor.

        Recorded so that a restarted actor resumes the same assignment. Weights are not
        touched: the driver syncs its learner's weights next.
        """
        from cluster.config import to_dict

        self._assignment.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._assignment, json.dumps(
            {"config": to_dict(config), "queue": queue_name, "state_dir": state_dir}))
        self._assign(config, ray.get_actor(queue_name) if queue_name else None, state_dir)
        self.policy_version = -1

    # ------------------------------------------------------------------ state

    def _load_state(self) -> Dict[str, int]:
        if self._state_path.exists():
            return json.loads(self._state_path.read_text())
        return {}

    def _save_state(self) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._state_path, json.dumps(
            {"cursor": self.cursor, "request": self._request[0],
             "request_done": self._request[1]}))

    def set_cursor(self, cursor: int) -> None:
        """Resume from a checkpointed cursor."""
        self.cursor = cursor
        self._save_state()

    # ------------------------------------------------------------------ generation

    def sampling_params(self, seed: Optional[int], n: int, mode: str = "train"):
        """vLLM sampling for 'train' rollouts, 'greedy' or 'eval' (mean@k) evaluation."""
        from vllm import SamplingParams

        r = self.config.rollout
        temperature, top_p, top_k = {
            "train": (r.temperature, r.top_p, r.top_k),
            "greedy": (0.0, 1.0, -1),
            "eval": (r.eval_temperature, r.eval_top_p, r.eval_top_k),
        }[mode]
        eos = self.tokenizer.eos_token_id
        return SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                              max_tokens=r.max_new_tokens, logprobs=0, seed=seed,
                              stop_token_ids=[eos] if eos is not None else None)

    def _encode(self, text: str) -> List[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _sample(self, prompts: Sequence[Prompt], seeds: Sequence[Optional[int]], n: int,
                mode: str = "train", token_ids: Optional[List[List[int]]] = None):
        from vllm.inputs import TokensPrompt

        token_ids = token_ids or [self._encode(p.text) for p in prompts]
        inputs = [TokensPrompt(prompt_token_ids=ids) for ids in token_ids]
        params = [self.sampling_params(s, n, mode) for s in seeds]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return token_ids, outputs

    def _groups_for(self, positions: List[int], stats: StepStats, size: int) -> List[Group]:
        prompts = [self.source.train(p) for p in positions]
        # A prompt that leaves no room for the completion would fail the whole engine call:
        # drop its group, named and counted.
        room = self.config.model.max_model_len - self.config.rollout.max_new_tokens
        encoded = [self._encode(p.text) for p in prompts]
        fits = [len(ids) <= room for ids in encoded]
        for position, ok in zip(positions, fits):
            if not ok:
                stats.drop("too_long", f"s{position}")
        positions = [p for p, ok in zip(positions, fits) if ok]
        prompts = [p for p, ok in zip(prompts, fits) if ok]
        encoded = [ids for ids, ok in zip(encoded, fits) if ok]
        stats.prompts_drawn += len(fits) - len(prompts)
        if not prompts:
            return []
        seeds = [(self.config.seed * 1_000_003 + p) % 2**31 for p in positions]
        start = time.perf_counter()
        token_ids, outputs = self._sample(prompts, seeds, size, token_ids=encoded)
        gen_seconds = time.perf_counter() - start
        stats.generate_seconds += gen_seconds

        texts, answers = [], []
        for prompt, out in zip(prompts, outputs):
            for c in out.outputs:
                texts.append(self.tokenizer.decode(c.token_ids, skip_special_tokens=True))
                answers.append(prompt.answer)
        start = time.perf_counter()
        values, statuses = self.rewards.score(texts, answers)
        stats.reward_seconds += time.perf_counter() - start

        groups = []
        now = time.time()
        for i, (position, prompt, ids, out) in enumerate(zip(positions, prompts, token_ids, outputs)):
            comps = [list(c.token_ids) for c in out.outputs]
            logps = [[lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]
                     for c in out.outputs]
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
        """
        stats = StepStats()
        mode = self.config.rollout.tie_handling
        budget = int(self.config.rollout.resample_budget * num_groups)
        done = self._request[1] if request_id is not None and request_id == self._request[0] else 0
        self._request = (request_id, done)
        want = num_groups - done
        size = group_size or self.config.algo.group_size
        while want > 0:
            draw = want if mode != "resample" else min(want, budget - stats.prompts_drawn)
            if draw <= 0:
                break
            positions = shard_positions(self.worker, self.config.rollout.num_workers,
                                        self.cursor, draw)
            groups = self._groups_for(positions, stats, size)
            kept = []
            for g in groups:
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
            self.cursor += draw
            self._request = (request_id, self._request[1] + len(kept))
            self._save_state()
            want = want - len(kept) if mode == "resample" else 0
        return stats

    def _put(self, groups: List[Group], stats: StepStats) -> None:
        if not groups:
            return
        start = time.perf_counter()
        batch = build_batch(groups)
        if self.queue is not None:
            ray.get(self.queue.put.remote(batch))
        stats.queue_seconds += time.perf_counter() - start
        stats.groups_put += len(groups)
        stats.group_ids.extend(g.group_id for g in groups)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, prompts: Optional[List[Prompt]] = None, k: Optional[int] = None
                 ) -> Dict[str, float]:
        """Held-out greedy accuracy and mean@k (k samples per prompt at the eval settings)."""
        prompts = prompts if prompts is not None else self.source.eval_set()
        if not prompts:
            return {"accuracy": float("nan"), "mean_at_k": float("nan"), "k": 0, "n": 0}
        k = k or self.config.rollout.eval_k
        seeds = [(self.config.seed * 7919 + i) % 2**31 for i in range(len(prompts))]
        result: Dict[str, float] = {"n": len(prompts), "k": k}
        for key, mode, n, s in (("accuracy", "greedy", 1, [None] * len(prompts)),
                                ("mean_at_k", "eval", k, seeds)):
            _, outputs = self._sample(prompts, s, n, mode)
            texts, answers = [], []
            for prompt, out in zip(prompts, outputs):
                for c in out.outputs:
                    texts.append(self.tokenizer.decode(c.token_ids, skip_special_tokens=True))
                    answers.append(prompt.answer)
            values, statuses = self.rewards.score(texts, answers)
            result[key] = sum(v for v, st in zip(values, statuses) if st == "ok") / len(values)
        return result

    # ------------------------------------------------------------------ weight sync

    def update_weights(self, manifest: WeightManifest, buckets: Sequence[object]) -> Dict[str, float]:
        """Load a new policy version from bucket refs (or bytes); verify it; return timings.

        Every digest is checked before the engine is touched, so a corrupted payload leaves
        the previous weights and version in place and raises ``WeightSyncError``.
        """
        timings = {"transfer": 0.0, "load": 0.0, "verify": 0.0}
        if len(buckets) != len(manifest.digests):
            raise WeightSyncError(f"version {manifest.version}: {len(buckets)} buckets for "
                                  f"{len(manifest.digests)} digests")
        start = time.perf_counter()
        # Views of Ray's shared memory (the learner publishes numpy buckets): no copy yet.
        payload = [memoryview(ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref)
                   for ref in buckets]
        # Every digest is checked before the engine is touched; hashing releases the GIL,
        # so buckets are hashed side by side.
        with ThreadPoolExecutor(max_workers=min(len(payload), os.cpu_count() or 1) or 1) as pool:
            for i, (got, expected) in enumerate(zip(pool.map(digest, payload), manifest.digests)):
                if got != expected:
                    raise WeightSyncError(
                        f"version {manifest.version}: bucket {i} is corrupted (digest "
                        f"mismatch); weights left at version {self.policy_version}")
        timings["transfer"] = time.perf_counter() - start
        start = time.perf_counter()
        if self.config.rollout.engine_in_process:
            named = [pair for data in payload for pair in tensor_views(data)]
            self.llm.collective_rpc("duet_reload_tensors", args=(named,))
            del named
        else:
            self._reload_from_files(manifest.version, payload)
        del payload
        # Cached prefixes hold keys/values computed by the old weights.
        self.llm.reset_prefix_cache()
        timings["load"] = time.perf_counter() - start
        start = time.perf_counter()
        worst = self.verify(manifest)
        timings["verify"] = time.perf_counter() - start
        self.policy_version = manifest.version
        timings["probe_max_abs_diff"] = worst
        return timings

    def _reload_from_files(self, version: int, payload: Sequence[memoryview]) -> None:
        """The separate-engine-process path: buckets cross as node-local files."""
        folder = sync_dir()
        paths: List[str] = []
        try:
            for i, data in enumerate(payload):
                path = folder / f"v{version}-{i}.safetensors"
                with open(path, "wb") as fh:
                    fh.write(data)
                paths.append(str(path))
            self.llm.collective_rpc("duet_reload", args=(paths,))
        finally:
            for p in paths:
                Path(p).unlink(missing_ok=True)
            try:
                folder.rmdir()  # empty now; /dev/shm is memory, leave nothing behind
            except OSError:
                pass

    def probe(self, token_ids: Sequence[int]) -> List[float]:
        """Engine log-probs of token_ids[1:] given their prefixes (prompt_logprobs)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(token_ids))], params,
                                use_tqdm=False)[0]
        return [lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], token_ids[1:])]

    def verify(self, manifest: WeightManifest) -> float:
        if not manifest.probe_token_ids:
            return 0.0
        return compare_probe(manifest.probe_logprobs, self.probe(manifest.probe_token_ids))

    def set_reward(self, reward: str) -> None:
        """Swap the reward function (a fresh worker pool)."""
        old, self.rewards = self.rewards, RewardPool(reward, self.config.rollout.reward_workers,
                                                     self.config.rollout.reward_timeout_s)
        old.close()

    def source_stats(self) -> Dict[str, int]:
        """The prompt source's counters (dataset rows skipped at load, by reason)."""
        return self.source.stats()

    def engine_pids(self) -> List[int]:
        """The processes the engine's workers run in (the actor's own when in-process)."""
        return list(self.llm.collective_rpc("duet_pid"))

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks)."""
        return ray.get_runtime_context().get_node_id()

    def state(self) -> Dict[str, int]:
        return {"cursor": self.cursor, "policy_version": self.policy_version, "pid": os.getpid()}

    def close(self) -> None:
        self.rewards.close()


# One engine per actor process; restarted by Ray (it resumes from its saved cursor), and
# calls interrupted by a crash are retried (``request_id`` keeps a retry from doubling).
RolloutActor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(RolloutWorker)
