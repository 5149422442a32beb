"""DeepSpeed ZeRO set-up: the only module in duet that imports deepspeed.

ZeRO stage 2 or 3, fp32 or bf16, gradient clipping, a client AdamW and a constant learning
rate after a linear warm-up. On CPU the accelerator is DeepSpeed's CPU backend with gloo;
on GPU, NCCL. Gradient accumulation is driven by the caller (a variable number of
token-budget micro-batches per step): it marks the last micro-batch as the accumulation
boundary, then steps once.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Dict, Iterator, Tuple

import torch

from cluster.config import LearnerConfig


def on_gpu() -> bool:
    return torch.cuda.is_available()


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Join the learner's process group (ranks started by Ray rendezvous on their own)."""
    os.environ.update({
        "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(rank),
        "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0" if not on_gpu() else str(rank),
        "LOCAL_WORLD_SIZE": "1",
    })
    if not on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo")


def ds_config(config: LearnerConfig, bf16: bool) -> Dict[str, object]:
    zero: Dict[str, object] = {"stage": config.zero_stage}
    if config.zero_stage == 3:
        # Keep full-weight gathers (publishing, checkpoints) explicit and predictable.
        zero.update({"stage3_gather_16bit_weights_on_model_save": True})
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": config.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(model: torch.nn.Module, config: LearnerConfig, bf16: bool = False):
    """DeepSpeed engine around ``model`` with AdamW and a warm-up-then-constant LR."""
    import deepspeed

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    warmup = config.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=schedule,
                                           config=ds_config(config, bf16))
    return engine


@contextmanager
def full_parameters(engine) -> Iterator[None]:
    """Full (un-partitioned) parameters inside the block, on every rank; a collective."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()),
                                               modifier_rank=None):
            yield
    else:
        yield


def named_full_tensors(engine) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, full tensor) of the module's state; call inside ``full_parameters``."""
    for name, tensor in engine.module.state_dict().items():
        yield name, tensor.detach().to("cpu")


def save_state(engine, folder: str, tag: str) -> None:
    """Optimizer, scheduler and ZeRO partitions of every rank (a collective)."""
    engine.save_checkpoint(folder, tag=tag, save_latest=False)


def load_state(engine, folder: str, tag: str) -> None:
    engine.load_checkpoint(folder, tag=tag, load_optimizer_states=True,
                           load_lr_scheduler_states=True)
