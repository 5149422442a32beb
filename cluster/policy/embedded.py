"""The embedded tiny model: a Qwen2-architecture LM and a character tokenizer duet builds itself.

No hub access: the tokenizer is a character-level WordLevel vocabulary built with the
``tokenizers`` library, and the model is initialised from a ``Qwen2Config``. Both are saved
as an ordinary Hugging Face folder, so transformers, vLLM and DeepSpeed load it like any
other model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

EMBEDDED_PREFIX = "embedded:"
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
# Characters of the embedded arithmetic task: digits, operators, '=', space.
CHARACTERS = tuple("0123456789+-*= ")
VOCAB = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
# A chat template over that alphabet: the turns' contents, space-separated, and '=' as the
# generation prompt, so a user turn "12+7" renders as the task's own "12+7=". The embedded
# presets stay task.template=raw; this lets task.template=chat run on real code in tests.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}={% endif %}")


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the embedded model (about 0.8M parameters by default)."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (head size hidden_size / num_heads)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as Qwen2)."""
    intermediate_size: int = 512
    """MLP width."""
    max_position: int = 256
    """Longest sequence the position embedding covers."""


TINY_MODEL = TinyModelSpec()


def build_tokenizer():
    """A character-level fast tokenizer over the embedded task's alphabet."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                        eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(spec: TinyModelSpec = TINY_MODEL, vocab_size: Optional[int] = None, seed: int = 0):
    """A randomly initialised Qwen2ForCausalLM of the given shape (float32)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size or len(VOCAB),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position,
        tie_word_embeddings=True,
        pad_token_id=VOCAB["<pad>"],
        eos_token_id=VOCAB["<eos>"],
        bos_token_id=VOCAB["<eos>"],
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).float()


def draw_biases(model, std: float = 0.02, seed: int = 0):
    """``model`` with every bias drawn from N(0, std), as a trained model's are (a fresh
    Qwen2's are zero). Comparisons of weights relative to each tensor's norm need it: a zero
    bias after one step has a norm of about the learning rate."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def save_model_folder(model, tokenizer, folder: Path, extra: Optional[dict] = None) -> Path:
    """Save model + tokenizer as a Hugging Face folder, atomically (temp dir, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / "duet.json").write_text(json.dumps(extra, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def build_embedded(folder: Path, spec: TinyModelSpec = TINY_MODEL, seed: int = 0) -> Path:
    """Write the randomly initialised embedded model and its tokenizer to ``folder``."""
    return save_model_folder(build_model(spec, seed=seed), build_tokenizer(), folder,
                             extra={"spec": asdict(spec), "seed": seed, "stage": "init"})
