"""The baselines the learner benchmarks time, and the profile's bookkeeping (no Ray)."""

import cProfile

import torch

from benchmarks.learner_loops import make_batch, plain_step
from benchmarks.profile import top_functions
from learner.batch import to_tensors


def test_the_plain_loop_trains_every_completion_token_once(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch(2, 4, 6, 5, model.config.vocab_size, seed=0)
    # A budget below the step's tokens: several micro-batches, gradients accumulated.
    out = plain_step(model, optimizer, batch, micro_batch_tokens=24)
    mask = to_tensors(batch).completion_mask[:, 1:]
    assert out["tokens"] == float(mask.sum()) == 2 * 4 * 5
    assert out["seconds"] > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "model.embed_tokens.weight" in changed and len(changed) > 10
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_top_functions_are_ordered_by_own_time_with_their_share():
    def busy():
        return sum(i * i for i in range(20_000))

    profile = cProfile.Profile()
    profile.enable()
    busy()
    profile.disable()
    top = top_functions(profile, total=1.0)
    owns = [f["own_s"] for f in top]
    assert owns == sorted(owns, reverse=True) and len(top) <= 8
    assert all(f["share"] == f["own_s"] for f in top)  # total 1 s: the share is the seconds
    assert any("genexpr" in f["function"] for f in top)


def test_the_ties_benchmark_ties_exactly_the_share_it_names():
    from benchmarks.ties import tie_batch
    from learner.algo import informative
    from learner.batch import to_tensors

    for fraction, tied in ((0.5, 16), (0.75, 24)):
        t = to_tensors(tie_batch(fraction, vocab=20, seed=0, completion=8))
        assert t.rewards.shape == (32, 2)
        assert int((~informative(t.rewards)).sum()) == tied
        assert int(t.completion_mask.sum()) == 64 * 8  # every row exactly 8 tokens


def test_the_trl_benchmark_reward_is_a_function_of_the_text_alone():
    from benchmarks.trl import parity_reward

    texts = [str(i) * 5 for i in range(40)]
    got = [parity_reward(t, "ignored") for t in texts]
    assert got == [parity_reward(t, "other") for t in texts]
    assert set(got) == {0.0, 1.0}
