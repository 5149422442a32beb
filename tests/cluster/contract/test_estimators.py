"""Evaluation estimators against hand-computed cases."""

import math

import pytest

from cluster.contract.estimators import average, ks_of, majority_correct, pass_at_k, summarize


def test_pass_at_k_hand_cases():
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 0, 8) == 0.0  # c = 0
    assert pass_at_k(8, 8, 1) == 1.0 and pass_at_k(8, 8, 8) == 1.0  # c = n
    assert pass_at_k(8, 1, 8) == 1.0  # n = k: any correct sample is among the k
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # pass@1 is the mean
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=10, c=2, k=3: 1 - C(8,3)/C(10,3) = 1 - 56/120
    assert pass_at_k(10, 2, 3) == pytest.approx(1 - 56 / 120)
    assert pass_at_k(10, 2, 3) == pytest.approx(1 - math.comb(8, 3) / math.comb(10, 3))


def test_pass_at_k_rejects_too_few_samples_and_bad_counts():
    with pytest.raises(ValueError, match="pass@8 needs at least 8 samples per prompt; got n=4"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError, match="within 0..n"):
        pass_at_k(4, 5, 2)


def test_ks_are_powers_of_two_up_to_k():
    assert ks_of(8) == [1, 2, 4, 8] and ks_of(1) == [1] and ks_of(12) == [1, 2, 4, 8, 12]


def test_majority_vote():
    assert majority_correct(["5", "6", "5"], [True, False, True])
    assert not majority_correct(["6", "6", "5"], [False, False, True])
    assert majority_correct(["5", "6"], [True, False])  # a tie: the first seen wins


def test_summary_recomputes_from_rows():
    rows = [{"prompt_id": "a", "n": 4, "correct": 0, "greedy": False, "majority": False},
            {"prompt_id": "b", "n": 4, "correct": 4, "greedy": True, "majority": True},
            {"prompt_id": "c", "n": 4, "correct": 1, "greedy": False, "majority": False,
             "errors": 1}]
    s = summarize(rows, 4)
    assert s["mean_at_k"] == pytest.approx(5 / 12)
    assert s["pass_at"]["1"] == pytest.approx(s["mean_at_k"])
    assert s["pass_at_k"] == pytest.approx((0 + 1 + 1) / 3)
    assert s["pass_at"]["2"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert s["accuracy"] == pytest.approx(1 / 3) and s["maj_at_k"] == pytest.approx(1 / 3)
    assert s["errors"] == 1 and s["n"] == 3 and s["samples"] == 12
    avg = average({"x": s, "y": {**s, "mean_at_k": 1.0, "accuracy": None}})
    assert avg["mean_at_k"] == pytest.approx((5 / 12 + 1) / 2)
    assert avg["accuracy"] == pytest.approx(1 / 3)
