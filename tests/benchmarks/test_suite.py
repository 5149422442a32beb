"""The benchmark suite's bookkeeping: phase split, time to target, summaries, the table.

The benchmarks themselves run with ``make bench`` (real engines, minutes); these check the
arithmetic that turns their measurements into the published figures.
"""

import pytest

from benchmarks.common import ratio_summary, summary
from benchmarks.e2e import first_at_target, phase_split, time_to_target
from benchmarks.run_all import last_json, markdown

STEPS = [{"step": s, "step_s": 1.0 + s / 10, "generate_s": 0.5, "reward_s": 0.1,
          "queue_put_s": 0.05, "queue_get_s": 0.05, "learner_seconds": 0.2, "sync_s": 0.1}
         for s in range(1, 7)]
EVALS = [{"step": 0, "accuracy": 0.3}, {"step": 2, "accuracy": 0.69},
         {"step": 4, "accuracy": 0.71}, {"step": 6, "accuracy": 0.5}]


def test_time_to_target_counts_only_the_steps_up_to_the_first_evaluation_at_target():
    assert first_at_target(EVALS, 0.7) == 4
    # steps 1..4 at 1.1, 1.2, 1.3, 1.4 s; evaluations are not training time
    assert time_to_target(EVALS, STEPS, 0.7) == pytest.approx(5.0)
    assert first_at_target(EVALS, 0.8) is None and time_to_target(EVALS, STEPS, 0.8) is None
    assert time_to_target(EVALS, STEPS, 0.3) == 0.0  # already there before training


def test_phase_split_sums_to_the_step_time():
    split = phase_split(STEPS)
    assert split["queue"] == pytest.approx(0.1)
    assert sum(split.values()) == pytest.approx(sum(r["step_s"] for r in STEPS) / len(STEPS))
    assert split["other"] == pytest.approx(1.35 - 1.0)


def test_summaries_and_table_carry_median_spread_and_repetitions():
    s = summary([1.0, 3.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    r = ratio_summary([2.0, 3.0], [1.0, 3.0])  # paired: 2.0 and 1.0
    assert (r["median"], r["min"], r["max"]) == (1.5, 1.0, 2.0)
    meta = {"date": "2026-01-01", "host": "h", "machine": {"processor": "x", "python": "3"}}
    table = markdown({"e2e": {"seconds": 5.0, "rows": [{"figure": "f", "x_vs_y": r},
                                                        {"figure": "g", "none": None}]}}, meta)
    assert "| f | x_vs_y | 1.5 (min 1, max 2, n=2) |" in table
    assert "| g | none | — |" in table


def test_the_results_are_found_after_engine_logs_with_braces_of_their_own():
    logged = ("INFO [api_utils.py] non-default args: {'dtype': 'float32'}\n"
              '{"not": "this"} either\n{\n  "benchmark": "floor",\n  "rows": []\n}\n')
    assert last_json(logged) == {"benchmark": "floor", "rows": []}
    assert last_json('{\n  "benchmark": "queue"\n}\n') == {"benchmark": "queue"}
    with pytest.raises(ValueError, match="no JSON document"):
        last_json("INFO only logs {x}\n")


@pytest.mark.parametrize("keep", ["", "1"])
def test_a_benchmarks_scratch_folder_is_removed_at_exit_unless_asked_to_keep_it(tmp_path, keep):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = ("from benchmarks.common import scratch_dir\n"
              "path = scratch_dir('duet-bench-test-')\n"
              "(path / 'checkpoint').write_bytes(b'x' * 1024)\n"
              "print(path)\n")
    env = {**os.environ, "TMPDIR": str(tmp_path), "DUET_KEEP_SCRATCH": keep}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, check=True, cwd=Path(__file__).parents[2])
    path = done.stdout.strip()
    assert path.startswith(str(tmp_path))
    if keep:
        assert os.path.exists(os.path.join(path, "checkpoint"))
        assert f"scratch kept in {path}" in done.stderr
    else:
        assert not os.path.exists(path)
