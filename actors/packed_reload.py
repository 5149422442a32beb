"""In-place reload for a small vLLM CPU engine: load into stand-ins, then repack.

On CPU, vLLM repacks each unquantized linear layer's weight for oneDNN and drops the
checkpoint-format tensor (``dispatch_cpu_unquantized_gemm``), so new weights cannot be
copied in place. vLLM's layer-wise reload (``initialize_layerwise_reload``) copes with any
model: it puts every layer back on the meta device, counts each weight loader's elements by
a dry run, and rebuilds a layer once all its tensors have arrived. For a small model that
bookkeeping costs more than the weights: 9.8 ms an update for the 0.8M embedded model,
against 4.2 ms here, every step.

``PackedReload`` does the same job for the one case it is exact for (CPU; only unquantized
linear and embedding methods; a model whose packed weights fit ``MAX_STAND_IN_BYTES``),
with vLLM's own pieces:

- each packed layer gets back checkpoint-format parameters ("stand-ins"), rebuilt once
  from the metadata vLLM recorded when it loaded the model, and kept between updates;
- ``model.load_weights`` fills them (and the layers vLLM never repacks, norms and the
  embedding, in place) through vLLM's own weight loaders, stacked shards included;
- each layer's ``quant_method.process_weights_after_loading`` repacks it.

The engine's answers are bit-identical to the layer-wise reload's (tests/actors); every
update is still verified by the probe. Anything else (GPUs, quantized models, a model too
large to hold a second copy of its packed weights) keeps the layer-wise reload, which
never holds more than a few layers at once.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set, Tuple

import torch

# The quantization methods whose processing is a repack of the loaded weights, nothing else.
REPACKED_METHODS = ("UnquantizedLinearMethod", "UnquantizedEmbeddingMethod")

# The stand-ins are a second copy of every packed weight, held while the engine lives.
# Above this the copy costs memory a user would notice, and the layer-wise bookkeeping is
# noise next to moving the bytes anyway.
MAX_STAND_IN_BYTES = 512 << 20


class PackedReload:
    """Reloads one CPU model in place; ``build`` says whether it can."""

    def __init__(self, model: torch.nn.Module,
                 layers: List[Tuple[torch.nn.Module, Dict[str, torch.Tensor]]]) -> None:
        self.model, self.layers = model, layers
        self.tied_aliases = tied_aliases(model)

    @classmethod
    def build(cls, model: torch.nn.Module) -> Optional["PackedReload"]:
        """The reload for ``model``, or None where vLLM's layer-wise reload must run."""
        from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
        from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
        from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return None
        plan, total = [], 0
        for layer in model.modules():
            method = getattr(layer, "quant_method", None)
            if method is None:
                continue
            if type(method).__name__ not in REPACKED_METHODS:
                return None
            info = get_layerwise_info(layer)
            recorded, _ = info.restore_metadata
            if not recorded:  # vLLM kept no checkpoint-format shapes for this layer
                return None
            packed = {}
            for name, meta in recorded.items():
                current = getattr(layer, name, None)
                if current is None or tuple(current.shape) != tuple(meta.shape):
                    packed[name] = meta
                    total += meta.numel() * meta.element_size()
            plan.append((layer, info, packed))
        if not plan or total > MAX_STAND_IN_BYTES:
            return None
        layers = []
        for layer, info, packed in plan:
            with info.restore_device:
                # The recorded tensors carry vLLM's loader attributes (shard offsets, the
                # weight_loader) with the layer factored out; put the layer back in.
                layers.append((layer, {name: restore_layer_refs(materialize_meta_tensor(meta),
                                                                layer)
                                       for name, meta in packed.items()}))
        return cls(model, layers)

    def begin(self) -> None:
        """Give each packed layer its checkpoint-format parameters back."""
        for layer, stand_ins in self.layers:
            for name, tensor in stand_ins.items():
                delattr(layer, name)
                layer.register_parameter(name, tensor)

    def load(self, named: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load checkpoint-format tensors. A tied alias (``lm_head.weight`` of a model that
        ties it to the embedding) is left out: the tensor it names arrives under its first
        name, perhaps in another bucket, and vLLM refuses an alias without it in one call."""
        self.model.load_weights((name, tensor) for name, tensor in named
                                if name not in self.tied_aliases)

    def finish(self) -> None:
        """Repack every layer from what was loaded; the stand-ins stay for the next update
        (processing replaces each layer's parameter, it does not free the stand-in)."""
        for layer, _ in self.layers:
            layer.quant_method.process_weights_after_loading(layer)


def tied_aliases(model: torch.nn.Module) -> Set[str]:
    """Every name of a parameter after the first one module traversal reaches (the name
    vLLM loads it under)."""
    first: Dict[int, str] = {}
    aliases = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            qualname = f"{prefix}.{name}" if prefix else name
            if first.setdefault(id(param), qualname) != qualname:
                aliases.add(qualname)
    return aliases
