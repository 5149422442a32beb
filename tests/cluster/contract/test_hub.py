"""Hub ids for model.path, resolved from a hub cache laid out locally (never the network)."""

from pathlib import Path

import pytest

from cluster.contract import hub
from cluster.contract.config import ConfigError, load_config
from tests.fixtures.hub_cache import lay_out_hub_cache


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_paths_and_ids_are_told_apart(tmp_path):
    assert hub.is_repo_id("Qwen/Qwen2.5-Math-1.5B")
    assert not hub.is_repo_id("data/train.jsonl")  # a missing file, never a repository
    assert not hub.is_repo_id("/models/Qwen2.5-Math-1.5B") and not hub.is_repo_id("a/b/c")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert not hub.is_repo_id(str(tmp_path / "org" / "name"))


def test_a_model_id_resolves_to_its_cached_snapshot_and_loads(tiny_model_path, offline_cache):
    from cluster.policy.models import resolve_model

    files = {p.name: p for p in Path(tiny_model_path).iterdir() if p.is_file()}
    snapshot = lay_out_hub_cache(offline_cache, "model", "duet-test/tiny", files)
    config = load_config(None, ["model.path=duet-test/tiny", "task.name=jsonl",
                                "task.path=unused.jsonl"])
    said = []
    folder = resolve_model(config, said.append)
    assert folder == snapshot and (folder / "config.json").is_file()
    assert "duet-test/tiny" in said[0]
    assert hub.snapshot_of(str(folder)) == ("model", "duet-test/tiny", snapshot.name)


def test_another_nodes_snapshot_path_resolves_through_this_nodes_cache(tiny_model_path,
                                                                      offline_cache):
    files = {p.name: p for p in Path(tiny_model_path).iterdir() if p.is_file()}
    here = lay_out_hub_cache(offline_cache, "model", "duet-test/tiny", files)
    there = f"/elsewhere/hub/models--duet-test--tiny/snapshots/{here.name}"
    assert hub.local_folder(there) == str(here)
    assert hub.local_folder(str(here)) == str(here)  # a path that exists is kept


def test_an_uncached_id_offline_says_what_to_do(offline_cache):
    from cluster.policy.models import resolve_model

    config = load_config(None, ["model.path=Qwen/Qwen2.5-Math-1.5B", "task.name=jsonl",
                                "task.path=unused.jsonl"])
    with pytest.raises(ConfigError) as err:
        resolve_model(config)
    message = str(err.value)
    assert "model.path" in message and "HF_HUB_OFFLINE is set and it is not in the cache" in message
    assert "hf download Qwen/Qwen2.5-Math-1.5B" in message
