"""Every algorithm choice the config accepts is registered in the pure core, and back.

The config (a contract, below the learner) spells its choices as ``Literal`` types so that
YAML is checked, with file and line, before anything starts; this test keeps those types
and the core's registries the same sets, so adding an estimator or an aggregation without
offering it in the config (or the reverse) fails here.
"""

import typing

import pytest

from cluster.contract.config import AlgoConfig, ConfigError, load_config
from learner.algo import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS,
    RATIO_LEVELS,
    STD_CONVENTIONS,
)

HINTS = typing.get_type_hints(AlgoConfig)
CHOICES = {
    "advantage": ADVANTAGE_ESTIMATORS,
    "aggregation": AGGREGATIONS,
    "kl_estimator": KL_ESTIMATORS,
    "ratio_level": RATIO_LEVELS,
    "std": STD_CONVENTIONS,
}


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_config_choices_equal_the_registered_names(key):
    assert sorted(typing.get_args(HINTS[key])) == sorted(CHOICES[key])


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_registered_name_loads_and_a_stranger_does_not(key):
    for name in CHOICES[key]:
        extra = ["algo.group_size=2"] if name == "pairwise" else []
        assert getattr(load_config(None, [f"algo.{key}={name}", *extra]).algo, key) == name
    with pytest.raises(ConfigError, match=f"algo.{key}"):
        load_config(None, [f"algo.{key}=not_registered"])
