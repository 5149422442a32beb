"""Datasets as users have them, read from the shipped fixtures (tests/fixtures/data): MATH's,
verl's and DAPO-Math's layouts, as JSONL, Parquet, a ``datasets`` folder and a hub id."""

import json
import shutil
from pathlib import Path

import pytest

from actors.tasks.answers import MISSING, dig, last_boxed
from actors.tasks.dataset import DatasetError, DatasetTask
from cluster.contract.config import TaskConfig
from tests.fixtures.data.make_fixtures import ANSWERS, DAPO_INSTRUCTION, MATH, VERL_INSTRUCTION
from tests.fixtures.hub_cache import lay_out_hub_cache

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"
MATH_ANSWERS = {a for a in ANSWERS if a is not None}


def everything(task: DatasetTask):
    return task.eval_set() + [task.train(i) for i in range(task.train_size)]


def math_task(path, name, **kw):
    return DatasetTask(TaskConfig(name=name, path=str(path), prompt_key="problem",
                                  answer_key="solution", answer_from="boxed", eval_size=1,
                                  **kw))


@pytest.mark.parametrize("text, want", [
    ("so $\\boxed{19}$.", "19"),
    ("nested: \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("two: \\boxed{12} then \\boxed{7}", "7"),  # the last box is the answer
    ("braces: \\boxed{\\{-1, 1\\}}", "\\{-1, 1\\}"),
    ("a space: \\boxed {5}", "5"),
    ("\\fbox{8}", "8"),
    ("no box at all", None),
    ("unclosed \\boxed{1 + {2}", None),
])
def test_last_boxed(text, want):
    assert last_boxed(text) == want


def test_dotted_keys_reach_nested_fields_and_flat_columns_win():
    row = {"reward_model": {"ground_truth": "5"}, "a.b": 1, "a": {"b": 2}}
    assert dig(row, "reward_model.ground_truth") == "5"
    assert dig(row, "a.b") == 1
    assert dig(row, "reward_model.missing") is MISSING and dig(row, "x.y") is MISSING


@pytest.mark.parametrize("path, name", [(DATA / "math_train.jsonl", "jsonl"),
                                        (DATA / "math_train.parquet", "parquet"),
                                        (DATA / "math_hf", "hf")])
def test_math_layout_in_every_format_reads_the_boxed_answer(path, name):
    with pytest.raises(DatasetError, match=r"(:6|row 5): field 'solution' has no complete "
                                           r"\\boxed"):
        math_task(path, name)
    task = math_task(path, name, skip_bad_rows=True)
    prompts = everything(task)
    assert {p.answer for p in prompts} == MATH_ANSWERS
    assert {p.text for p in prompts} == {r["problem"] for r in MATH[:5]}
    assert task.stats() == {"skipped_no_answer": 1}


@pytest.mark.parametrize("fixture, instruction", [("verl_math.parquet", VERL_INSTRUCTION),
                                                  ("dapo_math.parquet", DAPO_INSTRUCTION)])
def test_verl_layout_has_chat_message_prompts_and_a_dotted_answer(fixture, instruction):
    task = DatasetTask(TaskConfig(name="parquet", path=str(DATA / fixture),
                                  answer_key="reward_model.ground_truth", eval_size=0))
    prompts = everything(task)
    assert {p.answer for p in prompts} == MATH_ANSWERS
    for p in prompts:
        assert p.messages and p.messages[0][0] == "user"
        assert p.messages[0][1].endswith(instruction) and p.text == p.messages[0][1]


def test_a_folder_of_shards_and_a_glob(tmp_path):
    shards = tmp_path / "data"
    shards.mkdir()
    for i in range(2):
        shutil.copy(DATA / "verl_math.parquet", shards / f"train-0000{i}-of-00002.parquet")
    shutil.copy(DATA / "verl_math.parquet", shards / "test-00000-of-00001.parquet")
    base = dict(name="parquet", path=str(tmp_path), answer_key="reward_model.ground_truth",
                eval_size=0)
    assert DatasetTask(TaskConfig(**base)).train_size == 15
    task = DatasetTask(TaskConfig(**base, data_files="data/train-*.parquet"))
    ids = {p.prompt_id for p in everything(task)}
    assert len(ids) == 10 and all("train-0000" in i for i in ids)
    with pytest.raises(DatasetError, match="no parquet files"):
        DatasetTask(TaskConfig(**{**base, "data_files": "nothing-*.parquet"}))


def test_bad_prompt_types_name_the_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user"}], "answer": "1"}) + "\n"
                    + json.dumps({"prompt": [{"role": "system", "content": "x"}],
                                  "answer": "1"}) + "\n")
    with pytest.raises(DatasetError, match=r"d.jsonl:1: field 'prompt' must be a string or a "
                                           r"list of \{role, content\} messages"):
        DatasetTask(TaskConfig(name="jsonl", path=str(path), eval_size=0))
    with pytest.raises(DatasetError, match="no usable rows"):
        DatasetTask(TaskConfig(name="jsonl", path=str(path), eval_size=0, skip_bad_rows=True))


def test_a_datasetdict_folder_asks_for_one_split(tmp_path):
    (tmp_path / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(DatasetError, match="point task.path at one split's folder"):
        DatasetTask(TaskConfig(name="hf", path=str(tmp_path), eval_size=0))


def test_a_hub_dataset_id_reads_from_the_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "dataset", "duet-test/verl-math",
                      {"data/train-00000-of-00001.parquet": DATA / "verl_math.parquet"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = dict(name="parquet", answer_key="reward_model.ground_truth", eval_size=0)
    task = DatasetTask(TaskConfig(path="duet-test/verl-math", **config))
    assert {p.answer for p in everything(task)} == MATH_ANSWERS
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE is set and it is not in the cache"):
        DatasetTask(TaskConfig(path="duet-test/not-cached", **config))
