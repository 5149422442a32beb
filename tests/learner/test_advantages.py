"""Advantage estimators: hand-worked cases, a numpy reference, and loop-vs-vectorised."""

import numpy as np
import pytest
import torch

from learner.algo import ADVANTAGE_ESTIMATORS, compute_advantages, informative


def test_g2_binary_hand_worked():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    expected = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert torch.equal(compute_advantages(rewards, "pairwise"), expected)
    pop = compute_advantages(rewards, "grpo", std="population")
    assert torch.allclose(pop, expected, atol=1e-5)
    unbiased = compute_advantages(rewards, "grpo", std="unbiased")
    assert torch.allclose(unbiased, expected * 0.70710678, atol=1e-5)
    assert torch.equal(informative(rewards), torch.tensor([True, True, False, False]))


def test_ties_give_zero_for_every_estimator():
    rewards = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    for name in ADVANTAGE_ESTIMATORS:
        adv = compute_advantages(rewards, name)
        assert torch.equal(adv, torch.zeros_like(adv)), name
    assert not informative(rewards).any()


def _numpy_reference(rewards: np.ndarray, estimator: str, std: str, eps: float) -> np.ndarray:
    mean = rewards.mean(axis=1, keepdims=True)
    if estimator == "grpo":
        ddof = 0 if std == "population" else 1
        return (rewards - mean) / (rewards.std(axis=1, ddof=ddof, keepdims=True) + eps)
    if estimator == "dr_grpo":
        return rewards - mean
    if estimator == "rloo":
        g = rewards.shape[1]
        return rewards - (rewards.sum(axis=1, keepdims=True) - rewards) / (g - 1)
    raise AssertionError(estimator)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("std", ["population", "unbiased"])
def test_g16_against_numpy(estimator, std):
    rng = np.random.default_rng(16)
    rewards = rng.integers(0, 2, size=(8, 16)).astype(np.float64)
    rewards[0] = 1.0  # one tied group
    got = compute_advantages(torch.from_numpy(rewards), estimator, std=std, eps=1e-6).numpy()
    np.testing.assert_allclose(got, _numpy_reference(rewards, estimator, std, 1e-6), atol=1e-10)
    assert np.all(got[0] == 0)


def test_g16_grpo_hand_worked():
    # 4 of 16 correct: mean 0.25, population std sqrt(0.25 * 0.75) = 0.4330
    rewards = torch.tensor([[1.0] * 4 + [0.0] * 12], dtype=torch.float64)
    adv = compute_advantages(rewards, "grpo", eps=0.0)
    assert adv[0, 0].item() == pytest.approx(0.75 / 0.4330127, rel=1e-6)
    assert adv[0, -1].item() == pytest.approx(-0.25 / 0.4330127, rel=1e-6)


def _loop_advantages(rewards, estimator, std, eps):
    out = []
    for row in rewards.tolist():
        g = len(row)
        mean = sum(row) / g
        if estimator == "pairwise":
            s = (row[0] > row[1]) - (row[0] < row[1])
            out.append([float(s), float(-s)])
        elif estimator == "dr_grpo":
            out.append([r - mean for r in row])
        elif estimator == "rloo":
            out.append([r - (sum(row) - r) / (g - 1) for r in row])
        else:
            var = sum((r - mean) ** 2 for r in row) / (g if std == "population" else g - 1)
            out.append([(r - mean) / (var ** 0.5 + eps) for r in row])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "pairwise"])
@pytest.mark.parametrize("seed", range(20))
def test_loop_equals_vectorised(estimator, seed):
    gen = torch.Generator().manual_seed(seed)
    group_size = 2 if estimator == "pairwise" else int(torch.randint(2, 17, (1,), generator=gen))
    rewards = torch.randint(0, 3, (7, group_size), generator=gen).double() / 2
    for std in ("population", "unbiased"):
        got = compute_advantages(rewards, estimator, std=std)
        torch.testing.assert_close(got, _loop_advantages(rewards, estimator, std, 1e-6))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="group_size 2"):
        compute_advantages(torch.zeros(3, 4), "pairwise")
    with pytest.raises(KeyError, match="did you mean 'grpo'"):
        compute_advantages(torch.zeros(3, 2), "grpoo")
    with pytest.raises(ValueError, match=r"\(P, G\)"):
        compute_advantages(torch.zeros(6), "grpo")
