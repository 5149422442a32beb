"""LoRA on the learner (PEFT): the adapted model, its adapter tensors and their file layout.

With ``model.lora.rank > 0`` a learner rank trains low-rank adapters on a frozen base
(``peft.get_peft_model``); DeepSpeed's optimizer holds only the adapter. What leaves the
learner is the adapter alone, in PEFT's own layout — ``adapter_model.safetensors`` keyed
``base_model.model.<module>.lora_A.weight`` plus ``adapter_config.json`` — which
``PeftModel.from_pretrained`` and vLLM's ``LoRARequest`` both load. A checkpoint's
``model/`` folder holds that adapter; its ``base_model_name_or_path`` names the base, so a
rank (or a user) restarts from it with the base beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Tuple

import torch

from cluster.contract.adapters import ADAPTER_CONFIG, is_adapter
from cluster.contract.config import LoraConfig

__all__ = ["is_adapter", "load_model", "adapter_parameters", "adapter_config_json",
           "merged_model"]

def peft_config(lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), bias="none",
                          task_type="CAUSAL_LM")


def load_model(model_path: str, lora: LoraConfig, trust_remote_code: bool = False
               ) -> torch.nn.Module:
    """The model a rank trains: the full model at rank 0; with LoRA, the base with fresh
    adapters, or — ``model_path`` an adapter folder — its base with that adapter, trainable."""
    from transformers import AutoModelForCausalLM

    def base(path: str) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code)

    if is_adapter(model_path):
        from peft import PeftModel

        base_path = json.loads((Path(model_path) / ADAPTER_CONFIG).read_text())[
            "base_model_name_or_path"]
        return PeftModel.from_pretrained(base(base_path), model_path, is_trainable=True)
    model = base(model_path)
    if lora.rank == 0:
        return model
    from peft import get_peft_model

    return get_peft_model(model, peft_config(lora))


def saved_name(name: str) -> str:
    """A PEFT parameter's name as PEFT saves it (and vLLM reads it): without the adapter's
    name, ``….lora_A.default.weight`` -> ``….lora_A.weight``."""
    return name.replace(".default.", ".")


def adapter_parameters(module: torch.nn.Module) -> Iterator[Tuple[str, torch.nn.Parameter]]:
    """(saved name, parameter) of every adapter tensor, in module order."""
    for name, param in module.named_parameters():
        if "lora_" in name:
            yield saved_name(name), param


def adapter_config_json(module: torch.nn.Module) -> str:
    """The adapter's ``adapter_config.json`` text (PEFT's own serialisation)."""
    config = module.peft_config["default"].to_dict()
    config["target_modules"] = sorted(config["target_modules"])  # a set in PEFT: JSON needs order
    return json.dumps(config, default=str)


def merged_model(adapter_folder: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """Base + adapter folded into plain weights (``PeftModel.merge_and_unload``)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = json.loads((Path(adapter_folder) / ADAPTER_CONFIG).read_text())[
        "base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32,
                                                trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, adapter_folder).merge_and_unload()
