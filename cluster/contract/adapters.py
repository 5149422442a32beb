"""The LoRA adapter's file layout, shared by the learner and the engines: PEFT's own.

``adapter_model.safetensors`` (tensors keyed ``base_model.model.<module>.lora_A.weight``)
and ``adapter_config.json``: what ``PeftModel.from_pretrained`` and vLLM's ``LoRARequest``
both load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter(folder: str) -> bool:
    """Whether ``folder`` holds a PEFT adapter (a LoRA checkpoint's ``model/``)."""
    return (Path(folder) / ADAPTER_CONFIG).exists()


def write_adapter(folder: Path, tensors: Dict[str, object], config_json: str) -> Path:
    """An adapter folder from its tensors and its config's JSON text."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / ADAPTER_WEIGHTS))
    (folder / ADAPTER_CONFIG).write_text(config_json)
    return folder
