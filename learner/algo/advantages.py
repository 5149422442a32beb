"""Group-relative advantage estimators: rewards (P, G) -> advantages (P, G).

Every estimator sees a whole group at once (P prompts, G completions each), never rows
recovered by position, so a group's advantages depend only on that group's rewards.

Estimators (registered by the names used in config):

- ``grpo``: ``(r - mean) / (std + eps)`` over the group. The std convention matters at
  G=2: the *population* std (ddof=0) gives exactly +-1 for a mixed binary pair, the
  *unbiased* std (ddof=1, torch's default and verl's) gives +-0.7071, which only rescales
  the learning rate. duet defaults to population so that G=2 ``grpo`` equals ``pairwise``.
- ``dr_grpo``: ``r - mean`` (Dr. GRPO drops the std division to remove its difficulty bias).
- ``pairwise``: 2-GRPO as a preference pair: +1 for the better completion, -1 for the
  worse, 0 on a tie. Requires G == 2.
- ``rloo``: leave-one-out baseline ``r_i - mean_{j != i} r_j``.

A tied group (all rewards equal) gets zero advantage under every estimator; ``informative``
marks the groups that carry a learning signal.
"""

from __future__ import annotations

import torch

from learner.algo.registry import Registry

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")
STD_CONVENTIONS = ("population", "unbiased")


def informative(rewards: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
    """Which groups are not tied.

    Args:
        rewards: (P, G) rewards.
        atol: groups whose reward range is <= atol count as tied.
    Returns:
        (P,) bool, True where the group's rewards are not all equal.
    """
    spread = rewards.max(dim=-1).values - rewards.min(dim=-1).values  # (P,)
    return spread > atol


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(rewards: torch.Tensor, *, std: str = "population", eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages.

    Args:
        rewards: (P, G).
        std: "population" (ddof=0) or "unbiased" (ddof=1).
        eps: added to the std so tied groups give 0, not NaN.
    Returns:
        (P, G) advantages.
    """
    if std not in STD_CONVENTIONS:
        raise ValueError(f"std must be one of {STD_CONVENTIONS}, got {std!r}")
    mean = rewards.mean(dim=-1, keepdim=True)  # (P, 1)
    spread = rewards.std(dim=-1, keepdim=True, correction=0 if std == "population" else 1)
    return (rewards - mean) / (spread + eps)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, **_: object) -> torch.Tensor:
    """Mean-centred advantages, no std division.

    Args:
        rewards: (P, G).
    Returns:
        (P, G) advantages.
    """
    return rewards - rewards.mean(dim=-1, keepdim=True)


@ADVANTAGE_ESTIMATORS.register("pairwise")
def pairwise(rewards: torch.Tensor, **_: object) -> torch.Tensor:
    """2-GRPO as a preference pair: +1 / -1 for the better / worse completion, 0 on a tie.

    Args:
        rewards: (P, 2).
    Returns:
        (P, 2) advantages in {-1, 0, +1}.
    """
    if rewards.shape[-1] != 2:
        raise ValueError(f"pairwise advantages need group_size 2, got {rewards.shape[-1]}")
    sign = torch.sign(rewards[:, 0] - rewards[:, 1])  # (P,)
    return torch.stack([sign, -sign], dim=-1).to(rewards.dtype)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(rewards: torch.Tensor, **_: object) -> torch.Tensor:
    """Leave-one-out baseline: each sample against the mean of the others.

    Args:
        rewards: (P, G) with G >= 2.
    Returns:
        (P, G) advantages, equal to G / (G - 1) * (r - mean).
    """
    group_size = rewards.shape[-1]
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2")
    others = (rewards.sum(dim=-1, keepdim=True) - rewards) / (group_size - 1)  # (P, G)
    return rewards - others


def compute_advantages(
    rewards: torch.Tensor,
    estimator: str = "grpo",
    std: str = "population",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantages for a batch of groups by estimator name.

    Args:
        rewards: (P, G) rewards, one row per prompt group.
        estimator: a name in ``ADVANTAGE_ESTIMATORS``.
        std: std convention for ``grpo`` ("population" or "unbiased").
        eps: std floor for ``grpo``.
    Returns:
        (P, G) advantages, same dtype as rewards (floating).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (P, G), got shape {tuple(rewards.shape)}")
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    return ADVANTAGE_ESTIMATORS.get(estimator)(rewards, std=std, eps=eps)
