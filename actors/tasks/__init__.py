"""Prompt sources with verifiable answers: the embedded arithmetic task and local datasets.

``make_source`` is the one place that knows every source; the sources themselves only know
the contract in ``base``.
"""

from actors.tasks.arithmetic import ArithmeticTask
from actors.tasks.base import Prompt, PromptSource, shard_positions
from actors.tasks.dataset import DatasetTask


def make_source(task_config, seed: int) -> PromptSource:
    """The prompt source a ``TaskConfig`` names."""
    if task_config.name == "arithmetic":
        return ArithmeticTask(digits=task_config.difficulty, seed=seed,
                              eval_size=task_config.eval_size)
    return DatasetTask(task_config, seed=seed)


__all__ = ["ArithmeticTask", "DatasetTask", "Prompt", "PromptSource", "make_source",
           "shard_positions"]
