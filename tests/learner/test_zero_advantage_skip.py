"""Skipping zero-advantage rows leaves the update as computing them makes it.

Each case trains the same weights on the same batches twice, ``learner.skip_zero_advantage``
off and auto, with real DeepSpeed on gloo: one rank in this process, two ranks in real Ray
actors. The batches are a mixed step (half the groups tied) then a step of nothing but ties,
which must still step the optimizer: Adam's moments carry the weights on by themselves.
"""

import pytest
import ray
import torch

from cluster.contract.config import load_config
from learner.learner_actor import combine_metrics
from learner.rank import balance
from tests.learner.hosts import Host
from tests.learner.steps import LR, step_batch

pytestmark = pytest.mark.slow

GROUPS = 8
MIXED = [[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]  # every other tied
ALL_TIED = [[1, 1], [0, 0]] * (GROUPS // 2)
BATCHES = (step_batch(seed=3, groups=GROUPS, rewards=MIXED),
           step_batch(seed=4, groups=GROUPS, rewards=ALL_TIED))

CASES = {
    "token_mean": ["algo.aggregation=token_mean"],
    "seq_mean": ["algo.aggregation=seq_mean_token_mean"],
    "token_mean, 2 epochs x 2 mini-batches": ["algo.aggregation=token_mean",
                                              "algo.ppo_epochs=2", "algo.mini_batches=2"],
    "seq_mean, 2 epochs x 2 mini-batches": ["algo.aggregation=seq_mean_token_mean",
                                            "algo.ppo_epochs=2", "algo.mini_batches=2"],
}
# Where the two paths sum rows in different orders (other micro-batches, other ranks), their
# gradients differ by rounding, and Adam turns the rounding residue of a gradient that is
# zero in exact arithmetic (a key projection's bias: softmax ignores it) into a move of up
# to lr either way. Against weights of a trained model's size, at the paper's lr, that stays
# far inside this bound, per tensor:
PAPER_LR = 1e-6
MAX_REL_PARAM_DIFF = 1e-6


@pytest.fixture(scope="module")
def model_path(tiny_model_path, tmp_path_factory):
    """The tiny model with its biases drawn like its weights, as a trained model's are: a
    fresh model's are zero, so a per-tensor relative difference would divide by ~lr."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.policy.embedded import draw_biases, save_model_folder

    model = draw_biases(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32))
    return str(save_model_folder(model, AutoTokenizer.from_pretrained(tiny_model_path),
                                 tmp_path_factory.mktemp("skip") / "biased"))


def overrides(world, mode, case, budget, lr=PAPER_LR):
    return [f"learner.num_ranks={world}", f"learner.lr={lr}", "learner.weight_decay=0.01",
            f"learner.micro_batch_tokens={budget}", f"learner.skip_zero_advantage={mode}",
            *CASES[case]]


def rel_diffs(a, b):
    """Per tensor ||a - b|| / ||b||."""
    return {k: float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-30)) for k in b}


def check_same(runs, exact, lr=PAPER_LR):
    """``runs``: mode -> [(metrics, weights) after each batch]."""
    for step, ((m_off, w_off), (m_skip, w_skip)) in enumerate(zip(runs["off"], runs["auto"])):
        diffs = rel_diffs(w_skip, w_off)
        worst = max(diffs.values())
        if exact:
            assert worst == 0.0, f"step {step}: {worst:.3g} (same rows, same order: must be equal)"
        assert worst <= MAX_REL_PARAM_DIFF, f"step {step}: {max(diffs, key=diffs.get)} {worst:.3g}"
        assert m_skip["loss"] == pytest.approx(m_off["loss"], rel=1e-5, abs=1e-7)
        assert m_skip["pg_loss"] == pytest.approx(m_off["pg_loss"], rel=1e-5, abs=1e-7)
        assert m_skip["clip_frac"] == pytest.approx(m_off["clip_frac"], abs=1e-6)
        assert m_skip["tokens_received"] == m_off["tokens_received"] == m_off["tokens_computed"]
        assert m_off["rows_computed"] == m_off["rows_received"] == 2 * GROUPS
        assert m_skip["skipped_updates"] == m_off["skipped_updates"] == 0
    mixed, tied = runs["auto"]
    assert mixed[0]["rows_computed"] == GROUPS  # the informative half
    assert tied[0]["rows_computed"] == tied[0]["tokens_computed"] == 0
    # The all-tied step still stepped: momentum moved the weights, the same in both paths.
    moved = max(float((tied[1][k] - mixed[1][k]).abs().max()) for k in mixed[1])
    assert moved > lr / 10


def train_here(solo, model_path, mode, case, budget, lr=PAPER_LR):
    config = load_config(None, overrides(1, mode, case, budget, lr))
    ray.get(solo.make.remote(config, 0, 1))
    ray.get(solo.start.remote(model_path, None))
    return [(combine_metrics([ray.get(solo.train.remote(b))]), ray.get(solo.weights.remote()))
            for b in BATCHES]


@pytest.mark.parametrize("case", list(CASES))
def test_one_rank_skip_makes_the_same_update(solo, model_path, case):
    runs = {mode: train_here(solo, model_path, mode, case, 64) for mode in ("off", "auto")}
    check_same(runs, exact=False)


@pytest.mark.parametrize("case", ["token_mean, 2 epochs x 2 mini-batches",
                                  "seq_mean, 2 epochs x 2 mini-batches"])
def test_one_rank_one_row_micro_batches_are_bit_identical(solo, tiny_model_path, case):
    """A row a micro-batch: both paths add the same row gradients in the same order (the
    skipped ones add exact zeros), so the weights agree to the bit, at a learning rate where
    any other difference would show."""
    runs = {mode: train_here(solo, tiny_model_path, mode, case, 1, lr=LR) for mode in ("off", "auto")}
    check_same(runs, exact=True, lr=LR)


@pytest.fixture(scope="module")
def solo(ray_cluster):
    """A process of its own for 1-rank cases: this one's process group may be another's."""
    host = Host.options(num_cpus=0).remote()  # the 2-rank pair needs both CPUs
    yield host
    ray.kill(host)


@pytest.fixture(scope="module")
def hosts(ray_cluster):
    pair = [Host.remote() for _ in range(2)]
    yield pair
    for h in pair:
        ray.kill(h)


def train_two(hosts, model_path, mode, case):
    config = load_config(None, overrides(2, mode, case, 64))
    master = ray.get([h.make.remote(config, r) for r, h in enumerate(hosts)])[0]
    ray.get([h.start.remote(model_path, master) for h in hosts])
    out = []
    for batch in BATCHES:
        metrics = combine_metrics(ray.get([h.train.remote(batch) for h in hosts]))
        out.append((metrics, ray.get([h.weights.remote() for h in hosts])[0]))
    return out


@pytest.mark.parametrize("case", ["token_mean", "seq_mean, 2 epochs x 2 mini-batches"])
def test_two_ranks_skip_makes_the_same_update(hosts, model_path, case):
    runs = {mode: train_two(hosts, model_path, mode, case) for mode in ("off", "auto")}
    check_same(runs, exact=False)


def test_with_a_kl_term_every_row_is_computed(solo, tiny_model_path):
    config = load_config(None, ["learner.num_ranks=1", "algo.kl_coef=0.01"])
    skips, why = config.zero_advantage_skip()
    assert not skips and "algo.kl_coef=0.01" in why
    ray.get(solo.make.remote(config, 0, 1))
    ray.get(solo.start.remote(tiny_model_path, None))
    metrics = ray.get(solo.train.remote(BATCHES[0]))
    assert metrics["rows_computed"] == metrics["rows_received"] == 2 * GROUPS


def test_rows_are_dealt_to_ranks_by_tokens():
    lengths = torch.tensor([9, 1, 1, 1, 8, 2, 7, 3])
    shares = balance(range(8), lengths, 2)
    assert sorted(r for s in shares for r in s) == list(range(8))
    loads = [int(lengths[s].sum()) for s in shares]
    assert abs(loads[0] - loads[1]) <= 1  # 16 and 16 here; LPT stays within the longest row
    assert balance([], lengths, 3) == [[], [], []]
    assert balance([4, 0], lengths, 3) == [[0], [4], []]
