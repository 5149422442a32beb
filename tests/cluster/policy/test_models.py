"""``model.path`` checks: each bad model folder gets an error naming the key and what to do."""

import json
import shutil

import pytest

from cluster.contract.config import ConfigError, load_config
from cluster.policy.models import resolve_model


def resolve(path, *extra):
    return resolve_model(load_config(None, [f"model.path={path}", *extra]), say=lambda m: None)


def test_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path.*model folder not found.*or a hub id"):
        resolve(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        resolve(tmp_path)


def test_tokenizer_larger_than_the_embedding_table(tiny_model_path, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 8  # the tokenizer has 18 tokens
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="tokenizer has 18 tokens but the model only 8"):
        resolve(folder)
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 8  # untouched


def test_folder_without_tokenizer(tiny_model_path, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(f"{tiny_model_path}/config.json", folder)
    with pytest.raises(ConfigError, match="cannot load a tokenizer"):
        resolve(folder)


def test_unknown_embedded_model_and_task_mismatch():
    with pytest.raises(ConfigError, match="the only embedded model is 'embedded:tiny'"):
        resolve("embedded:huge")
    with pytest.raises(ConfigError, match="only knows the embedded 'arithmetic' task"):
        resolve("embedded:tiny", "task.name=jsonl", "task.path=x.jsonl")
