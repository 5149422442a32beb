"""``duet doctor``: a self-check of a cluster (or a laptop) in minutes, before a long run.

For the configured placement it starts one rollout engine and one learner rank on a small
random model of the configured architecture (``cluster.policy.small``) and checks, in order:
Ray answers; each role's placement group fits; the configured weight transport can work
where the actors run (Ray's object store moves a bucket; for nccl/ipc a GPU worker sees CUDA
and loads NCCL or exports a CUDA-IPC handle); the engine starts; the learner rank starts;
the learner's weights reach the engine and pass verification; the engine generates groups
into a replay queue; the learner trains one step on them; the new weights reach the engine
and pass verification; the engine generates with them. The first failure ends the check
with its reason (exit 1) and the remaining checks are marked skipped. Alongside: generation
and training tokens/s and the sync's GB/s, a first sense of the cluster's speed.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from cluster.contract.config import RunConfig, replace

CHECKS = ("ray", "placement", "transport", "engine start", "learner start", "initial sync",
          "generate", "train step", "weight sync", "generate after sync")


@dataclass
class Report:
    """Each check's outcome (``pass`` / ``FAIL``; unlisted: skipped) and what it measured."""

    results: Dict[str, str] = field(default_factory=dict)
    details: Dict[str, str] = field(default_factory=dict)
    failure: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.failure is None and all(self.results.get(c) == "pass" for c in CHECKS)

    def table(self) -> str:
        lines = ["| check | result | detail |", "| --- | --- | --- |"]
        lines += [f"| {name} | {self.results.get(name, 'skipped')} | "
                  f"{self.details.get(name, '')} |" for name in CHECKS]
        return "\n".join(lines)


def doctor_config(config: RunConfig, model: Path, out: Path) -> RunConfig:
    """The configured run cut down to one engine, one rank and a few short groups."""
    return replace(config, [
        "name=doctor", f"output_dir={out}", f"model.path={model}", "task.eval_size=0",
        "rollout.num_workers=1", "learner.num_ranks=1", "algo.prompts_per_step=4",
        "algo.mini_batches=1", "algo.ppo_epochs=1", "rollout.tie_handling=keep",
        f"model.max_model_len={min(config.model.max_model_len, 512)}",
        f"rollout.max_new_tokens={min(config.rollout.max_new_tokens, 32)}",
        "queue.durable=false"])


class Doctor:
    """Holds what the checks start, so each check is one small method and all is released."""

    def __init__(self, config: RunConfig, say: Callable[[str], None]) -> None:
        self.base, self.say = config, say
        self.out = Path(tempfile.mkdtemp(prefix="duet-doctor-"))
        self.report = Report()
        self.config: Optional[RunConfig] = None
        self.engines = self.learner = self.queue = None

    def run(self) -> Report:
        checks: List[Tuple[str, Callable[[], str]]] = [
            ("ray", self.ray), ("placement", self.placement), ("transport", self.transport),
            ("engine start", self.engine),
            ("learner start", self.start_learner), ("initial sync", lambda: self.sync(0)),
            ("generate", lambda: self.generate(0)), ("train step", self.train),
            ("weight sync", lambda: self.sync(1)),
            ("generate after sync", lambda: self.generate(1))]
        try:
            for name, fn in checks:
                if not self.check(name, fn):
                    break
        finally:
            self.release()
        return self.report

    def check(self, name: str, fn: Callable[[], str]) -> bool:
        self.say(f"doctor: {name} ...")
        start = time.perf_counter()
        try:
            detail = fn()
        except Exception as err:  # a failed check is a result to report, not a crash
            self.report.results[name] = "FAIL"
            self.report.details[name] = root_cause(err)
            self.report.failure = f"{name}: {self.report.details[name]}"
            return False
        self.report.results[name] = "pass"
        self.report.details[name] = f"{detail} ({time.perf_counter() - start:.1f} s)"
        return True

    # ------------------------------------------------------------------ the checks

    def ray(self) -> str:
        import ray

        from cluster.loop.launch import start_ray
        from cluster.policy.small import build_small

        start_ray(self.base)
        model = build_small(self.base, self.out / "model")
        self.config = doctor_config(self.base, model, self.out)
        res = ray.cluster_resources()
        return (f"{len(ray.nodes())} node(s), {res.get('CPU', 0):g} CPUs, "
                f"{res.get('GPU', 0):g} GPUs")

    def placement(self) -> str:
        from ray.util import remove_placement_group

        from cluster.loop.placement import reserve

        bundles = {}
        roles = (("rollout",) if self.config.cluster.placement == "colocated"
                 else ("rollout", "learner"))
        for role in roles:
            remove_placement_group(reserve(self.config, role, 1))
            bundles[role] = self.config.cluster.bundle(role, 1)
        return (f"{self.config.cluster.placement}: "
                + ", ".join(f"{role} {bundle}" for role, bundle in bundles.items()))

    def transport(self) -> str:
        import ray

        transfer = self.config.rollout.weight_transfer
        if transfer == "object_store":
            payload = bytes(BUCKET_PROBE_BYTES)
            start = time.perf_counter()
            ray.get(ray.put(payload))
            seconds = time.perf_counter() - start
            return (f"object_store: a {len(payload) / 2**20:.0f} MiB bucket through Ray's "
                    f"shared memory at {len(payload) / seconds / 1e9:.3g} GB/s")
        check = ray.remote(num_cpus=0, num_gpus=self.config.cluster.gpus_per_actor)(
            gpu_transport_check)
        return ray.get(check.remote(transfer))

    def engine(self) -> str:
        import ray

        from cluster.loop.launch import start_rollouts
        from cluster.queue.actor import ReplayQueueActor

        name = f"duet-doctor-{uuid.uuid4().hex[:8]}"
        self.queue = ReplayQueueActor.options(name=name).remote(self.config.queue, None)
        self.engines = start_rollouts(self.config, self.config.model.path, self.out / "engines")
        ray.get(self.engines[0].reset.remote(self.config, name, str(self.out / "state")))
        return (f"vLLM in {self.config.model.dtype}, gpu_memory_utilization "
                f"{self.config.rollout.gpu_memory_utilization:g}")

    def start_learner(self) -> str:
        from cluster.loop.placement import learner_placement
        from learner.learner_actor import LearnerGroup

        placement, owned = learner_placement(self.config, self.engines)
        self.learner = LearnerGroup(self.config, self.config.model.path, placement,
                                    owns_placement=owned)
        return f"DeepSpeed ZeRO-{self.config.learner.zero_stage} in {self.config.model.dtype}"

    def sync(self, version: int) -> str:

        start = time.perf_counter()
        report = self.learner.send_weights(version, [self.engines[0]])
        seconds = time.perf_counter() - start
        if report["errors"]:
            kind, reason = report["errors"][0]
            raise RuntimeError(f"{kind}: {reason}")
        total = report["manifest"].total_bytes
        return (f"{total / seconds / 1e9:.3g} GB/s ({total / 1e6:.1f} MB, "
                f"{self.config.rollout.weight_transfer}), probe within "
                f"{report['timings'][0]['probe_max_abs_diff']:.2g}")

    def generate(self, version: int) -> str:
        import ray

        stats = ray.get(self.engines[0].generate.remote(self.config.algo.prompts_per_step))
        held = ray.get(self.engines[0].state.remote())["policy_version"]
        if held != version:
            raise RuntimeError(f"the engine holds policy version {held}, expected {version}")
        if not stats.group_ids:
            raise RuntimeError("the engine produced no groups")
        rate = stats.completion_tokens / max(stats.generate_seconds, 1e-9)
        return f"{rate:,.0f} generated tokens/s ({stats.rollouts} rollouts)"

    def train(self) -> str:
        import ray

        delivery = ray.get(self.queue.get.remote(self.config.algo.prompts_per_step, 0, 30.0))
        if not delivery.offsets:
            raise RuntimeError("the replay queue delivered no groups")
        metrics = self.learner.train_step(delivery.batch)
        ray.get(self.queue.ack.remote(delivery.offsets))
        rate = metrics["tokens"] / max(metrics["learner_seconds"], 1e-9)
        return f"{rate:,.0f} trained tokens/s, loss {metrics['loss']:.3g}"

    def release(self) -> None:
        import ray

        from cluster.loop.launch import stop_rollouts

        if self.learner is not None:
            self.learner.kill()
        if self.engines is not None:
            stop_rollouts(self.engines)
        if self.queue is not None:
            ray.kill(self.queue)
        shutil.rmtree(self.out, ignore_errors=True)  # the report says what was found


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")


BUCKET_PROBE_BYTES = 64 * 2**20


def gpu_transport_check(transfer: str) -> str:
    """What ``nccl`` / ``ipc`` need on a GPU worker, checked there: CUDA, and NCCL's library
    (vLLM's own loader) or a CUDA-IPC handle of a device tensor."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"rollout.weight_transfer={transfer} needs CUDA, and a worker "
                           "placed with cluster.gpus_per_actor sees no GPU: check the GPU "
                           "drivers, or use rollout.weight_transfer=object_store")
    device = torch.cuda.get_device_name(0)
    if transfer == "nccl":
        from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary

        version = NCCLLibrary().ncclGetVersion()
        return f"nccl: NCCL {version} loads on {device}"
    from torch.multiprocessing.reductions import reduce_tensor

    reduce_tensor(torch.ones(16, device="cuda"))
    return f"ipc: CUDA-IPC handles export on {device}"


def root_cause(err: Exception) -> str:
    """The innermost exception line of ``err`` (Ray embeds a remote traceback in its text)."""
    cause = getattr(err, "cause", None) or err
    lines = str(cause).strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[i]):
            detail = [line.strip() for line in lines[i + 1:i + 3]
                      if line.startswith(" ") and not line.strip().startswith("For further")]
            return " ".join([lines[i], *detail])[:500]
    return f"{type(cause).__name__}: {(lines or [''])[0][:400]}"


def run_doctor(config: RunConfig, say: Callable[[str], None] = print) -> Report:
    return Doctor(config, say).run()
