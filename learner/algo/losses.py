"""The clipped policy-gradient loss of GRPO and its variants.

Objective (per token t of completion i, advantage A_i, ratio rho = pi / pi_old):

    l_{i,t} = max(-A_i rho, -A_i clip(rho, 1 - clip_low, 1 + clip_high))

then masked and aggregated into one scalar. Departures from the paper's formula
(arXiv 2510.00977, eq. 1), each an option, none on by default except the first:

- clip-higher: separate ``clip_low`` / ``clip_high`` (DAPO's 0.2 / 0.28, as the paper's
  runs); the paper writes a single epsilon.
- aggregation: the paper averages per sequence then over the group
  (``seq_mean_token_mean``); verl, whose code the paper's runs used, defaults to
  ``token_mean`` (all tokens of the batch equally weighted), and so does duet.
  ``seq_mean_token_sum_norm`` divides token sums by a constant length (Dr. GRPO).
- ``dual_clip``: for A < 0 the loss is capped at ``-A * dual_clip`` so a huge ratio on a
  bad sample cannot dominate.
- ``ratio_level="sequence"``: GSPO's sequence ratio ``exp(mean_t log rho_t)``, shared by
  every token of the completion (with ``seq_mean_token_mean`` this is GSPO exactly).
- truncated importance sampling: when the rollout engine's logprobs (``behaviour_logp``)
  differ from the learner's ``old_logp`` (async staleness, engine numerics), each token is
  weighted by ``min(exp(old_logp - behaviour_logp), tis_cap)``, detached.
- a KL penalty to a reference policy (``k1``, ``k2``, ``k3`` estimators), off by default as
  in the paper's runs.

Data-parallel use: a rank that holds a shard of the batch passes the *global*
``total_tokens`` / ``total_seqs``; the shard losses then sum to the whole-batch loss
exactly, so splitting the batch across ranks or micro-batches never re-weights it.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from learner.algo.registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation")
KL_ESTIMATORS: Registry = Registry("KL estimator")
RATIO_LEVELS = ("token", "sequence")


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log(pi / pi_ref), unbiased, can be negative. Shapes: (B, T) -> (B, T)."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """0.5 * log(pi / pi_ref)^2, low variance, biased. Shapes: (B, T) -> (B, T)."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """exp(ref - logp) - (ref - logp) - 1, unbiased and non-negative. (B, T) -> (B, T)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


@AGGREGATIONS.register("token_mean")
def token_mean(
    values: torch.Tensor,
    mask: torch.Tensor,
    total_tokens: Optional[float] = None,
    total_seqs: Optional[float] = None,
    norm_len: Optional[float] = None,
) -> torch.Tensor:
    """Sum over valid tokens / number of valid tokens (of the whole batch if given).

    Args:
        values, mask: (B, T).
    Returns:
        scalar.
    """
    denom = mask.sum() if total_tokens is None else torch.as_tensor(float(total_tokens))
    return (values * mask).sum() / denom.clamp(min=1.0)


@AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    values: torch.Tensor,
    mask: torch.Tensor,
    total_tokens: Optional[float] = None,
    total_seqs: Optional[float] = None,
    norm_len: Optional[float] = None,
) -> torch.Tensor:
    """Mean over each sequence's tokens, then mean over sequences.

    Args:
        values, mask: (B, T).
    Returns:
        scalar. A sequence with no valid token contributes 0.
    """
    per_seq = (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)  # (B,)
    denom = values.shape[0] if total_seqs is None else float(total_seqs)
    return per_seq.sum() / max(denom, 1.0)


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    values: torch.Tensor,
    mask: torch.Tensor,
    total_tokens: Optional[float] = None,
    total_seqs: Optional[float] = None,
    norm_len: Optional[float] = None,
) -> torch.Tensor:
    """Token sums divided by a constant length, then mean over sequences (Dr. GRPO).

    Args:
        values, mask: (B, T).
        norm_len: the constant length; defaults to T.
    Returns:
        scalar.
    """
    length = float(values.shape[-1] if norm_len is None else norm_len)
    denom = values.shape[0] if total_seqs is None else float(total_seqs)
    return (values * mask).sum() / length / max(denom, 1.0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not bool(mask.any()):
        return torch.zeros((), dtype=values.dtype)
    return values.masked_fill(mask == 0, float("-inf")).max()


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: Optional[float] = None,
    ratio_level: str = "token",
    aggregation: str = "token_mean",
    behaviour_logp: Optional[torch.Tensor] = None,
    tis_cap: Optional[float] = None,
    ref_logp: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    total_tokens: Optional[float] = None,
    total_seqs: Optional[float] = None,
    norm_len: Optional[float] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clipped policy-gradient loss (to minimise) with optional dual clip, GSPO, TIS and KL.

    Args:
        logp: (B, T) log-probs of the sampled tokens under the policy being trained.
        old_logp: (B, T) log-probs under the policy at the start of the step (pi_old).
        advantages: (B,) one advantage per completion, broadcast over its tokens.
        mask: (B, T) 1 for completion tokens, 0 for padding (float or bool).
        clip_low, clip_high: ratio clipped to [1 - clip_low, 1 + clip_high].
        dual_clip: if set (> 1), caps the loss of A < 0 tokens at ``-A * dual_clip``.
        ratio_level: "token" (PPO/GRPO) or "sequence" (GSPO).
        aggregation: a name in ``AGGREGATIONS``.
        behaviour_logp: (B, T) log-probs the rollout engine reported; enables TIS.
        tis_cap: upper bound of the truncated importance weight (None: uncapped).
        ref_logp: (B, T) reference-policy log-probs, for the KL term and its metric.
        kl_coef: weight of the KL penalty (0 disables it in the loss).
        kl_estimator: a name in ``KL_ESTIMATORS``.
        total_tokens, total_seqs: global denominators when this call sees a shard.
        norm_len: constant length for ``seq_mean_token_sum_norm``.
    Returns:
        (loss, metrics): loss is a scalar with grad; metrics are detached scalars:
        ``pg_loss``, ``kl``, ``clip_frac``, ``dual_clip_frac``, ``ratio_mean``,
        ``ratio_max``, ``is_weight_mean``, ``is_weight_max``, ``is_clip_frac``,
        ``entropy_proxy`` (mean of -logp over valid tokens).
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must all be (B, T)"
        )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (B,)={tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")
    for name, other in (("behaviour_logp", behaviour_logp), ("ref_logp", ref_logp)):
        if other is not None and other.shape != logp.shape:
            raise ValueError(f"{name} {tuple(other.shape)} must match logp {tuple(logp.shape)}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    aggregate = AGGREGATIONS.get(aggregation)
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None]  # (B, 1)

    log_ratio = logp - old_logp  # (B, T)
    if ratio_level == "sequence":
        seq_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
        log_ratio = seq_log_ratio[:, None].expand_as(logp)
    ratio = torch.exp(log_ratio)  # (B, T)

    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    clip_hit = (clipped > unclipped).to(logp.dtype)
    dual_hit = torch.zeros_like(per_token)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_hit = ((adv < 0) & (per_token > cap)).to(logp.dtype)
        per_token = torch.where(adv < 0, torch.minimum(per_token, cap), per_token)

    is_weight = torch.ones_like(per_token)
    is_clipped = torch.zeros_like(per_token)
    if behaviour_logp is not None:
        raw = torch.exp((old_logp - behaviour_logp).detach())
        is_weight = raw if tis_cap is None else raw.clamp(max=tis_cap)
        is_clipped = (raw > is_weight).to(logp.dtype)
        per_token = per_token * is_weight

    kl_tok = torch.zeros_like(per_token)
    if ref_logp is not None:
        kl_tok = KL_ESTIMATORS.get(kl_estimator)(logp, ref_logp)

    pg_loss = aggregate(per_token, mask, total_tokens, total_seqs, norm_len)
    loss = pg_loss
    if kl_coef and ref_logp is not None:
        loss = loss + kl_coef * aggregate(kl_tok, mask, total_tokens, total_seqs, norm_len)

    with torch.no_grad():
        metrics = {
            "pg_loss": pg_loss.detach(),
            "kl": _masked_mean(kl_tok, mask),
            "clip_frac": _masked_mean(clip_hit, mask),
            "dual_clip_frac": _masked_mean(dual_hit, mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "ratio_max": _masked_max(ratio, mask),
            "is_weight_mean": _masked_mean(is_weight, mask),
            "is_weight_max": _masked_max(is_weight, mask),
            "is_clip_frac": _masked_mean(is_clipped, mask),
            "entropy_proxy": _masked_mean(-logp, mask),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}
