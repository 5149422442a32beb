"""Hugging Face hub ids for ``model.path`` and ``task.path``, resolved through the hub cache.

A path that exists is used as it is. Otherwise a hub id ('Qwen/Qwen2.5-Math-1.5B') is
fetched into, or found in, huggingface_hub's cache (``HF_HOME`` / ``HF_HUB_CACHE``); with
``HF_HUB_OFFLINE=1`` only the cache is read. The result is a snapshot folder
``.../models--org--name/snapshots/<revision>``: a node that lacks it (a cache that is not
shared) resolves the same repository and revision through its own cache
(``local_folder``), so every node loads the same files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Tuple

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# 'data/train.jsonl' is a file that is missing, never a repository.
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv", ".txt", ".yaml", ".yml",
                 ".safetensors", ".bin")
SNAPSHOT = re.compile(r"(models|datasets)--(.+?)--([^/]+)/snapshots/([0-9a-f]{40})")


class HubError(ValueError):
    """A hub id that cannot be resolved here; says what to do."""


def is_repo_id(value: str) -> bool:
    """'org/name' that is not a local path."""
    return (bool(REPO_ID.fullmatch(value)) and not value.endswith(FILE_SUFFIXES)
            and not Path(value).expanduser().exists())


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve(value: str, key: str, repo_type: str = "model",
            revision: Optional[str] = None) -> Path:
    """The local folder for ``value``: the path itself, or a hub id's cached snapshot.

    Args:
        value: a local path or an 'org/name' hub id.
        key: the config key it came from, named in errors ('model.path').
        repo_type: 'model' or 'dataset'.
    Raises:
        HubError: not a local path, and the id is not in the cache while offline (or the
            download failed).
    """
    path = Path(value).expanduser()
    if path.exists():
        return path
    if not is_repo_id(value):
        raise HubError(f"{key}={value!r}: file or folder not found, and not a Hugging Face "
                       "id ('org/name'); give a local path or a hub id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(value, repo_type=repo_type, revision=revision,
                                      local_files_only=offline()))
    except Exception as err:  # huggingface_hub raises several types (offline, 404, network)
        from huggingface_hub import constants

        how = ("HF_HUB_OFFLINE is set and it is not in the cache" if offline()
               else f"it could not be downloaded ({type(err).__name__}: {err})")
        fetch = f"hf download {value}" + (" --repo-type dataset" if repo_type == "dataset" else "")
        raise HubError(
            f"{key}={value!r}: no such local path, and as a Hugging Face id {how} "
            f"(cache: {constants.HF_HUB_CACHE}). Fetch it where the hub is reachable ({fetch}) "
            f"into that cache, or point {key} at a local folder") from None


def snapshot_of(path: str) -> Optional[Tuple[str, str, str]]:
    """(repo_type, repo id, revision) when ``path`` is a hub cache snapshot folder."""
    found = SNAPSHOT.search(str(path))
    if not found:
        return None
    kind, org, name, revision = found.groups()
    return kind[:-1], f"{org}/{name}", revision


def local_folder(path: str, key: str = "model.path") -> str:
    """``path`` where it exists on this node; a hub snapshot another node resolved is
    resolved again here, at the same revision, through this node's cache."""
    if Path(path).exists():
        return path
    snapshot = snapshot_of(path)
    if snapshot is None:
        return path  # the caller's own "not found" error says more
    repo_type, repo_id, revision = snapshot
    return str(resolve(repo_id, key, repo_type, revision))
