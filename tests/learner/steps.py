"""Learner test helpers: a synthetic step's groups, the same update in plain torch, and how
close two correct implementations of that update can be."""

import dataclasses

import torch

from cluster.contract.schema import Group, build_batch
from learner.algo import compute_advantages, policy_loss
from learner.batch import to_tensors
from learner.rank import token_logprobs

LR = 1e-3


def step_batch(seed=0, groups=6, size=2, rewards=None):
    """A step of ``groups`` random groups; ``rewards``: each group's rewards (default random 0/1)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in range(groups):
        prompt = torch.randint(3, 18, (int(torch.randint(2, 6, (1,), generator=gen)),), generator=gen)
        comps = [torch.randint(3, 18, (int(torch.randint(1, 7, (1,), generator=gen)),),
                               generator=gen).tolist() for _ in range(size)]
        out.append(Group(f"g{p}", f"p{p}", prompt.tolist(), comps,
                         [[-1.5] * len(c) for c in comps],
                         [float(x) for x in torch.randint(0, 2, (size,), generator=gen)]
                         if rewards is None else [float(x) for x in rewards[p]]))
    return build_batch(out)


def reference_step(model_path, batch, config, device="cpu"):
    """The same update in one process with plain torch: whole batch, one AdamW step.

    Returns the loss, the weights after the step and the (clipped) gradients it stepped on,
    which ``assert_same_adam_step`` needs to know where Adam amplifies rounding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=config.learner.betas,
                            weight_decay=config.learner.weight_decay)
    t = to_tensors(batch)
    t = dataclasses.replace(t, **{k: v.to(device) for k, v in vars(t).items()
                                  if isinstance(v, torch.Tensor)})
    adv = compute_advantages(t.rewards).reshape(-1)
    logp = token_logprobs(model, t.input_ids, t.attention_mask)
    loss, _ = policy_loss(logp, logp.detach(), adv, t.completion_mask[:, 1:].float(),
                          clip_low=0.2, clip_high=0.28,
                          behaviour_logp=t.behaviour_logprobs[:, 1:], tis_cap=2.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.learner.grad_clip)
    grads = {name: p.grad.detach().cpu().clone() for name, p in model.named_parameters()}
    opt.step()
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return float(loss.detach()), weights, grads


# Adam's epsilon (torch.optim.AdamW's default, which the learner keeps) and fp32's unit roundoff.
ADAM_EPS = 1e-8
FP32_U = 2.0 ** -24


def assert_same_adam_step(weights, ref_weights, ref_grads, lr, what):
    """Weights after one AdamW step equal the reference's up to what rounding can explain.

    At Adam's first step (bias-corrected: m = g, v = g**2) each element moves by
    ``lr * f(g)`` with ``f(g) = g / (|g| + eps)``. Two correct implementations reduce the
    gradient in different orders (DeepSpeed's partitioned, all-reduced sums against one
    process), so their gradients differ by a rounding residue δ, and their moves by
    ``lr * |f(g + δ) - f(g)|``:

    - always at most ``2 * lr`` (|f| < 1): where the exact gradient is zero or nearly, δ is
      all there is and Adam turns it into a move of up to ``lr``, of either sign, on any CPU;
    - where ``|g| >= 2 * δ``, at most ``lr * δ * eps / (|g| - δ)**2 <= lr * 2 * eps / |g|``
      (mean value theorem, f' = eps / (|g| + eps)**2), which is ``<= 1e-3 * lr`` once
      ``|g| >= 2000 * eps``.

    So every element must be within ``2 * lr``, and every element whose reference gradient is
    at least ``max(2000 * eps, 1e-3 * S)`` (S the largest gradient element; fp32 reductions
    of a few hundred terms leave residues of at most ~1e-5 * S, far below half of that)
    within ``1e-3 * lr``; both plus fp32 rounding of the weight itself. A wrong sign, a
    dropped micro-batch or a mis-weighted row moves elements with real gradients by ~lr and
    fails the second bound; no kernel's rounding can.
    """
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    assert scale > 0, "the reference step had no gradient at all"
    threshold = max(2000 * ADAM_EPS, 1e-3 * scale)
    for name, ref in ref_weights.items():
        ref = ref.float()
        diff = (weights[name].float() - ref).abs()
        rounding = 4 * FP32_U * ref.abs()
        loose = diff - rounding - 2 * lr * (1 + 1e-6)
        assert float(loose.max()) <= 0, (
            f"{what}: {name} moved {float(diff.max()):.3g} away from the reference, more than "
            f"one Adam step can explain (2 * lr = {2 * lr:g})")
        grad = ref_grads.get(name)
        if grad is None:  # a buffer, or a tied weight listed under its other name
            continue
        real = grad.abs() >= threshold
        tight = (diff - rounding - 1e-3 * lr)[real]
        if tight.numel():
            worst = int(tight.argmax())
            assert float(tight[worst]) <= 0, (
                f"{what}: {name} differs by {float(diff[real][worst]):.3g} where the reference "
                f"gradient is {float(grad[real][worst]):.3g} (>= {threshold:.3g}); rounding "
                f"explains at most {1e-3 * lr:g} there")
