"""The rollout side of a weight sync: load chunks into the engine, then verify by probe.

Chunks stream: an object-store bucket's digest is checked before that bucket is loaded, and
vLLM's nccl/ipc engines receive straight into the model. An update that fails part way leaves
the engine without a verified version (its actor reports -1) until a whole update succeeds;
``update`` (every bucket in hand) checks all digests first and leaves the old weights in
place instead. After the load, the manifest's probe runs through the engine
(``prompt_logprobs``) and must match the learner's log-probs within the tolerance: a wrong
load is an error, never a silent divergence. The probe runs at the finish, or — when the
sender asks (``finish(verify=False)``) — inside the engine's next ``generate`` call, beside
the rollouts, instead of as an engine call of its own (``owed_probe``/``settle``); either
way no sample from unverified weights leaves the engine.

A LoRA update (``manifest.adapter_config`` set) carries the adapter alone: the engine's base
weights stay as they are, the adapter is written as a PEFT folder and every later engine
call names it in a vLLM ``LoRARequest`` whose id is new with each version, so the engine
takes the new adapter and drops the old one (``lora_request``); the probe runs through
base + adapter.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from cluster.contract.weights import (
    PROBE_TOLERANCE,
    WeightManifest,
    WeightSyncError,
    compare_probe,
    digest,
    tensor_views,
)


def sync_dir() -> Path:
    """Node-local folder for weight buckets: shared memory when there is some."""
    base = os.environ.get("DUET_SYNC_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    path = Path(base) / f"duet-sync-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class EngineWeights:
    """Loads verified policy versions into one ``vllm.LLM`` (through ``WeightReceiver``).

    One update is ``begin`` (the manifest: version, tensor names, probe), then chunks —
    ``load_bucket`` for object-store buckets, ``receive`` for vLLM's nccl/ipc engines —
    then ``finish``, which checks that every named tensor arrived and runs the probe.
    """

    def __init__(self, llm, engine_in_process: bool) -> None:
        self.llm = llm
        self.engine_in_process = engine_in_process
        self._manifest: Optional[WeightManifest] = None
        self._timings: Dict[str, float] = {}
        self._loaded: Set[str] = set()
        self._next_bucket = 0
        self.backend: Optional[str] = None
        self._owed: Optional[WeightManifest] = None  # loaded weights whose probe is due
        self.lora_request = None  # the adapter every engine call uses (LoRA runs)
        self._adapter: Optional[Dict[str, object]] = None  # an adapter update's tensors
        self._adapters_made = 0

    # ------------------------------------------------------------------ one update

    def begin(self, manifest: WeightManifest, mode: Optional[str] = None) -> None:
        """Start loading ``manifest.version``; the engine holds no verified version until
        ``finish`` returns. ``mode`` (``buckets`` or ``transfer``), when the sender says
        which chunks follow, starts the engine's side now — while the sender is still
        packing the first one — instead of when that chunk arrives."""
        self._manifest, self._loaded, self._next_bucket = manifest, set(), 0
        self._owed = None  # the weights it was owed for are being replaced
        self._mode: Optional[str] = None  # what the update started: buckets or transfer
        self._timings = {"transfer": 0.0, "load": 0.0, "verify": 0.0}
        self._adapter = {} if manifest.adapter_config else None
        self.lora_request = None  # whatever the engine used is being replaced
        if self._adapter is None and mode is not None:
            start = time.perf_counter()
            self._start_mode(mode)
            self._timings["load"] += time.perf_counter() - start

    def pending(self) -> WeightManifest:
        """The manifest of the update in progress; ``WeightSyncError`` when there is none."""
        if self._manifest is None:
            raise WeightSyncError("no weight update in progress (the engine restarted, or an "
                                  "earlier chunk failed): the update must start over")
        return self._manifest

    def load_bucket(self, index: int, expected: str, data) -> None:
        """Check one object-store bucket's digest, then load it; buckets arrive in order."""
        manifest = self.pending()
        if index != self._next_bucket:
            raise WeightSyncError(f"version {manifest.version}: bucket {index} arrived where "
                                  f"bucket {self._next_bucket} was due")
        start = time.perf_counter()
        if digest(data) != expected:
            self._manifest = None
            raise WeightSyncError(f"version {manifest.version}: bucket {index} is corrupted "
                                  "(digest mismatch); the update must start over")
        self._timings["transfer"] += time.perf_counter() - start
        start = time.perf_counter()
        named = list(tensor_views(data))
        if self._adapter is not None:  # kept (copied: the bucket is freed) for the finish
            self._adapter.update((name, t.clone()) for name, t in named)
        elif self.engine_in_process:
            self._start_mode("buckets")
            self.llm.collective_rpc("duet_load_tensors", args=(named,))
        else:
            self._start_mode("buckets")
            self.load_from_file(manifest.version, index, data)
        self._loaded.update(name for name, _ in named)
        del named
        self._next_bucket += 1
        self._timings["load"] += time.perf_counter() - start

    def init_transfer(self, backend: str, init_info: Dict[str, object]) -> None:
        """Join a vLLM weight-transfer engine (``nccl`` or ``ipc``) opened by the learner."""
        self.llm.collective_rpc("duet_transfer_init", args=(backend, init_info))
        self.backend = backend

    def receive(self, update_info: Dict[str, object]) -> None:
        """One chunk through vLLM's transfer engine (it receives and loads)."""
        if self.pending().adapter_config:
            raise WeightSyncError("a LoRA adapter travels by object_store, not through vLLM's "
                                  "nccl/ipc engines")
        if self.backend is None:
            raise WeightSyncError("no weight transfer engine joined: init_transfer first")
        start = time.perf_counter()
        self._start_mode("transfer")
        self.llm.collective_rpc("duet_transfer_update", args=(update_info,))
        self._loaded.update(update_info.get("names", ()))
        self._next_bucket += 1
        self._timings["transfer"] += time.perf_counter() - start

    def _start_mode(self, mode: str) -> None:
        if mode not in ("buckets", "transfer"):
            raise WeightSyncError(f"unknown weight update mode {mode!r}: buckets or transfer")
        if self._mode is None:
            self.llm.collective_rpc("duet_begin_reload" if mode == "buckets"
                                    else "duet_transfer_start")
            self._mode = mode
        elif self._mode != mode:
            raise WeightSyncError(f"an update mixing {self._mode} and {mode} chunks")

    def finish(self, verify: bool = True) -> Dict[str, float]:
        """Finish loading, check completeness, verify by probe; returns phase timings.
        ``verify=False``: the probe is owed instead, and runs in the engine's next call
        (``owed_probe``); the timings then carry no probe difference."""
        manifest = self.pending()
        self._manifest = None
        start = time.perf_counter()
        if self._mode is not None:
            self.llm.collective_rpc("duet_transfer_finish" if self._mode == "transfer"
                                    else "duet_finish_reload")
        missing = set(manifest.names) - self._loaded
        if missing:
            raise WeightSyncError(f"version {manifest.version}: {len(missing)} tensor(s) never "
                                  f"arrived (e.g. {sorted(missing)[0]}); the update must start "
                                  "over")
        if self._adapter is not None:
            self._take_adapter(manifest)
        # Cached prefixes hold keys/values computed by the old weights.
        self.llm.reset_prefix_cache()
        self._timings["load"] += time.perf_counter() - start
        if not verify:
            self._require_probe(manifest)
            self._owed = manifest
            return dict(self._timings)
        start = time.perf_counter()
        self._timings["probe_max_abs_diff"] = self.verify(manifest)
        self._timings["verify"] = time.perf_counter() - start
        return dict(self._timings)

    def update(self, manifest: WeightManifest, payload: Sequence[memoryview]) -> Dict[str, float]:
        """A whole update from buckets already in hand: every digest is checked before the
        engine is touched, so a corrupted payload leaves the previous weights in place."""
        if len(payload) != len(manifest.digests):
            raise WeightSyncError(f"version {manifest.version}: {len(payload)} buckets for "
                                  f"{len(manifest.digests)} digests")
        start = time.perf_counter()
        # Hashing releases the GIL, so buckets are hashed side by side.
        with ThreadPoolExecutor(max_workers=min(len(payload), os.cpu_count() or 1) or 1) as pool:
            for i, (got, expected) in enumerate(zip(pool.map(digest, payload), manifest.digests)):
                if got != expected:
                    raise WeightSyncError(
                        f"version {manifest.version}: bucket {i} is corrupted (digest "
                        "mismatch); the previous weights were left in place")
        checked = time.perf_counter() - start
        self.begin(manifest)
        for i, data in enumerate(payload):
            self.load_bucket(i, manifest.digests[i], data)
        timings = self.finish()
        timings["transfer"] = checked + timings["transfer"]
        return timings

    def load_from_file(self, version: int, index: int, data) -> None:
        """The separate-engine-process path: a bucket crosses as a node-local file."""
        folder = sync_dir()
        path = folder / f"v{version}-{index}.safetensors"
        try:
            with open(path, "wb") as fh:
                fh.write(data)
            self.llm.collective_rpc("duet_load_files", args=([str(path)],))
        finally:
            path.unlink(missing_ok=True)
            try:
                folder.rmdir()  # empty now; /dev/shm is memory, leave nothing behind
            except OSError:
                pass

    def _take_adapter(self, manifest: WeightManifest) -> None:
        """Write the adapter as a PEFT folder and make it the one every engine call names;
        the engine forgets the one before (its id is never used again)."""
        import shutil

        from vllm.lora.request import LoRARequest

        from cluster.contract.adapters import write_adapter

        tensors, self._adapter = self._adapter, None
        self._adapters_made += 1
        folder = write_adapter(sync_dir() / f"adapter-{self._adapters_made}", tensors,
                               manifest.adapter_config)
        old, self.lora_request = self._current, LoRARequest(
            f"duet-v{manifest.version}-{self._adapters_made}", self._adapters_made, str(folder))
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self._current = self.lora_request

    _current = None  # the adapter the engine holds (kept while an update replaces it)

    def probe(self, token_ids: Sequence[int]) -> List[float]:
        """Engine log-probs of token_ids[1:] given their prefixes (prompt_logprobs)."""
        prompt, params = self._probe_request(token_ids)
        out = self.llm.generate([prompt], params, use_tqdm=False,
                                lora_request=self.lora_request)[0]
        return self._read_probe(out, token_ids)

    @staticmethod
    def _probe_request(token_ids: Sequence[int]):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        return (TokensPrompt(prompt_token_ids=list(token_ids)),
                SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0))

    @staticmethod
    def _read_probe(out, token_ids: Sequence[int]) -> List[float]:
        return [lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], token_ids[1:])]

    def verify(self, manifest: WeightManifest) -> float:
        """Largest probe difference; ``WeightSyncError`` naming the version beyond tolerance,
        or when there is no probe (unverified weights are never reported as loaded)."""
        self._require_probe(manifest)
        return self._compare(manifest, self.probe(manifest.probe_token_ids))

    def owed_probe(self):
        """(prompt, sampling params) of the probe the loaded weights still owe, for the
        caller's next ``generate`` call to carry first; None when none is owed."""
        return None if self._owed is None else self._probe_request(self._owed.probe_token_ids)

    def settle(self, out) -> float:
        """Check the owed probe's engine output (``owed_probe``'s request); its largest
        difference, or ``WeightSyncError`` naming the version."""
        manifest, self._owed = self._owed, None
        if manifest is None:
            raise WeightSyncError("no probe is owed: nothing to settle")
        return self._compare(manifest, self._read_probe(out, manifest.probe_token_ids))

    @staticmethod
    def _require_probe(manifest: WeightManifest) -> None:
        if not manifest.probe_token_ids:
            raise WeightSyncError(f"policy version {manifest.version}: the manifest carries "
                                  "no probe, so the weights cannot be verified")

    @staticmethod
    def _compare(manifest: WeightManifest, got: Sequence[float]) -> float:
        try:
            return compare_probe(manifest.probe_logprobs, got, PROBE_TOLERANCE[manifest.dtype])
        except WeightSyncError as err:
            raise WeightSyncError(f"policy version {manifest.version}: {err}") from None
