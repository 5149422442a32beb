"""Prompt sources with verifiable answers: the embedded arithmetic task and local datasets."""

from actors.tasks.base import Prompt, PromptSource, make_source

__all__ = ["Prompt", "PromptSource", "make_source"]
