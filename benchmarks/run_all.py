"""``make bench``: every benchmark in one go, into ``benchmarks/results/<date>-<host>.json`` and
a Markdown table beside it.

Run: ``python -m benchmarks.run_all [--quick] [--only queue,rollout,...]``

Each benchmark runs in its own process (each starts and stops its own Ray instance) and
prints JSON; this collects them, adds the machine and the time each took, and renders every
ratio figure (``*_vs_*`` and ``*_2_vs_16``) with its median, spread and repetitions. Progress
goes to stderr as each benchmark starts and ends.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from benchmarks.common import machine

SUITE = ("queue", "rollout", "learner", "ties", "lora_sync", "floor", "e2e", "scaling")
RESULTS = Path(__file__).resolve().parent / "results"


def run_one(name: str, quick: bool) -> Dict[str, object]:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--json"] + (["--quick"] if quick else [])
    start = time.perf_counter()
    print(f"[bench] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"[bench] {name} failed (exit {out.returncode}) after {seconds:.0f} s")
    result = last_json(out.stdout)
    result["seconds"] = seconds
    print(f"[bench] {name}: done in {seconds:.0f} s", file=sys.stderr, flush=True)
    return result


def last_json(stdout: str) -> Dict[str, object]:
    """The JSON document a benchmark prints last (``emit``: a line that is only "{"): vLLM's
    in-process engine logs to the same stdout, with braces of its own, before it."""
    if stdout.startswith("{\n"):
        return json.loads(stdout)
    start = stdout.rfind("\n{\n")
    if start < 0:
        raise ValueError(f"no JSON document in the benchmark's output: {stdout[-300:]!r}")
    return json.loads(stdout[start + 1:])


def _cell(value: object) -> str:
    if isinstance(value, dict) and "median" in value:
        return (f"{value['median']:.3g} (min {value['min']:.3g}, max {value['max']:.3g}, "
                f"n={value['n']})")
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else str(value)


def markdown(results: Dict[str, Dict[str, object]], meta: Dict[str, object]) -> str:
    lines = [f"# duet benchmarks, {meta['date']} on {meta['host']}", "",
             f"{meta['machine']['processor']}, {os.cpu_count()} CPUs, Python "
             f"{meta['machine']['python']}. Every ratio is duet against a baseline measured "
             "in the same run (median of repetitions; min/max give the spread).", ""]
    for name, result in results.items():
        lines += [f"## {name} ({result['seconds']:.0f} s)", "",
                  "| figure | measure | value |", "| --- | --- | --- |"]
        for row in result.get("rows", []):
            for key, value in row.items():
                if key == "figure":
                    continue
                lines.append(f"| {row.get('figure', '')} | {key} | {_cell(value)} |")
        if result.get("note"):
            lines += ["", str(result["note"])]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--only", default=",".join(SUITE), help=f"comma-separated subset of {SUITE}")
    args = p.parse_args()
    names: List[str] = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SUITE))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {SUITE}")
    start = time.perf_counter()
    results = {name: run_one(name, args.quick) for name in names}
    meta = {"date": time.strftime("%Y-%m-%d"), "host": socket.gethostname(),
            "machine": machine(), "quick": args.quick,
            "total_seconds": time.perf_counter() - start}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{meta['date']}-{meta['host']}{'-quick' if args.quick else ''}"
    for suffix, text in ((".json", json.dumps({**meta, "benchmarks": results}, indent=1)),
                         (".md", markdown(results, meta))):
        tmp = stem.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, stem.with_suffix(suffix))
    print(markdown(results, meta))
    print(f"[bench] wrote {stem}.json and {stem}.md in {meta['total_seconds']:.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
