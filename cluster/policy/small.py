"""A small random model of a configured architecture, for self-checks (``duet doctor``).

For a local model folder: its own config with 2 layers, at most 4 attention heads (head size
kept) and an MLP of twice the width, and its own tokenizer, so engines, learner ranks and the
weight sync meet the real architecture, dtype and vocabulary at a fraction of the size. For
the embedded model: the embedded model at random initialisation.
"""

from __future__ import annotations

from pathlib import Path

from cluster.contract.config import RunConfig
from cluster.policy.embedded import EMBEDDED_PREFIX, build_embedded


def build_small(config: RunConfig, folder: Path) -> Path:
    """Write the small model for ``config.model.path`` into ``folder``; returns ``folder``."""
    if config.model.path.startswith(EMBEDDED_PREFIX):
        return build_embedded(folder)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = Path(config.model.path)
    trust = config.model.trust_remote_code
    shape = AutoConfig.from_pretrained(source, trust_remote_code=trust)
    head_dim = getattr(shape, "head_dim", None) or shape.hidden_size // shape.num_attention_heads
    heads = min(shape.num_attention_heads, 4)
    kv_heads = min(getattr(shape, "num_key_value_heads", heads), heads)
    shape.update({"num_hidden_layers": 2, "num_attention_heads": heads, "head_dim": head_dim,
                  "num_key_value_heads": kv_heads, "hidden_size": heads * head_dim,
                  "intermediate_size": 2 * heads * head_dim})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(shape, trust_remote_code=trust,
                                             torch_dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(source, trust_remote_code=trust).save_pretrained(folder)
    return folder
