"""The vLLM side of weight sync: a worker extension that reloads weights in place.

``WeightReceiver`` is passed to ``vllm.LLM(worker_extension_cls=...)`` and runs inside the
engine's worker process; it imports nothing of duet's learner (no DeepSpeed in the engine).

CPU path (runs here): the rollout actor receives the learner's safetensors buckets through
the Ray object store, checks each bucket's digest, writes it to a node-local file
(``/dev/shm`` when available), and calls ``duet_reload`` over ``collective_rpc``; the worker
streams tensors from those files into ``model_runner.reload_weights`` (layer-wise in-place
reload in checkpoint format, which also redoes the CPU backend's weight repacking).

GPU path: vLLM's native weight-transfer API with the NCCL engine (``NcclWeightTransfer``
builds its requests). It cannot run on these machines; its request contract is unit-tested
against vLLM's own request classes, and the README's status table says it has not yet run
on a GPU.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple


class WeightReceiver:
    """vLLM worker extension: methods callable through ``LLM.collective_rpc``."""

    def duet_reload(self, paths: Sequence[str]) -> int:
        """Reload the model from safetensors bucket files in place; returns tensors loaded."""
        from safetensors import safe_open

        count = 0

        def tensors() -> Iterator[Tuple[str, object]]:
            nonlocal count
            for path in paths:
                with safe_open(path, framework="pt") as fh:
                    for name in fh.keys():
                        count += 1
                        yield name, fh.get_tensor(name)

        self.model_runner.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return count


class NcclWeightTransfer:
    """Requests for vLLM's native NCCL weight transfer (GPU path; not yet run on a GPU).

    The learner's rank 0 joins the NCCL group as rank 0 and broadcasts tensors in the
    order of ``names``; each engine receives them through ``update_weights``.
    """

    def __init__(self, master_address: str, master_port: int, rank_offset: int,
                 world_size: int, packed: bool = True) -> None:
        self.init_info = {
            "master_address": master_address,
            "master_port": master_port,
            "rank_offset": rank_offset,
            "world_size": world_size,
            "packed": packed,
        }

    def init_request(self) -> Dict[str, object]:
        return {"init_info": dict(self.init_info)}

    @staticmethod
    def update_request(names: List[str], dtype_names: List[str], shapes: List[List[int]]
                       ) -> Dict[str, object]:
        if not len(names) == len(dtype_names) == len(shapes):
            raise ValueError("names, dtype_names and shapes must have one entry per tensor")
        return {"update_info": {"names": names, "dtype_names": dtype_names, "shapes": shapes}}

    def sync(self, llm, version: int, names: List[str], dtype_names: List[str],
             shapes: List[List[int]]) -> None:
        """One versioned update on an engine whose transfer engine is initialised."""
        llm.start_weight_update()
        llm.update_weights(self.update_request(names, dtype_names, shapes))
        llm.finish_weight_update(weight_version=str(version))
