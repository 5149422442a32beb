"""LoRA on two learner ranks under ZeRO-3 (real DeepSpeed on gloo, ranks in Ray actors): the
base stays frozen, only the adapter moves, the gathered adapter a sync would send is what
the checkpoint holds, in PEFT's layout."""

import pytest
import ray
import torch
from safetensors.torch import load_file

from cluster.contract.config import load_config
from tests.learner.hosts import Host
from tests.learner.steps import step_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(ray_cluster):
    hosts = [Host.remote() for _ in range(2)]
    yield hosts
    for h in hosts:
        ray.kill(h)


def test_zero3_lora_moves_only_the_adapter_and_saves_it(pair, tiny_model_path, tmp_path):
    config = load_config(None, ["learner.num_ranks=2", "learner.zero_stage=3",
                                "model.lora.rank=8", "learner.lr=1e-2"])
    master = ray.get([h.make.remote(config, r) for r, h in enumerate(pair)])[0]
    ray.get([h.start.remote(tiny_model_path, master) for h in pair])
    before = ray.get([h.weights.remote() for h in pair])[0]
    for seed in (1, 2):
        ray.get([h.train.remote(step_batch(seed=seed, groups=8)) for h in pair])
    after = ray.get([h.weights.remote() for h in pair])[0]
    lora = [k for k in after if "lora_" in k]
    assert lora and all(".default." in k for k in lora)
    base_moved = max(float((after[k] - before[k]).abs().max()) for k in after if k not in lora)
    assert base_moved == 0.0  # frozen
    assert max(float(after[k].abs().max()) for k in lora if "lora_B" in k) > 0  # B left zero

    ray.get([h.call.remote("save", str(tmp_path / "ckpt"), tiny_model_path) for h in pair])
    saved = load_file(str(tmp_path / "ckpt" / "model" / "adapter_model.safetensors"))
    assert sorted(saved) == sorted(k.replace(".default.", ".") for k in lora)
    for k in lora:
        torch.testing.assert_close(saved[k.replace(".default.", ".")], after[k], rtol=0, atol=0)
