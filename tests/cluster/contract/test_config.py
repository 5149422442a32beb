"""Config loading: defaults, YAML round trip, overrides, and every class of error."""

import dataclasses
import re

import pytest

from cluster.contract.config import (
    AlgoConfig,
    ConfigError,
    RunConfig,
    field_help,
    load_config,
    to_yaml,
)


def test_defaults_are_the_embedded_run():
    config = load_config()
    assert config == RunConfig()
    assert config.model.path == "embedded:tiny"
    assert config.algo.group_size == 2
    assert config.cluster.metrics_host == "127.0.0.1"
    assert config.model.trust_remote_code is False


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().algo.group_size = 3  # type: ignore[misc]


def test_yaml_round_trip(tmp_path):
    config = load_config(None, ["algo.group_size=16", "algo.prompts_per_step=4",
                                "learner.betas=[0.9, 0.95]", "algo.dual_clip=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    again = load_config(path)
    assert again == config
    assert again.learner.betas == (0.9, 0.95)
    assert again.algo.dual_clip == 3.0 and isinstance(again.algo.dual_clip, float)


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 1e-4\n")  # YAML 1.1 would read a string
    assert load_config(path, ["algo.eps=1e-8"]).learner.lr == 1e-4
    assert load_config(None, ["learner.lr=3E-5"]).learner.lr == 3e-5


def test_file_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  group_size: 16\n  prompts_per_step: 4\nlearner:\n  lr: 1.0e-6\n")
    config = load_config(path, ["algo.group_size=8", "name=arm8"])
    assert config.algo.group_size == 8 and config.algo.prompts_per_step == 4
    assert config.learner.lr == 1e-6 and config.name == "arm8"


def test_misspelt_key_suggests_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  group_size: 2\n  clip_hihg: 0.3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:3:" in message
    assert "'algo.clip_hihg'" in message and "unknown key" in message
    assert "did you mean 'algo.clip_high'?" in message


def test_unknown_section_suggests_closest():
    with pytest.raises(ConfigError, match=r"'algos'.*did you mean 'algo'"):
        load_config({"algos": {"group_size": 2}})


def test_wrong_type_names_key_and_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: fast\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:2:" in str(err.value)
    assert "'learner.lr': expected float (got 'fast')" in str(err.value)
    with pytest.raises(ConfigError, match=r"'algo.group_size': expected int \(got True\)"):
        load_config(None, ["algo.group_size=true"])
    with pytest.raises(ConfigError, match=r"'algo.advantage'.*did you mean 'grpo'"):
        load_config(None, ["algo.advantage=gpro"])


@pytest.mark.parametrize(
    "override, key, problem",
    [
        ("algo.group_size=1", "algo.group_size", "must be >= 2"),
        ("algo.clip_low=0", "algo.clip_low", "0 < clip_low < 1"),
        ("algo.clip_low=1.5", "algo.clip_low", "0 < clip_low < 1"),
        ("algo.clip_high=0.1", "algo.clip_high", "must be >= clip_low"),
        ("algo.prompts_per_step=0", "algo.prompts_per_step", "must be >= 1"),
        ("learner.micro_batch_tokens=-5", "learner.micro_batch_tokens", "must be >= 1"),
        ("queue.capacity_bytes=0", "queue.capacity_bytes", "must be >= 1"),
        ("learner.lr=0.0", "learner.lr", "must be > 0"),
        ("steps=0", "steps", "must be >= 1"),
        ("rollout.max_new_tokens=600", "model.max_model_len", "must exceed"),
    ],
)
def test_invariants(override, key, problem):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key
    assert problem in str(err.value)
    assert f"'{key}'" in str(err.value)


def test_pairwise_needs_group_of_two():
    with pytest.raises(ConfigError, match="'algo.advantage'.*group_size = 2"):
        load_config(None, ["algo.advantage=pairwise", "algo.group_size=4"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("algo:\n  group_size: 2\n  clip_low: [0.2\nlearner: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "malformed YAML" in str(err.value)
    assert err.value.line is not None and err.value.line >= 3


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["algo.group_size"])
    with pytest.raises(ConfigError, match=r"'algo.group_size': expected int"):
        load_config(None, ["algo.group_size.x=1"])


def test_every_field_has_help():
    for cls in (RunConfig, AlgoConfig):
        docs = field_help(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"


def test_rollouts_per_step():
    assert load_config(None, ["algo.group_size=16", "algo.prompts_per_step=32"]
                       ).algo.rollouts_per_step == 512


@pytest.mark.parametrize("overrides, want", [
    ([], "object_store"),  # CPU
    (["cluster.gpus_per_actor=1"], "nccl"),  # engines on their own GPUs
    (["cluster.gpus_per_actor=1", "cluster.placement=colocated"], "ipc"),
    (["cluster.gpus_per_actor=1", "cluster.placement=colocated", "rollout.num_workers=2"],
     "object_store"),  # a GPU without a rank on it cannot take an IPC handle
    (["cluster.placement=colocated"], "object_store"),
])
def test_auto_weight_transfer_follows_device_and_placement(overrides, want):
    assert load_config(None, overrides).rollout.weight_transfer == want


@pytest.mark.parametrize("overrides, problem", [
    (["rollout.weight_transfer=nccl"], "has none (cluster.gpus_per_actor=0)"),
    (["rollout.weight_transfer=ipc", "cluster.gpus_per_actor=1"],
     "set cluster.placement=colocated"),
    (["rollout.weight_transfer=nccl", "cluster.gpus_per_actor=1", "cluster.placement=colocated"],
     "NCCL cannot join two processes on one GPU"),
    (["rollout.weight_transfer=ipc", "cluster.gpus_per_actor=1", "cluster.placement=colocated",
      "rollout.num_workers=2"], "must equal rollout.num_workers"),
    (["cluster.placement=colocated", "cluster.mode=async"], "needs cluster.mode=sync"),
    (["cluster.placement=colocated", "learner.num_ranks=2"], "must not exceed"),
])
def test_placement_and_transport_that_cannot_work_are_refused(overrides, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(None, overrides)


def test_colocated_bundles_hold_an_engine_and_a_rank_on_one_set_of_gpus():
    config = load_config(None, ["cluster.gpus_per_actor=1", "cluster.placement=colocated",
                                "rollout.num_workers=4", "learner.num_ranks=4"])
    assert config.cluster.bundle("rollout", 1) == {"CPU": 2.0, "GPU": 1.0}
    assert config.cluster.shared_actor_options("learner")["num_gpus"] == 0.5
    assert config.gpus == 4  # not 8: each rank shares an engine's GPU
    assert config.rollout.gpu_memory_utilization == 0.425  # half of a split engine's


def test_a_bare_off_in_yaml_is_the_word_where_the_choices_spell_it(tmp_path):
    """YAML 1.1 reads ``off`` as false; ``learner.skip_zero_advantage: off`` still means off,
    and a boolean where no choice spells it stays an error."""
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  skip_zero_advantage: off\n")
    assert load_config(str(path)).learner.skip_zero_advantage == "off"
    assert load_config(None, ["learner.skip_zero_advantage=off"]).learner.skip_zero_advantage == "off"
    with pytest.raises(ConfigError, match="skip_zero_advantage"):
        load_config(None, ["learner.skip_zero_advantage=true"])
    with pytest.raises(ConfigError, match="algo.aggregation"):
        load_config(None, ["algo.aggregation=off"])
