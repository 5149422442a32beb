"""The colocated GPU path's first contact, on one GPU: a learner rank sends its weights by
CUDA IPC through vLLM's packed producer and consumer to an engine stand-in in another
process, with the packed buffer a Qwen2.5-Math-1.5B embedding needs; then the bf16 probe's
log-prob differences between the learner and the engine-side model under plain and
FlashAttention kernels.

Run on a GPU machine with torch, DeepSpeed and transformers. Ray and vLLM need not be
installed: vLLM's ``packed_tensor.py`` imports only torch, so it is loaded from a path when
vLLM is not there (carry the file from a vLLM install):
``DS_ACCELERATOR=cuda python -m benchmarks.ipc_gpu --packed-tensor PATH --json``

What runs: one learner rank (ZeRO-3, bf16) on a model of the 1.5B's width and vocabulary
(151,936 x 1,536 tied embeddings, ~467 MB in bf16) but two layers, one training step, the
rank's ``release_cached_memory``; then vLLM's ``packed_ipc_producer`` over duet's
``LearnerWeights`` with a buffer of ``transfer_buffer_bytes`` (and once with a bucket-sized
buffer, which vLLM refuses: the defect the sizing fixes), each chunk's handle to the engine
stand-in (vLLM's ``packed_ipc_consumer`` into a transformers model), which acknowledges each
before the buffer is reused, as vLLM requires. Reported: chunks and seconds, whether the
engine's weights equal the learner's bit for bit (a digest per tensor), the memory the cache
release returned, and the probe's differences against ``PROBE_TOLERANCE["bfloat16"]``.
``--quick`` runs the embedded tiny model.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Dict, List, Optional

import torch

from benchmarks.common import emit, machine, parser, scratch_dir
from benchmarks.learner_loops import make_batch
from cluster.contract.weights import BUCKET_BYTES, PROBE_TOLERANCE, digest, probe_logprobs
from cluster.policy.embedded import TinyModelSpec, build_model, build_tokenizer, save_model_folder
from learner.publish import LearnerWeights, check_buffer_fits, transfer_buffer_bytes

# The 1.5B's width and vocabulary (its embedding is the tensor that decides the buffer),
# two of its 28 layers: the transfer's hard case at a fraction of the memory and time.
QWEN_1_5B_EMBEDDING = TinyModelSpec(hidden_size=1536, num_layers=2, num_heads=12,
                                    num_kv_heads=2, intermediate_size=8960, max_position=4096)
QWEN_VOCAB = 151_936
REPLY_TIMEOUT_S = 300.0  # the engine's answer to one chunk: a hang ends as an error


def load_packed_tensor(path: Optional[str]):
    """vLLM's ``packed_tensor`` module: from ``path``, or from the installed vLLM."""
    if path is None:
        from vllm.distributed.weight_transfer import packed_tensor

        return packed_tensor
    spec = importlib.util.spec_from_file_location("vllm_packed_tensor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def send_packed(source, packed, buffer_bytes: int, gpu_uuid: str, to_engine, from_engine
                ) -> Dict[str, float]:
    """The learner's side: vLLM's packed IPC producer over ``source``; each chunk's
    metadata and handle go to the engine, whose answer must come before the producer
    resumes and overwrites the buffer."""
    chunks, sent = 0, 0
    for chunk in packed.packed_ipc_producer(iter(source), gpu_uuid, lambda item: item[1],
                                            buffer_bytes):
        to_engine.put(("chunk", {"names": chunk.names, "shapes": chunk.shapes,
                                 "dtype_names": chunk.dtype_names,
                                 "tensor_sizes": chunk.tensor_sizes,
                                 "ipc_handle": chunk.ipc_handle}))
        reply = from_engine.get(timeout=REPLY_TIMEOUT_S)
        if reply[0] != "ok":
            raise RuntimeError(f"the engine stand-in failed on chunk {chunks}: {reply[1]}")
        chunks += 1
        sent += sum(chunk.tensor_sizes)
    return {"chunks": chunks, "bytes": sent}


class EngineStandIn:
    """The engine's side: vLLM's packed IPC consumer, loading into a transformers model of
    the learner's architecture (where a vLLM engine would call ``load_weights``)."""

    def __init__(self, model: torch.nn.Module, packed, device_index: Optional[int]) -> None:
        self.model, self.packed, self.device_index = model, packed, device_index
        self.importer = packed.PackedBufferImporter()
        self.params = dict(model.named_parameters())
        self.loaded: List[str] = []

    def receive(self, info: Dict[str, Any]) -> None:
        tensors = self.packed.packed_ipc_consumer(
            ipc_handle=info["ipc_handle"], names=info["names"], shapes=info["shapes"],
            dtype_names=info["dtype_names"], tensor_sizes=info["tensor_sizes"],
            device_index=self.device_index, importer=self.importer)
        with torch.no_grad():
            for name, tensor in tensors:
                if name in self.params:  # a tied output projection arrives under its own name
                    self.params[name].copy_(tensor)
                self.loaded.append(name)

    def finish(self, token_ids: List[int]) -> Dict[str, Any]:
        """Digests of the loaded weights and the probe's log-probs per attention kernel."""
        self.importer.close()
        state = self.model.state_dict()
        digests = {n: tensor_digest(state[n]) for n in self.loaded if n in state}
        return {"digests": digests, "probe": attention_probes(self.model, token_ids)}


def tensor_digest(tensor: torch.Tensor) -> str:
    return digest(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy())


def attention_probes(model: torch.nn.Module, token_ids: List[int]) -> Dict[str, List[float]]:
    """The probe's log-probs with eager attention and with SDPA held to its FlashAttention
    kernel (what vLLM's GPU engine computes with); the latter only on a GPU."""
    out = {}
    model.eval()
    model.config._attn_implementation = "eager"
    out["eager"] = probe_logprobs(model, token_ids)
    device = next(model.parameters()).device
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        model.config._attn_implementation = "sdpa"
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out["flash"] = probe_logprobs(model, token_ids)
    return out


def engine_main(folder: str, packed_path: Optional[str], to_engine, from_engine) -> None:
    """The stand-in's process on the same GPU: load the model, then answer messages."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to("cuda")
        engine = EngineStandIn(model, load_packed_tensor(packed_path), torch.cuda.current_device())
        from_engine.put(("ready", None))
        while True:
            kind, payload = to_engine.get()
            if kind == "chunk":
                engine.receive(payload)
                torch.cuda.synchronize()
                from_engine.put(("ok", None))
            elif kind == "finish":
                from_engine.put(("done", engine.finish(payload)))
                return
    except Exception as err:  # noqa: BLE001 - reported to the learner's side, by name
        from_engine.put(("error", f"{type(err).__name__}: {err}"))


def probe_report(expected: List[float], got: Dict[str, List[float]]) -> Dict[str, Any]:
    """Per kernel: the largest |difference| and whether the bf16 tolerance allows it."""
    tolerance = PROBE_TOLERANCE["bfloat16"]
    return {kernel: {"max_abs_diff": max(abs(a - b) for a, b in zip(expected, values)),
                     "within_tolerance": all(tolerance.allows(a, b)
                                             for a, b in zip(expected, values)),
                     "logprobs": values}
            for kernel, values in got.items()}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--packed-tensor", default=None,
                   help="path of vLLM's distributed/weight_transfer/packed_tensor.py, where "
                        "vLLM is not installed")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.ipc_gpu needs a GPU (CUDA IPC); the same code runs on "
                         "CPU with stand-ins in tests/benchmarks/test_ipc_gpu.py")
    import torch.multiprocessing as mp

    from cluster.contract.config import load_config
    from cluster.contract.weights import start_manifest
    from learner.rank import LearnerRank

    packed = load_packed_tensor(args.packed_tensor)
    spec, vocab = (TinyModelSpec(), None) if args.quick else (QWEN_1_5B_EMBEDDING, QWEN_VOCAB)
    tmp = str(scratch_dir("duet-bench-ipc-gpu-"))
    model = build_model(spec, vocab_size=vocab)
    vocab_size = model.config.vocab_size
    path = str(save_model_folder(model, build_tokenizer(), f"{tmp}/model"))
    del model
    config = load_config(None, [
        "learner.num_ranks=1", "learner.zero_stage=3", "model.dtype=bfloat16",
        "cluster.gpus_per_actor=1", "cluster.placement=colocated", "rollout.num_workers=1",
        "learner.micro_batch_tokens=2048", "rollout.max_new_tokens=64",
        "model.max_model_len=128", "learner.lr=1e-5"])
    assert config.rollout.weight_transfer == "ipc"
    rank = LearnerRank(config, 0, 1)
    rank.start(path)
    rank.train_step(make_batch(8, 2, 32, 64, vocab_size if vocab else 18, 0))
    before = torch.cuda.memory_reserved()
    rank.release_cached_memory()
    released = before - torch.cuda.memory_reserved()

    source = LearnerWeights(rank.engine.module, zero3=True)
    largest_name, largest = source.largest()
    gpu_uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    try:  # what the sizing fixes: vLLM refuses a tensor larger than its buffer
        for _ in packed.packed_ipc_producer(iter(source), gpu_uuid, lambda item: item[1],
                                            BUCKET_BYTES):
            pass
        bucket_sized = "accepted"
    except ValueError as err:
        bucket_sized = f"refused: {err}"
    buffer = transfer_buffer_bytes(BUCKET_BYTES, largest)
    check_buffer_fits("ipc", buffer, largest_name, largest)
    manifest = start_manifest(1, source.names(), rank.engine.module, vocab_size, "bfloat16")

    ctx = mp.get_context("spawn")
    to_engine, from_engine = ctx.Queue(), ctx.Queue()
    engine = ctx.Process(target=engine_main, args=(path, args.packed_tensor, to_engine,
                                                   from_engine))
    engine.start()
    try:
        kind, payload = from_engine.get(timeout=REPLY_TIMEOUT_S)
        if kind != "ready":
            raise RuntimeError(f"the engine stand-in did not start: {payload}")
        torch.cuda.synchronize()
        start = time.perf_counter()
        sent = send_packed(source, packed, buffer, gpu_uuid, to_engine, from_engine)
        seconds = time.perf_counter() - start
        to_engine.put(("finish", list(manifest.probe_token_ids)))
        kind, result = from_engine.get(timeout=REPLY_TIMEOUT_S)
        if kind != "done":
            raise RuntimeError(f"the engine stand-in failed: {result}")
    finally:
        engine.join(timeout=60)
        if engine.is_alive():
            engine.kill()
    learner = {n: tensor_digest(t) for n, t in rank.weights().items()}
    mismatched = sorted(n for n, d in result["digests"].items() if learner.get(n) != d)
    row = {
        "figure": (f"{sum(t.numel() for t in rank.weights().values()) / 1e6:.0f}M-parameter "
                   f"model, 1 ZeRO-3 rank, bf16, packed CUDA IPC to a stand-in engine process"),
        "device_name": torch.cuda.get_device_name(),
        "largest_tensor": largest_name, "largest_tensor_bytes": largest,
        "bucket_bytes": BUCKET_BYTES, "bucket_sized_buffer": bucket_sized,
        "ipc_buffer_bytes": buffer, "chunks": sent["chunks"], "bytes_sent": sent["bytes"],
        "transfer_seconds": seconds,
        "tensors_checked": len(result["digests"]), "tensors_mismatched": mismatched,
        "cache_released_bytes": released,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "probe_learner_logprobs": list(manifest.probe_logprobs),
        "probe_vs_learner": probe_report(list(manifest.probe_logprobs), result["probe"]),
    }
    emit({"benchmark": "ipc_gpu", "machine": machine(), "rows": [row]}, args.json)


if __name__ == "__main__":
    main()
