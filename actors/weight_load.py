"""The rollout side of a weight sync: check digests, load into the engine, verify by probe.

Every digest is checked before the engine is touched, so a corrupted payload leaves the
previous weights in place and raises ``WeightSyncError``. After the load, the manifest's
probe runs through the engine (``prompt_logprobs``) and must match the learner's log-probs
within the tolerance: a wrong load is an error, never a silent divergence.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence

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
    """Loads verified policy versions into one ``vllm.LLM`` (through ``WeightReceiver``)."""

    def __init__(self, llm, engine_in_process: bool) -> None:
        self.llm = llm
        self.engine_in_process = engine_in_process

    def update(self, manifest: WeightManifest, payload: Sequence[memoryview], current: int
               ) -> Dict[str, float]:
        """Check, load and verify ``payload`` (one buffer per bucket); returns phase timings.

        ``current`` is the version the engine holds now (named in errors).
        """
        timings = {"transfer": 0.0, "load": 0.0, "verify": 0.0}
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
                        f"mismatch); weights left at version {current}")
        timings["transfer"] = time.perf_counter() - start
        start = time.perf_counter()
        if self.engine_in_process:
            named = [pair for data in payload for pair in tensor_views(data)]
            self.llm.collective_rpc("duet_reload_tensors", args=(named,))
            del named
        else:
            self.reload_from_files(manifest.version, payload)
        # Cached prefixes hold keys/values computed by the old weights.
        self.llm.reset_prefix_cache()
        timings["load"] = time.perf_counter() - start
        start = time.perf_counter()
        timings["probe_max_abs_diff"] = self.verify(manifest)
        timings["verify"] = time.perf_counter() - start
        return timings

    def reload_from_files(self, version: int, payload: Sequence[memoryview]) -> None:
        """The separate-engine-process path: buckets cross as node-local files."""
        folder = sync_dir()
        paths: List[str] = []
        try:
            for i, data in enumerate(payload):
                path = folder / f"v{version}-{i}.safetensors"
                with open(path, "wb") as fh:
                    fh.write(data)
                paths.append(str(path))
            self.llm.collective_rpc("duet_reload", args=(paths,))
        finally:
            for p in paths:
                Path(p).unlink(missing_ok=True)
            try:
                folder.rmdir()  # empty now; /dev/shm is memory, leave nothing behind
            except OSError:
                pass

    def probe(self, token_ids: Sequence[int]) -> List[float]:
        """Engine log-probs of token_ids[1:] given their prefixes (prompt_logprobs)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(token_ids))], params,
                                use_tqdm=False)[0]
        return [lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], token_ids[1:])]

    def verify(self, manifest: WeightManifest) -> float:
        """Largest probe difference; ``WeightSyncError`` naming the version beyond tolerance."""
        if not manifest.probe_token_ids:
            return 0.0
        try:
            return compare_probe(manifest.probe_logprobs, self.probe(manifest.probe_token_ids),
                                 PROBE_TOLERANCE[manifest.dtype])
        except WeightSyncError as err:
            raise WeightSyncError(f"policy version {manifest.version}: {err}") from None
