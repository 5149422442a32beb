"""``duet data``, the dry run's data check and the start-up length checks, on the fixtures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import main

DATA = Path(__file__).resolve().parents[2] / "fixtures" / "data"
VERL = ["task.name=parquet", f"task.path={DATA / 'verl_math.parquet'}",
        "task.answer_key=reward_model.ground_truth", "task.eval_size=1", "task.template=chat",
        "model.max_model_len=256", "rollout.max_new_tokens=8"]


def duet(*args):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_duet_data_json_on_verl_layout_prints_the_rendered_prompt(tiny_model_path):
    from transformers import AutoTokenizer

    from actors.prompts import PromptRenderer
    from actors.tasks import make_source
    from cluster.contract.config import load_config

    done = duet("data", f"model.path={tiny_model_path}", *VERL, "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert {"rows", "skipped", "sample", "max_prompt_tokens"} <= set(got)
    assert got["rows"] == 5 and got["skipped"] == {}
    # The sample is the first training prompt, rendered by the training renderer.
    config = load_config(None, [f"model.path={tiny_model_path}", *VERL])
    first = make_source(config.task, config.seed).train(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    rendered = PromptRenderer(config.task, tokenizer).render(first)
    tokens = len(tokenizer(rendered, add_special_tokens=False).input_ids)
    assert got["sample"] == {"prompt": rendered, "prompt_tokens": tokens,
                             "answer": first.answer, "prompt_id": first.prompt_id}
    assert rendered.endswith("=") and first.text in rendered  # the tiny model's chat template
    assert got["max_prompt_tokens"] >= got["sample"]["prompt_tokens"]


def test_duet_data_counts_bad_rows_and_fails_on_unusable_data(tiny_model_path):
    math = [f"model.path={tiny_model_path}", "task.name=jsonl",
            f"task.path={DATA / 'math_train.jsonl'}", "task.prompt_key=problem",
            "task.answer_key=solution", "task.answer_from=boxed", "task.eval_size=1",
            "model.max_model_len=256", "rollout.max_new_tokens=8"]
    done = duet("data", *math, "task.skip_bad_rows=true", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["skipped"] == {"no_answer": 1}
    bad = duet("data", *math)
    assert bad.returncode == 2 and "math_train.jsonl:6: field 'solution' has no complete" in bad.stderr
    missing = duet("data", *math[:2], "task.path=nowhere/train.jsonl")
    assert missing.returncode == 2 and "file or folder not found" in missing.stderr


def test_length_errors_name_the_key_to_change(tiny_model_path, capsys):
    # The model's context: the tiny model's config.json says 256 positions.
    assert main(["data", f"model.path={tiny_model_path}", *VERL,
                 "model.max_model_len=512"]) == 1
    err = capsys.readouterr().err
    assert "'model.max_model_len': is above the model's context of 256 tokens" in err
    assert "set model.max_model_len <= 256" in err
    # Prompt + completion past max_model_len, by one token.
    assert main(["data", f"model.path={tiny_model_path}", *VERL, "--json"]) == 0
    longest = json.loads(capsys.readouterr().out)["max_prompt_tokens"]
    too_many = f"rollout.max_new_tokens={256 - longest + 1}"
    assert main(["data", f"model.path={tiny_model_path}", *VERL, too_many]) == 1
    err = capsys.readouterr().err
    assert "'rollout.max_new_tokens': the longest prompt" in err
    assert f"lower rollout.max_new_tokens to <= {256 - longest}" in err
    assert main(["data", f"model.path={tiny_model_path}", *VERL,
                 f"rollout.max_new_tokens={256 - longest}"]) == 0
    capsys.readouterr()
    # The dry run checks both, and refuses before anything starts.
    assert main(["train", "--dry-run", f"model.path={tiny_model_path}", *VERL, too_many]) == 2
    assert "rollout.max_new_tokens" in capsys.readouterr().err


def test_dry_run_checks_a_paper_preset_against_its_models_known_context(capsys):
    """Neither Qwen2.5-Math nor MATH is on this machine: the context check still runs."""
    assert main(["train", "--dry-run", "--config", "qwen2.5-math-1.5b-g2"]) == 0
    assert "fits the model's 4096-token context" in capsys.readouterr().out
    assert main(["train", "--dry-run", "--config", "qwen2.5-math-7b-g16",
                 "model.max_model_len=5120"]) == 2
    assert "is above the model's context of 4096 tokens" in capsys.readouterr().err


def test_a_chat_template_on_a_model_without_one_names_task_template(tmp_path, capsys):
    from transformers import AutoTokenizer

    from cluster.policy.embedded import build_embedded

    folder = build_embedded(tmp_path / "plain")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for leftover in folder.glob("chat_template.*"):
        leftover.unlink()
    assert main(["data", f"model.path={folder}", *VERL]) == 2
    assert "task.template=chat: the model's tokenizer has no chat template" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_duet_train_on_verl_data_with_the_chat_template_reaches_the_math_reward(
        tiny_model_path, tmp_path):
    """The whole path a real run takes, on the fixture: verl's parquet, chat messages, the
    model's chat template, the dotted answer, math-verify; the first prompt is stored."""
    from cluster.loop.run_log import read_rows

    done = duet("train", f"model.path={tiny_model_path}", *VERL, "rollout.reward=math",
                "algo.prompts_per_step=4", "steps=2", "eval_every=0", "name=verl",
                f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "verl"
    first = (run / "first_prompt.txt").read_text()
    assert "Let's think step by step" in first and first.endswith("=")  # chat template applied
    assert first in done.stdout
    steps = read_rows(run / "metrics.jsonl", "step")
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["rollouts"] == 8 and r["reward_flags"] == 0 for r in steps), steps
