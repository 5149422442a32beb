"""Token-budget micro-batching and the combination of rank metrics, without Ray or DeepSpeed."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from learner.learner_actor import combine_metrics
from learner.rank import micro_batches


def test_rows_of_like_length_are_packed_together_under_the_budget():
    lengths = torch.tensor([4, 4, 8, 2, 2, 2, 16])
    # Shortest first: four rows pad to 4, two to 8; in arrival order it took four batches
    # ([0, 1], [2, 3], [4, 5], [6]) and padded the 2-token rows to 8.
    assert micro_batches(range(7), lengths, 16) == [[3, 4, 5, 0], [1, 2], [6]]


@given(st.lists(st.integers(1, 40), min_size=1, max_size=40), st.integers(1, 100))
def test_every_row_once_and_each_batch_within_budget(lengths, budget):
    t = torch.tensor(lengths)
    batches = micro_batches(range(len(lengths)), t, budget)
    assert sorted(r for b in batches for r in b) == list(range(len(lengths)))
    for b in batches:
        # a row longer than the budget on its own is a batch of one, never dropped
        assert len(b) == 1 or len(b) * max(lengths[r] for r in b) <= budget


def test_length_grouping_pads_far_less_when_lengths_are_mixed():
    """Long and short completions interleaved, as a step's groups deliver them: in arrival
    order every micro-batch pads to a long row; grouped by length only the long ones do."""
    lengths = [30, 5] * 16
    budget = 120
    grouped = micro_batches(range(32), torch.tensor(lengths), budget)
    padded = sum(len(b) * max(lengths[r] for r in b) for b in grouped)
    arrival = 32 * 30  # pairs (30, 5) pad to 30: 4 rows of 30 per micro-batch
    assert padded == 16 * 5 + 16 * 30 and padded <= 0.6 * arrival


def test_rank_metrics_combine_into_step_metrics():
    per_rank = [
        {"tokens": 30.0, "skipped_updates": 0.0, "groups": 8.0, "informative_groups": 5.0,
         "reward_mean": 0.5, "lr": 1e-3, "learner_seconds": 1.0, "loss": 0.25,
         "clip_fraction": 0.1},
        {"tokens": 10.0, "skipped_updates": 1.0, "groups": 8.0, "informative_groups": 5.0,
         "reward_mean": 0.5, "lr": 1e-3, "learner_seconds": 3.0, "loss": -0.05,
         "clip_fraction": 0.5},
    ]
    out = combine_metrics(per_rank)
    assert out["tokens"] == 40 and out["skipped_updates"] == 1  # counts add up
    assert out["groups"] == 8 and out["lr"] == 1e-3  # every rank saw the whole step
    assert out["learner_seconds"] == 3.0  # the step waits for the slowest rank
    assert out["loss"] == pytest.approx(0.2)  # per-rank shares of one global loss
    assert out["clip_fraction"] == pytest.approx((0.1 * 30 + 0.5 * 10) / 40)  # token-weighted
