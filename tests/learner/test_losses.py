"""policy_loss: gradients by hand, clipping, the 2-GRPO/DPO link, sharding, loop reference."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.algo import AGGREGATIONS, compute_advantages, policy_loss

CLIP = dict(clip_low=0.2, clip_high=0.28)


def _batch(seed, batch=6, length=5):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    behaviour = old + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    ref = logp + 0.2 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).double()
    adv = torch.randn(batch, generator=gen, dtype=torch.float64)
    return logp, old, adv, mask, behaviour, ref


def test_gradient_at_ratio_one_is_minus_a_over_tokens():
    logp = torch.full((2, 4), -1.0, requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    adv = torch.tensor([1.5, -0.5])
    loss, metrics = policy_loss(logp, logp.detach(), adv, mask, **CLIP)
    loss.backward()
    expected = -adv[:, None] / 5.0 * mask
    assert torch.allclose(logp.grad, expected)
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    assert metrics["clip_frac"].item() == 0.0


def test_clipped_tokens_get_zero_gradient():
    old = torch.zeros(1, 4)
    # ratios: 1.5 (A>0, beyond 1.28: clipped), 1.1 (inside), then two A<0 rows below.
    logp = torch.log(torch.tensor([[1.5, 1.1, 1.0, 1.0]])).requires_grad_(True)
    loss, metrics = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 4), **CLIP)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-1.1 / 4)
    assert metrics["clip_frac"].item() == pytest.approx(0.25)

    logp = torch.log(torch.tensor([[0.5, 0.9, 1.0, 1.0]])).requires_grad_(True)
    loss, _ = policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 4), **CLIP)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # 0.5 < 1 - 0.2 with A < 0: clipped
    assert logp.grad[0, 1].item() == pytest.approx(0.9 / 4)


def test_dual_clip_caps_negative_advantage_loss():
    logp = torch.log(torch.tensor([[10.0, 1.0]])).requires_grad_(True)
    loss, metrics = policy_loss(logp, torch.zeros(1, 2), torch.tensor([-1.0]),
                                torch.ones(1, 2), dual_clip=3.0, **CLIP)
    assert loss.item() == pytest.approx((3.0 + 1.0) / 2)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert metrics["dual_clip_frac"].item() == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(
    len_pos=st.integers(1, 6),
    len_neg=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_two_grpo_gradient_is_dpo_like(len_pos, len_neg, seed):
    """G=2, ratio 1, no clipping: -grad(loss) = 1/2 (grad mean logp(o+) - grad mean logp(o-))."""
    gen = torch.Generator().manual_seed(seed)
    vocab, hidden = 7, 3
    theta = torch.randn(hidden, vocab, generator=gen, dtype=torch.float64, requires_grad=True)
    feats = torch.randn(2, 6, hidden, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (2, 6), generator=gen)
    mask = torch.zeros(2, 6, dtype=torch.float64)
    mask[0, :len_pos], mask[1, :len_neg] = 1, 1

    def token_logp():
        return torch.log_softmax(feats @ theta, -1).gather(-1, tokens[..., None])[..., 0]

    rewards = torch.tensor([[1.0, 0.0]])
    adv = compute_advantages(rewards, "pairwise")[0]  # (2,) = [+1, -1]
    logp = token_logp()
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.28,
                          aggregation="seq_mean_token_mean")
    (grad_loss,) = torch.autograd.grad(loss, theta)

    logp = token_logp()
    mean_pos = (logp[0] * mask[0]).sum() / len_pos
    mean_neg = (logp[1] * mask[1]).sum() / len_neg
    (grad_dpo,) = torch.autograd.grad(0.5 * (mean_pos - mean_neg), theta)
    torch.testing.assert_close(-grad_loss, grad_dpo)


@pytest.mark.parametrize("aggregation", AGGREGATIONS.names())
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_shards_sum_to_whole_batch(aggregation, ratio_level):
    logp, old, adv, mask, behaviour, ref = _batch(seed=3, batch=8)
    kwargs = dict(CLIP, aggregation=aggregation, ratio_level=ratio_level, tis_cap=2.0,
                  kl_coef=0.1)
    leaf = logp.clone().requires_grad_(True)
    whole, _ = policy_loss(leaf, old, adv, mask, behaviour_logp=behaviour, ref_logp=ref, **kwargs)
    (whole_grad,) = torch.autograd.grad(whole, leaf)

    leaf = logp.clone().requires_grad_(True)
    totals = dict(total_tokens=float(mask.sum()), total_seqs=8.0, norm_len=float(mask.shape[1]))
    parts = [slice(0, 3), slice(3, 5), slice(5, 8)]  # uneven, as token-budget micro-batches are
    combined = sum(
        policy_loss(leaf[s], old[s], adv[s], mask[s], behaviour_logp=behaviour[s],
                    ref_logp=ref[s], **kwargs, **totals)[0]
        for s in parts
    )
    (shard_grad,) = torch.autograd.grad(combined, leaf)
    torch.testing.assert_close(combined, whole)
    torch.testing.assert_close(shard_grad, whole_grad)


def _loop_loss(logp, old, adv, mask, *, clip_low, clip_high, dual_clip, ratio_level,
               aggregation, behaviour, tis_cap, ref, kl_coef, kl_estimator):
    batch, length = logp.shape
    logp, old, mask, ref = logp.tolist(), old.tolist(), mask.tolist(), ref.tolist()
    behaviour = None if behaviour is None else behaviour.tolist()
    per = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        valid = [t for t in range(length) if mask[b][t] > 0]
        seq_lr = sum(logp[b][t] - old[b][t] for t in valid) / max(len(valid), 1)
        for t in valid:
            lr = seq_lr if ratio_level == "sequence" else logp[b][t] - old[b][t]
            ratio = math.exp(lr)
            a = adv[b]
            value = max(-a * ratio, -a * min(max(ratio, 1 - clip_low), 1 + clip_high))
            if dual_clip is not None and a < 0:
                value = min(value, -a * dual_clip)
            if behaviour is not None:
                w = math.exp(old[b][t] - behaviour[b][t])
                value *= w if tis_cap is None else min(w, tis_cap)
            d = ref[b][t] - logp[b][t]
            kl = {"k1": -d, "k2": 0.5 * d * d, "k3": math.exp(d) - d - 1}[kl_estimator]
            per[b][t] = (value, kl)

    def agg(index):
        if aggregation == "token_mean":
            n = sum(1 for b in range(batch) for t in range(length) if mask[b][t] > 0)
            return sum(per[b][t][index] for b in range(batch) for t in range(length)
                       if mask[b][t] > 0) / max(n, 1)
        total = 0.0
        for b in range(batch):
            n = sum(1 for t in range(length) if mask[b][t] > 0)
            s = sum(per[b][t][index] for t in range(length) if mask[b][t] > 0)
            total += s / max(n, 1) if aggregation == "seq_mean_token_mean" else s / length
        return total / batch

    return agg(0) + kl_coef * agg(1)


@pytest.mark.parametrize("seed", range(12))
def test_loop_equals_vectorised(seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    logp, old, adv, mask, behaviour, ref = _batch(seed)
    for aggregation in AGGREGATIONS.names():
        for ratio_level in ("token", "sequence"):
            pick = torch.randint(0, 2, (4,), generator=gen).tolist()
            options = dict(
                clip_low=0.2, clip_high=0.28,
                dual_clip=3.0 if pick[0] else None,
                ratio_level=ratio_level, aggregation=aggregation,
                tis_cap=[None, 1.5][pick[1]], kl_coef=0.05 * pick[2],
                kl_estimator=["k1", "k2", "k3"][seed % 3],
            )
            use_behaviour = bool(pick[3])
            got, _ = policy_loss(logp, old, adv, mask, ref_logp=ref,
                                 behaviour_logp=behaviour if use_behaviour else None, **options)
            want = _loop_loss(logp, old, adv.tolist(), mask,
                              behaviour=behaviour if use_behaviour else None, ref=ref,
                              **{k: v for k, v in options.items()})
            assert got.item() == pytest.approx(float(want), rel=1e-9, abs=1e-12), options


def test_tis_weight_is_capped_and_reported():
    old = torch.zeros(1, 2)
    behaviour = torch.tensor([[math.log(0.25), 0.0]])  # raw weights 4 and 1
    _, metrics = policy_loss(old.clone(), old, torch.tensor([1.0]), torch.ones(1, 2),
                             behaviour_logp=behaviour, tis_cap=2.0, **CLIP)
    assert metrics["is_weight_max"].item() == pytest.approx(2.0)
    assert metrics["is_clip_frac"].item() == pytest.approx(0.5)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"advantages must be \(B,\)"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3), **CLIP)
    with pytest.raises(KeyError, match="did you mean 'token_mean'"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3),
                    aggregation="token_means", **CLIP)
