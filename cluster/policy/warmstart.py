"""The embedded default's starting policy: the tiny model after a short supervised warm start.

A randomly initialised model never answers "37+45=" correctly, so RL has nothing to
reinforce. duet trains it supervised on the task's own training stream (prompt -> answer,
then end-of-sequence) with a linearly decaying learning rate, from a *slipping teacher*: 60%
of the targets are the sum plus one. The model so learns to add and also picks up a wrong
habit it prefers to the right answer; it lands near 35% greedy held-out accuracy (measured:
34.0%; mean@8 38.4%). That is the situation RL with a verifier is for: the right answer is
already among the model's samples, and only the reward can say which one it is. (Trained on
the plain sums instead, this model's errors are gaps in skill that 300 RL steps do not
close: held-out accuracy does not rise.) The result is cached by everything that determines
it (model shape, task, recipe), so it is built once per machine and both arms of a
comparison start from the very same weights. Deterministic: fixed seed, fixed steps, single
thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch

from actors.tasks.arithmetic import ArithmeticTask, verify
from cluster.policy.embedded import (
    TINY_MODEL,
    TinyModelSpec,
    build_model,
    build_tokenizer,
    save_model_folder,
)


@dataclass(frozen=True)
class WarmStart:
    """Supervised warm-start recipe for the embedded model."""

    steps: int = 4000
    """Optimizer steps of supervised training (learning rate decays linearly to 0)."""
    batch_size: int = 64
    """Examples per step."""
    lr: float = 3e-3
    """AdamW learning rate."""
    seed: int = 0
    """Seed for initialisation and the example stream."""
    teacher_slip: float = 0.6
    """Share of examples whose target is the sum plus one instead of the sum: a systematic
    slip the starting policy inherits. It then knows both answers and prefers the wrong one
    when this exceeds 0.5, which only a verifier can tell it."""


WARM_START = WarmStart()


def cache_root() -> Path:
    return Path(os.environ.get("DUET_CACHE", Path.home() / ".cache" / "duet"))


def cache_key(spec: TinyModelSpec, recipe: WarmStart, digits: int) -> str:
    text = json.dumps({"spec": asdict(spec), "recipe": asdict(recipe), "digits": digits,
                       "format": 2}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode(tokenizer, texts: List[str]) -> List[List[int]]:
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


@torch.no_grad()
def greedy_accuracy(model, tokenizer, prompts, max_new_tokens: int = 6) -> float:
    """Greedy exact-match accuracy on prompts (batched, left-padded decoding)."""
    ids = _encode(tokenizer, [p.text for p in prompts])
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    batch = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(i) for i in ids])[:, None])
    out = model.generate(batch, attention_mask=attn.long(), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return sum(verify(t, p.answer) for t, p in zip(texts, prompts)) / len(prompts)


def train_warm_start(folder: Path, digits: int, spec: TinyModelSpec = TINY_MODEL,
                     recipe: WarmStart = WARM_START,
                     progress: Optional[Callable[[int, float], None]] = None) -> Path:
    """Supervised training on the arithmetic task; saves the model folder atomically."""
    torch.manual_seed(recipe.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same arithmetic every time, on any machine size
    try:
        task = ArithmeticTask(digits=digits, seed=recipe.seed)
        tokenizer = build_tokenizer()
        model = build_model(spec, seed=recipe.seed)
        optim = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
        # Annealing to 0 leaves a settled policy: RL then starts from a stable point rather
        # than from wherever a constant-rate run happened to stop.
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optim, lambda step: max(0.0, 1 - step / recipe.steps))
        eos = tokenizer.eos_token_id
        position = 0
        loss = torch.tensor(0.0)
        for step in range(recipe.steps):
            prompts = [task.train(position + i) for i in range(recipe.batch_size)]
            position += recipe.batch_size
            rows, targets = [], []
            for i, p in enumerate(prompts):
                target = p.answer
                if random.Random(f"slip:{recipe.seed}:{position - recipe.batch_size + i}"
                                 ).random() < recipe.teacher_slip:
                    target = str(int(p.answer) + 1)
                prompt = _encode(tokenizer, [p.text])[0]
                answer = _encode(tokenizer, [target])[0] + [eos]
                rows.append(prompt + answer)
                targets.append([-100] * len(prompt) + answer)
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
            labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
            loss = model(input_ids=ids, labels=labels).loss
            optim.zero_grad()
            loss.backward()
            optim.step()
            schedule.step()
            if progress and (step + 1) % 100 == 0:
                progress(step + 1, float(loss.detach()))
        model.eval()
        accuracy = greedy_accuracy(model, tokenizer, task.eval_set())
    finally:
        torch.set_num_threads(threads)
    return save_model_folder(model, tokenizer, folder, extra={
        "stage": "warm_start", "spec": asdict(spec), "recipe": asdict(recipe),
        "digits": digits, "held_out_greedy_accuracy": accuracy, "final_loss": float(loss.detach()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


def prepare_embedded(digits: int, progress: Optional[Callable[[str], None]] = None,
                     recipe: WarmStart = WARM_START) -> Path:
    """The cached warm-started embedded model, built on first use."""
    folder = cache_root() / "models" / f"tiny-{cache_key(TINY_MODEL, recipe, digits)}"
    if (folder / "duet.json").exists():
        return folder
    say = progress or (lambda msg: None)
    say(f"building the embedded model (one-off supervised warm start, {recipe.steps} steps) "
        f"into {folder}")
    train_warm_start(folder, digits, recipe=recipe,
                     progress=lambda s, loss: say(f"warm start step {s}/{recipe.steps} loss {loss:.3f}"))
    info = json.loads((folder / "duet.json").read_text())
    say(f"warm start done: held-out greedy accuracy {info['held_out_greedy_accuracy']:.1%}")
    return folder
