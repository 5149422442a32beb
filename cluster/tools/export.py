"""``duet export``: a checkpoint's model as a plain Hugging Face folder.

A full-weights checkpoint is copied as it is; a LoRA adapter (PEFT's layout, whose config
names its base) is folded into the base with ``--merge`` (PEFT's ``merge_and_unload``), so
the result loads with ``AutoModelForCausalLM`` and serves in vLLM without LoRA.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cluster.contract.adapters import is_adapter
from cluster.contract.config import ConfigError


def export_model(model: Path, out: Path, merge: bool = False) -> Path:
    """Write ``model`` (a checkpoint's ``model/``) to ``out``, merged when it is an adapter;
    written beside ``out`` first and renamed, so a crash leaves no half folder."""
    if not (Path(model) / "config.json").exists() and not is_adapter(str(model)):
        raise ConfigError(str(model), "is not a model folder (no config.json) nor a LoRA "
                          "adapter (no adapter_config.json)",
                          hint="pass runs/<name>/checkpoints/<step>/model")
    if is_adapter(str(model)) and not merge:
        raise ConfigError(str(model), "is a LoRA adapter: add --merge to fold it into its "
                          "base (or load it with PeftModel.from_pretrained as it is)")
    out = Path(out)
    if out.exists():
        raise ConfigError(str(out), "exists already; choose a new folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if is_adapter(str(model)):
        from transformers import AutoTokenizer

        from learner.adapters import merged_model

        merged_model(str(model)).save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(model)).save_pretrained(tmp)
    else:
        shutil.copytree(model, tmp)
    tmp.rename(out)
    return out
