"""Learner test helpers: a synthetic step's groups and the same update in plain torch."""

import dataclasses

import torch

from cluster.contract.schema import Group, build_batch
from learner.algo import compute_advantages, policy_loss
from learner.batch import to_tensors
from learner.rank import token_logprobs

LR = 1e-3


def step_batch(seed=0, groups=6, size=2):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in range(groups):
        prompt = torch.randint(3, 18, (int(torch.randint(2, 6, (1,), generator=gen)),), generator=gen)
        comps = [torch.randint(3, 18, (int(torch.randint(1, 7, (1,), generator=gen)),),
                               generator=gen).tolist() for _ in range(size)]
        out.append(Group(f"g{p}", f"p{p}", prompt.tolist(), comps,
                         [[-1.5] * len(c) for c in comps],
                         [float(x) for x in torch.randint(0, 2, (size,), generator=gen)]))
    return build_batch(out)


def reference_step(model_path, batch, config, device="cpu"):
    """The same update in one process with plain torch: whole batch, one AdamW step."""
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
    opt.step()
    return float(loss.detach()), {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
