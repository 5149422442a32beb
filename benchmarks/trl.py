"""duet against TRL's ``GRPOTrainer`` on identical work: seconds per step and rollouts per second.

Run: ``python -m benchmarks.trl [--json] [--steps N] [--quick] [--trl-generation vllm|hf]``

TRL is an optional extra, not in CI: ``pip install -e '.[bench-trl]'`` (or point
``DUET_TRL_PATH`` at a folder holding it, which only the TRL side's process imports).

Both sides run the whole GRPO step — generate, score, train, bring the generator up to date —
in their own process, one after the other, each with the machine to itself, on:

- the same model: the ~100M benchmark model (``benchmarks.rollout.MODEL_100M``, ``--quick``:
  the tiny model), fp32, from the same saved folder;
- the same prompts: the embedded arithmetic task's, written once to a JSONL file both read;
- the same reward: ``parity_reward``, a pure function of the completion's text (its CRC-32's
  parity), so about half the G = 2 groups tie, as in the paper's 2-GRPO runs (53-77%);
- the same shape: G = 2, 32 prompts a step (64 rollouts), every completion exactly
  ``COMPLETION`` tokens (minimum = maximum new tokens), learning rate 1e-6, KL off, clip
  0.2 / 0.28, the same number of steps; micro-batches of about 4096 tokens on both sides.

TRL generates with vLLM in its own process (``use_vllm``, ``vllm_mode="colocate"``: what a TRL
user with vLLM installed runs) or with ``transformers``' ``generate`` (``--trl-generation hf``);
duet with its vLLM rollout actor, and trains with its DeepSpeed learner (tied groups skipped:
``learner.skip_zero_advantage``, the default). Seconds per step are medians over steps 2..N
(the first step pays start-up on both sides); ``rollouts_per_s_vs_trl`` is duet's rollouts per
second over TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Dict, List

from benchmarks.common import emit, machine, parser, scratch_dir

GROUP_SIZE, PROMPTS_PER_STEP, COMPLETION, LR = 2, 32, 128, 1e-6
MICRO_BATCH_TOKENS = 4096


def parity_reward(completion: str, answer: str) -> float:
    """1.0 when the CRC-32 of the completion's text is odd: deterministic, and independent of
    the answer, so both trainers score every completion alike."""
    return float(zlib.crc32(completion.encode()) & 1)


def write_prompts(path: Path, count: int) -> Path:
    from actors.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(digits=2, seed=0)
    with path.open("w") as f:
        for prompt in map(task.train, range(count)):
            f.write(json.dumps({"prompt": prompt.text, "answer": prompt.answer}) + "\n")
    return path


# ---------------------------------------------------------------------------- TRL's side

def trl_side(model: str, prompts: str, steps: int, completion: int, generation: str,
             out: str) -> Dict[str, object]:
    """TRL's GRPOTrainer over ``steps`` steps; seconds of each optimizer step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in Path(prompts).read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    def reward(completions, **_) -> List[float]:
        return [parity_reward(c, "") for c in completions]

    marks: List[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    rollouts = PROMPTS_PER_STEP * GROUP_SIZE
    micro = max(GROUP_SIZE, MICRO_BATCH_TOKENS // (completion + 16))
    micro -= micro % GROUP_SIZE
    while rollouts % micro:
        micro -= GROUP_SIZE
    vllm = generation == "vllm"
    config = GRPOConfig(
        output_dir=out, max_steps=steps, learning_rate=LR, lr_scheduler_type="constant",
        per_device_train_batch_size=micro, gradient_accumulation_steps=rollouts // micro,
        num_generations=GROUP_SIZE, max_completion_length=completion,
        generation_kwargs={"min_tokens" if vllm else "min_new_tokens": completion},
        temperature=1.0, beta=0.0, epsilon=0.2, epsilon_high=0.28, num_iterations=1,
        use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
        vllm_max_model_length=256, use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=config,
                          reward_funcs=reward, train_dataset=data, processing_class=tokenizer,
                          callbacks=[Clock()])
    trainer.train()
    import torch

    return {"step_s": [b - a for a, b in zip(marks, marks[1:])],
            "threads": torch.get_num_threads(), "generation": generation}


# ---------------------------------------------------------------------------- duet's side

def duet_side(model: str, prompts: str, steps: int, completion: int, out: str
              ) -> Dict[str, object]:
    """duet's loop (vLLM rollout actor, reward pool, replay queue, DeepSpeed learner, weight
    sync) over ``steps`` steps; each step's wall time from its metrics."""
    import ray

    from cluster.contract.config import load_config
    from cluster.loop.driver import Driver
    from cluster.loop.launch import start_rollouts, stop_rollouts
    from cluster.loop.run_log import read_rows

    config = load_config(None, [
        f"model.path={model}", f"model.max_model_len={completion + 64}", "task.name=jsonl",
        f"task.path={prompts}", "task.eval_size=0", "eval.held_out=false",
        "rollout.reward=benchmarks.trl:parity_reward", f"rollout.min_new_tokens={completion}",
        f"rollout.max_new_tokens={completion}", "rollout.temperature=1.0",
        f"algo.group_size={GROUP_SIZE}", f"algo.prompts_per_step={PROMPTS_PER_STEP}",
        "algo.clip_low=0.2", "algo.clip_high=0.28", "algo.kl_coef=0", f"learner.lr={LR}",
        f"learner.micro_batch_tokens={MICRO_BATCH_TOKENS}", f"steps={steps}", "eval_every=0",
        f"output_dir={out}", "name=bench-trl-duet"])
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        actors = start_rollouts(config, model, Path(out) / "engines")
        try:
            Driver(config, Path(out) / "run", model, actors).run()
        finally:
            stop_rollouts(actors)
    finally:
        ray.shutdown()
    rows = read_rows(Path(out) / "run" / "metrics.jsonl", "step")
    return {"step_s": [r["step_s"] for r in rows],
            "computed_fraction": (sum(r["tokens_computed"] for r in rows)
                                  / sum(r["tokens_received"] for r in rows)),
            "informative_fraction": (sum(r["informative_groups"] for r in rows)
                                     / sum(r["groups"] for r in rows))}


# ---------------------------------------------------------------------------- the run

def side_process(which: str, args: Dict[str, object]) -> Dict[str, object]:
    """One side in a fresh interpreter (nothing of the other side's imports or threads)."""
    env = dict(os.environ)
    if which == "trl" and os.environ.get("DUET_TRL_PATH"):
        env["PYTHONPATH"] = os.pathsep.join([os.environ["DUET_TRL_PATH"],
                                             env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "benchmarks.trl", "--side", which, "--side-args", json.dumps(args)]
    print(f"[trl bench] {which}: running", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"[trl bench] the {which} side failed (exit {done.returncode})")
    print(f"[trl bench] {which}: done in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_step(step_s: List[float]) -> Dict[str, float]:
    timed = step_s[1:] or step_s
    med = statistics.median(timed)
    return {"median": med, "min": min(timed), "max": max(timed), "n": len(timed),
            "spread": (max(timed) - min(timed)) / 2 / med if med else 0.0}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="steps on each side (median of 2..N)")
    p.add_argument("--trl-generation", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--side", choices=("trl", "duet"), help=argparse.SUPPRESS)
    p.add_argument("--side-args", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        kw = json.loads(args.side_args)
        got = (trl_side(**kw) if args.side == "trl"
               else duet_side(**{k: v for k, v in kw.items() if k != "generation"}))
        print(json.dumps(got))
        return
    if not os.environ.get("DUET_TRL_PATH"):
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("TRL is not installed: pip install -e '.[bench-trl]', or set "
                             "DUET_TRL_PATH to a folder holding it")
    from benchmarks.rollout import MODEL_100M
    from cluster.policy.embedded import TINY_MODEL, build_model, build_tokenizer, save_model_folder

    tmp = scratch_dir("duet-bench-trl-")
    spec = TINY_MODEL if args.quick else MODEL_100M
    completion = 16 if args.quick else COMPLETION
    model = build_model(spec)
    params = sum(x.numel() for x in model.parameters())
    path = str(save_model_folder(model, build_tokenizer(), tmp / "model"))
    prompts = str(write_prompts(tmp / "prompts.jsonl", PROMPTS_PER_STEP * (args.steps + 2)))
    common = {"model": path, "prompts": prompts, "steps": args.steps, "completion": completion,
              "generation": args.trl_generation}
    trl = side_process("trl", {**common, "out": str(tmp / "trl")})
    duet = side_process("duet", {**common, "out": str(tmp / "duet")})
    rollouts = PROMPTS_PER_STEP * GROUP_SIZE
    trl_s, duet_s = per_step(trl["step_s"]), per_step(duet["step_s"])
    results = {
        "benchmark": "trl", "machine": machine(), "model_parameters": params,
        "rows": [{
            "figure": f"~{params / 1e6:.0f}M model, G = {GROUP_SIZE}, {rollouts} rollouts x "
                      f"{completion} tokens a step, {args.steps} steps; TRL generating with "
                      f"{trl['generation']}",
            "duet_step_s": duet_s, "trl_step_s": trl_s,
            "duet_rollouts_per_s": rollouts / duet_s["median"],
            "trl_rollouts_per_s": rollouts / trl_s["median"],
            "rollouts_per_s_vs_trl": trl_s["median"] / duet_s["median"],
            "duet_informative_fraction": duet["informative_fraction"],
            "duet_computed_fraction": duet["computed_fraction"],
            "trl_threads": trl["threads"],
        }],
        "duet_step_s": duet["step_s"], "trl_step_s": trl["step_s"],
    }
    emit(results, args.json)


if __name__ == "__main__":
    main()
