"""``arm_config``: each arm's geometry and learning rate, from the base config alone."""

import math

import pytest

from cluster.contract.config import ConfigError, load_config
from cluster.loop.compare import arm_config, parse_arms

BASE = load_config(None, ["name=cmp", "algo.group_size=2", "algo.prompts_per_step=32",
                          "learner.lr=8e-6", "algo.mini_batches=4", "steps=10"])


def test_rollouts_per_step_are_equal_and_lr_is_linear_in_prompts():
    g2, g16 = arm_config(BASE, "2"), arm_config(BASE, "16")
    assert (g2.algo.prompts_per_step, g16.algo.prompts_per_step) == (32, 4)
    assert g2.algo.rollouts_per_step == g16.algo.rollouts_per_step == 64
    assert g2.learner.lr == pytest.approx(8e-6)
    assert g16.learner.lr == pytest.approx(1e-6)  # the paper's pair: 8x the prompts, 8x the lr
    assert (g2.name, g16.name) == ("cmp-g2", "cmp-g16")
    assert g16.algo.mini_batches == 4


@pytest.mark.parametrize("rule, factor", [("sqrt", math.sqrt(4 / 32)), ("same", 1.0)])
def test_other_lr_rules(rule, factor):
    assert arm_config(BASE, "16", rule).learner.lr == pytest.approx(8e-6 * factor)


def test_mini_batches_never_exceed_prompts_and_pairwise_falls_back_for_larger_groups():
    base = load_config(None, ["algo.group_size=2", "algo.prompts_per_step=8",
                              "algo.mini_batches=8", "algo.advantage=pairwise"])
    g16 = arm_config(base, "16")
    assert g16.algo.prompts_per_step == 1 and g16.algo.mini_batches == 1
    assert g16.algo.advantage == "grpo"
    assert arm_config(base, "2").algo.advantage == "pairwise"


def test_resampling_arm_and_rollout_budget():
    rs = arm_config(BASE, "2+rs", budget="rollouts")
    assert rs.rollout.tie_handling == "resample" and rs.name == "cmp-g2rs"
    assert rs.max_rollouts == 10 * 64
    assert arm_config(BASE, "2").max_rollouts == 0


def test_bad_arms_and_rules_are_named():
    with pytest.raises(ConfigError, match="not a multiple of its group size"):
        arm_config(BASE, "3")
    with pytest.raises(ConfigError, match="--lr-rule"):
        arm_config(BASE, "2", "cubic")
    with pytest.raises(ConfigError, match="arm '1'"):
        parse_arms("2,1")
    assert parse_arms(" 2, 2+rs ,16") == ["2", "2+rs", "16"]
