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
from pathlib import Path
from typing import Dict, Iterator, Tuple

import torch

from cluster.contract.config import LearnerConfig


def on_gpu() -> bool:
    return torch.cuda.is_available()


def init_distributed(rank: int, world_size: int, store) -> None:
    """Join the learner's process group through ``store`` (rank 0's ``TCPStore``)."""
    os.environ.update({
        "RANK": str(rank), "WORLD_SIZE": str(world_size),
        # Ray gives each GPU rank its own CUDA_VISIBLE_DEVICES, so a rank's GPU is always
        # device 0 in its process (rank r's index would not exist there).
        "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
    })
    if not on_gpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    backend = "nccl" if on_gpu() else "gloo"
    if torch.distributed.is_initialized():
        # A process that hosts a second rank object in turn (tests, benchmarks) keeps its
        # group; a different geometry in one process is a mistake.
        got = (torch.distributed.get_rank(), torch.distributed.get_world_size())
        if got != (rank, world_size):
            raise RuntimeError(f"this process is already rank {got[0]} of {got[1]}; "
                               f"cannot also be rank {rank} of {world_size}")
    else:
        torch.distributed.init_process_group(backend, store=store, rank=rank,
                                             world_size=world_size)
    deepspeed.init_distributed(dist_backend=backend)  # adopts the process group above


def ds_config(config: LearnerConfig, bf16: bool, world_size: int,
              gpu: bool = False) -> Dict[str, object]:
    zero: Dict[str, object] = {"stage": config.zero_stage}
    if world_size == 1 and config.zero_stage < 3 and not gpu:
        # One rank has nothing to partition: ZeRO-1's optimizer without gradient hooks holds
        # the same state and takes bit-identical steps, minus ZeRO-2's hook on every
        # parameter each backward (about 2 ms of the tiny model's 120 ms step on CPU).
        # Checkpoints still say ZeRO-2 (``configured_stage``). A GPU rank keeps ZeRO-2, the
        # path that ran there, where the hooks are small against the step.
        zero = {"stage": 1, "contiguous_gradients": False, "overlap_comm": False}
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

    # Only what trains: with LoRA the frozen base holds no optimizer state at all.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    warmup = config.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=schedule,
                                           config=ds_config(config, bf16,
                                                            torch.distributed.get_world_size(),
                                                            on_gpu()))
    return engine


def configured_stage(engine) -> int:
    """The ZeRO stage a run asked for: a single CPU rank asked for ZeRO-2 runs ZeRO-1's
    optimizer (``ds_config``), whose saved state is the same."""
    stage = engine.zero_optimization_stage()
    return 2 if stage == 1 else stage


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


ENGINE_COUNTERS = ("global_steps", "global_samples", "skipped_steps", "micro_steps")


def save_state(engine, folder: str, rank: int) -> None:
    """This rank's optimizer partition, scheduler and step counters as safetensors + JSON.

    The model itself is saved by the caller (rank 0, Hugging Face safetensors); nothing here
    is pickled, so loading a checkpoint never runs code from disk.
    """
    from learner.state_io import save_tree

    save_tree(engine.optimizer.state_dict(), Path(folder) / f"optim-rank{rank}", extra={
        "zero_stage": configured_stage(engine),
        "world_size": engine.world_size,
        "scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler else None,
        "counters": {k: getattr(engine, k) for k in ENGINE_COUNTERS},
    })


def load_state(engine, folder: str, rank: int, model_dir: str) -> None:
    """Restore what ``save_state`` wrote (plus the model weights from ``model_dir``)."""
    from safetensors.torch import load_file

    from learner.state_io import StateFormatError, load_tree

    stem = Path(folder) / f"optim-rank{rank}"
    tree, meta = load_tree(stem, engine.optimizer.state_dict())
    stage, world = configured_stage(engine), engine.world_size
    if (meta["zero_stage"], meta["world_size"]) != (stage, world):
        raise StateFormatError(
            f"{stem}.json: saved with ZeRO-{meta['zero_stage']} on {meta['world_size']} ranks, "
            f"loading into ZeRO-{stage} on {world}; resume with the learner settings of the "
            "run that wrote it")
    if stage < 3:
        # ZeRO-2 keeps full module weights beside the fp32 partitions: load both.
        weights = {}
        for shard in sorted(Path(model_dir).glob("*.safetensors")):
            weights.update(load_file(str(shard)))
        load_weights(engine.module, weights, model_dir)
    # ZeRO reads only this rank's entry; the others stay None so a misuse fails loudly.
    entries = [None] * world
    entries[rank] = tree
    # fp32 master partitions from the file (exact), not re-derived from module weights.
    engine.optimizer.load_state_dict(entries, load_optimizer_states=True,
                                     load_from_fp32_weights=True)
    if engine.lr_scheduler is not None and meta.get("scheduler") is not None:
        engine.lr_scheduler.load_state_dict(meta["scheduler"])
    for k, v in meta["counters"].items():
        setattr(engine, k, v)


def load_weights(module, weights: Dict[str, torch.Tensor], model_dir: str) -> None:
    """A checkpoint's weights into ``module``: the whole model, or (LoRA) the adapter alone
    under PEFT's saved names; anything that does not fit is a ``StateFormatError``."""
    from cluster.contract.adapters import is_adapter
    from learner.state_io import StateFormatError

    if is_adapter(model_dir):
        from peft import set_peft_model_state_dict

        unexpected = set_peft_model_state_dict(module, weights).unexpected_keys
        if unexpected:
            raise StateFormatError(f"{model_dir}: adapter tensors the model has no place "
                                   f"for: {sorted(unexpected)[:5]}")
        return
    missing, unexpected = module.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if unexpected or set(missing) - tied:
        raise StateFormatError(f"{model_dir}: does not match the model (missing "
                               f"{sorted(set(missing) - tied)[:5]}, unexpected "
                               f"{sorted(unexpected)[:5]})")
