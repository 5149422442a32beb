"""Rewards: built-ins, and a pool that flags raising, hanging and NaN functions and goes on."""

import math

import pytest

from actors.reward import RewardPool, resolve

FIX = "tests.actors.reward_fixtures"


def test_builtins():
    assert resolve("arithmetic")("46", "46") == 1.0
    assert resolve("arithmetic")("47", "46") == 0.0
    assert resolve("exact")(" yes ", "yes") == 1.0
    assert resolve("math")("so the answer is \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert resolve("math")("the answer is \\boxed{3}", "4") == 0.0


def test_unknown_reward_is_clear():
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        resolve("nope")
    with pytest.raises(ValueError, match="cannot load it"):
        resolve("no.such.module:fn")


@pytest.fixture(scope="module")
def flags():
    return []


def pool(name, flags, timeout=1.0, **kw):
    return RewardPool(f"{FIX}:{name}", workers=2, timeout_s=timeout,
                      on_flag=lambda s, m: flags.append((s, m)), **kw)


def test_raising_reward_is_flagged(flags):
    with pool("raises", flags) as p:
        values, statuses = p.score(["a", "b"], ["x", "y"])
    assert statuses == ["error", "error"] and all(math.isnan(v) for v in values)
    assert any("RuntimeError: cannot score 'a'" in m for _, m in flags)


def test_hanging_reward_times_out_and_pool_goes_on(flags):
    with pool("hangs", flags, timeout=0.5) as p:
        values, statuses = p.score(["ok", "hang", "ok", "ok"], ["1"] * 4)
        assert statuses == ["ok", "timeout", "ok", "ok"]
        assert values[0] == 1.0 and math.isnan(values[1])
        assert p.score(["ok"], ["1"]) == ([1.0], ["ok"])  # still working afterwards


def test_reward_hung_in_c_is_killed_and_replaced(flags):
    with pool("hangs_in_c", flags, timeout=0.5) as p:
        values, statuses = p.score(["hang", "ok", "ok"], ["1"] * 3)
        assert statuses == ["timeout", "ok", "ok"] and values[1:] == [0.5, 0.5]
        assert p.restarts == 1
        assert p.score(["ok"], ["1"])[1] == ["ok"]


def test_nan_inf_and_non_numbers_are_flagged(flags):
    with pool("nan", flags) as p:
        values, statuses = p.score(["nan", "inf", "fine"], ["1"] * 3)
    assert statuses == ["error", "error", "ok"] and values[2] == 1.0
    with pool("not_a_number", flags) as p:
        assert p.score(["x"], ["1"])[1] == ["error"]
    assert any("returned str, not a number" in m for _, m in flags)


def test_memory_limit_flags_greedy_reward(flags):
    with pool("greedy", flags, memory_mb=1024) as p:
        _, statuses = p.score(["big", "small"], ["1", "1"])
    assert statuses == ["error", "ok"]
