"""Prompt sources: the embedded arithmetic task and local datasets with located errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.tasks.arithmetic import ArithmeticTask
from actors.tasks.base import shard_positions
from actors.tasks.dataset import DatasetError, DatasetTask
from cluster.contract.config import TaskConfig


def test_arithmetic_is_deterministic_and_held_out_is_disjoint():
    a, b = ArithmeticTask(digits=2, seed=3), ArithmeticTask(digits=2, seed=3)
    assert [a.train(i) for i in range(50)] == [b.train(i) for i in range(50)]
    held = {p.prompt_id for p in a.eval_set()}
    assert len(held) == 200
    assert not held & {a.train(i).prompt_id for i in range(5000)}
    p = a.train(0)
    x, y = map(int, p.text[:-1].split("+"))
    assert p.answer == str(x + y) and p.text.endswith("=")
    assert ArithmeticTask(seed=4).train(0) != a.train(0) or ArithmeticTask(seed=4).train(1) != a.train(1)


def test_sharding_is_disjoint_and_complete():
    got = sorted(p for w in range(3) for p in shard_positions(w, 3, 0, 4))
    assert got == list(range(12))
    assert shard_positions(1, 3, 2, 2) == [7, 10]


def write_jsonl(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def config(path, **kw):
    return TaskConfig(name="parquet" if str(path).endswith(".parquet") else "jsonl",
                      path=str(path), eval_size=kw.pop("eval_size", 1), **kw)


GOOD = [json.dumps({"prompt": f"q{i}", "answer": str(i)}).encode() for i in range(4)]


@pytest.mark.parametrize(
    "bad, message",
    [
        (b'{"prompt": "q"}', "missing field 'answer'"),
        (b'{"prompt": "", "answer": "1"}', "field 'prompt' is empty"),
        (b'{"prompt": "q", "answer": [1]}', "must be a string or number"),
        (b'{"prompt": "q", "answer": "1"', "malformed JSON"),
        (b'{"prompt": "q\xff\xfe", "answer": "1"}', "invalid UTF-8"),
        (json.dumps({"prompt": "x" * 100, "answer": "1"}).encode(), "more than task.max_prompt_chars=50"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "d.jsonl", GOOD[:2] + [bad] + GOOD[2:])
    with pytest.raises(DatasetError) as err:
        DatasetTask(config(path, max_prompt_chars=50))
    assert f"{path}:3: " in str(err.value) and message in str(err.value)
    assert "skip_bad_rows" in str(err.value)
    task = DatasetTask(config(path, max_prompt_chars=50, skip_bad_rows=True))
    assert sum(task.stats().values()) == 1
    kept = {p.text for p in task.eval_set()} | {task.train(i).text for i in range(20)}
    assert kept == {"q0", "q1", "q2", "q3"}  # nothing good lost


def test_column_mapping_and_parquet_rows(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": ["a", "b", None], "solution": ["1", "2", "3"]}), path)
    with pytest.raises(DatasetError, match=r"d.parquet row 2: missing field 'question'"):
        DatasetTask(config(path, prompt_key="question", answer_key="solution"))
    task = DatasetTask(config(path, prompt_key="question", answer_key="solution",
                              skip_bad_rows=True, eval_size=0))
    assert {task.train(i).answer for i in range(4)} == {"1", "2"}
    assert task.stats() == {"skipped_missing_field": 1}


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="none.jsonl.: file or folder not found"):
        DatasetTask(config(tmp_path / "none.jsonl"))
