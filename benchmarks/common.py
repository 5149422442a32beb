"""Shared helpers for duet's benchmarks: repeated timing, medians with spread, JSON output.

Every figure a benchmark reports is measured against a baseline in the same process and run,
and given as a ratio; absolute numbers are printed beside it for context only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for a benchmark's models, runs and checkpoints, removed when the
    process exits (a ~100M floor run writes gigabytes of checkpoints; repeated runs must not
    fill the disk). ``DUET_KEEP_SCRATCH=1`` keeps it for inspection, and says where."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("DUET_KEEP_SCRATCH", "") not in ("", "0"):
        atexit.register(lambda: print(f"scratch kept in {path}", file=sys.stderr))
    else:
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> List[float]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(samples: List[float]) -> Dict[str, float]:
    """Median and spread (min, max, relative half-range) of repeated measurements."""
    med = statistics.median(samples)
    return {
        "median": med,
        "min": min(samples),
        "max": max(samples),
        "spread": (max(samples) - min(samples)) / 2 / med if med else 0.0,
        "n": len(samples),
    }


def ratio_summary(numer: List[float], denom: List[float]) -> Dict[str, float]:
    """Per-repetition ratios numer[i] / denom[i] (paired, measured back to back)."""
    return summary([n / d for n, d in zip(numer, denom)])


def machine() -> Dict[str, str]:
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per figure")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for smoke tests")
    return p


def emit(results: Dict, as_json: bool) -> None:
    if as_json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for row in results.get("rows", []):
            print("  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))


def _fmt(v: object) -> str:
    if isinstance(v, dict) and "median" in v:
        return f"{v['median']:.3g}(±{100 * v['spread']:.0f}%)"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
