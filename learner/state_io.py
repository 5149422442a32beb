"""State trees (optimizer, scheduler) on disk as safetensors + JSON: no pickle anywhere.

A state dict is a tree of dicts, lists and tuples whose leaves are tensors, plain scalars,
strings or library objects (DeepSpeed keeps a loss scaler and enums in its optimizer state).
``save_tree`` writes the tensors to ``<stem>.safetensors`` and the shape of the tree, with
the scalars, to ``<stem>.json``. Library objects are not written at all: ``load_tree`` takes
them from a *template*, the live state of a freshly built optimizer with the same
configuration, so nothing executable is ever read back from disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

_SCALARS = (type(None), bool, int, float, str)


class StateFormatError(ValueError):
    """A saved state tree that does not fit the running optimizer, or a damaged file."""


def _encode(node: Any, path: str, tensors: Dict[str, torch.Tensor], seen: Dict[Tuple, str]):
    if torch.is_tensor(node):
        key = (node.untyped_storage().data_ptr(), node.storage_offset(), tuple(node.shape),
               node.dtype)
        tensor = node.detach().to("cpu")
        # safetensors refuses tensors that share memory; a repeated one is stored as a copy.
        tensors[path] = tensor.clone() if key in seen else tensor.contiguous()
        seen[key] = path
        return {"t": path}
    if isinstance(node, dict):
        for k in node:
            if not isinstance(k, (str, int)):
                raise StateFormatError(f"{path}: dict key {k!r} is neither str nor int")
        return {"d": [[k, _encode(v, f"{path}/{k}", tensors, seen)] for k, v in node.items()]}
    if isinstance(node, (list, tuple)):
        items = [_encode(v, f"{path}[{i}]", tensors, seen) for i, v in enumerate(node)]
        return {"u" if isinstance(node, tuple) else "l": items}
    if isinstance(node, _SCALARS):
        return {"v": node}
    return {"o": type(node).__name__}  # a library object: rebuilt from the template


def _decode(node: Dict[str, Any], template: Any, path: str, tensors: Dict[str, torch.Tensor]):
    if "t" in node:
        if node["t"] not in tensors:
            raise StateFormatError(f"{path}: tensor {node['t']} missing from the safetensors file")
        return tensors[node["t"]]
    if "v" in node:
        return node["v"]
    if "o" in node:
        if template is None or type(template).__name__ != node["o"]:
            raise StateFormatError(f"{path}: saved a {node['o']}, the running optimizer has "
                                   f"{type(template).__name__}; was it built with another config?")
        return template
    if "d" in node:
        live = template if isinstance(template, dict) else {}
        return {k: _decode(v, live.get(k), f"{path}/{k}", tensors) for k, v in node["d"]}
    items = node.get("l", node.get("u"))
    if items is None:
        raise StateFormatError(f"{path}: unreadable entry {sorted(node)}")
    live = template if isinstance(template, (list, tuple)) else []
    out = [_decode(v, live[i] if i < len(live) else None, f"{path}[{i}]", tensors)
           for i, v in enumerate(items)]
    return tuple(out) if "u" in node else out


def save_tree(tree: Any, stem: Path, extra: Dict[str, Any] = None) -> None:
    """Write ``tree`` as ``stem.safetensors`` + ``stem.json`` (``extra``: more JSON fields)."""
    from safetensors.torch import save_file

    tensors: Dict[str, torch.Tensor] = {}
    skeleton = _encode(tree, "", tensors, {})
    stem = Path(stem)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    text = json.dumps({"tree": skeleton, **(extra or {})})
    with open(stem.with_suffix(".json"), "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def load_tree(stem: Path, template: Any) -> Tuple[Any, Dict[str, Any]]:
    """The tree saved at ``stem`` (library objects from ``template``), and its extra fields."""
    from safetensors.torch import load_file

    stem = Path(stem)
    try:
        meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        tensors = load_file(str(stem.with_suffix(".safetensors")))
    except Exception as err:  # OSError, JSON errors, safetensors' own error type
        raise StateFormatError(f"{stem}: unreadable saved state ({err})") from None
    tree = _decode(meta.pop("tree"), template, "", tensors)
    return tree, meta
