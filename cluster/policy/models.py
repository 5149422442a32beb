"""Resolving ``model.path`` to a local model folder, with errors that say what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from cluster.contract import hub
from cluster.contract.config import ConfigError, RunConfig
from cluster.policy.embedded import EMBEDDED_PREFIX
from cluster.policy.warmstart import prepare_embedded


def resolve_model(config: RunConfig, say: Callable[[str], None] = print) -> Path:
    """The folder to load: the cached warm-started embedded model, a checked local path, or
    a Hugging Face id's snapshot in the hub cache."""
    path = config.model.path
    if path.startswith(EMBEDDED_PREFIX):
        if path != f"{EMBEDDED_PREFIX}tiny":
            raise ConfigError("model.path", "the only embedded model is 'embedded:tiny'",
                              value=path)
        if config.task.name != "arithmetic":
            raise ConfigError("model.path", "the embedded model only knows the embedded "
                              "'arithmetic' task's alphabet; give a real model for datasets",
                              value=path)
        return prepare_embedded(config.task.difficulty, say)
    if hub.is_repo_id(path):
        try:
            folder = hub.resolve(path, "model.path")
        except hub.HubError as err:
            raise ConfigError("model.path", str(err)) from None
        say(f"model.path {path} resolved to {folder}")
    else:
        folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError("model.path", "model folder not found; give a local Hugging Face "
                          "model folder or a hub id ('Qwen/Qwen2.5-Math-1.5B')", value=path)
    if not (folder / "config.json").is_file():
        raise ConfigError("model.path", "no config.json in the model folder", value=path)
    check_vocabulary(folder)
    return folder


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_vocabulary(folder: Path) -> None:
    """The tokenizer must not produce ids the model has no embedding for."""
    from transformers import AutoTokenizer

    vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer here rather than fail
        raise ConfigError("model.path", "cannot load a tokenizer from the folder: none of "
                          f"{', '.join(TOKENIZER_FILES)} is there; save the tokenizer beside "
                          "the model (tokenizer.save_pretrained)", value=str(folder))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ConfigError("model.path", f"cannot load a tokenizer from the folder ({err})",
                          value=str(folder)) from None
    if vocab is not None and len(tokenizer) > vocab:
        raise ConfigError("model.path", f"tokenizer has {len(tokenizer)} tokens but the model "
                          f"only {vocab} embeddings; they do not belong together",
                          value=str(folder))


def local_model(value: str) -> Path:
    """A model folder or hub id given on the command line (``duet eval --model``)."""
    try:
        return hub.resolve(value, "--model")
    except hub.HubError as err:
        raise ConfigError("--model", str(err)) from None
