"""duet's pure algorithm core: advantage estimators and policy losses.

Imports torch only (no ray, deepspeed or vllm), so it can be tested and reused alone.
Everything is looked up by the name a config gives.
"""

from learner.algo.advantages import (
    ADVANTAGE_ESTIMATORS,
    STD_CONVENTIONS,
    compute_advantages,
    informative,
)
from learner.algo.losses import AGGREGATIONS, KL_ESTIMATORS, RATIO_LEVELS, policy_loss
from learner.algo.registry import Registry

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "RATIO_LEVELS",
    "STD_CONVENTIONS",
    "Registry",
    "compute_advantages",
    "informative",
    "policy_loss",
]
