"""Behaviour log-probs read from vLLM's completions, in its flat form and its per-token form."""

from types import SimpleNamespace

import pytest

from actors.rollout import sampled_logprobs


def test_flat_and_per_token_forms_give_the_sampled_tokens_logprobs():
    from vllm.logprobs import FlatLogprobs, Logprob

    ids = [5, 9, 5]
    values = [-0.25, -1.5, -0.125]
    flat = FlatLogprobs()
    for t, v in zip(ids, values):
        flat.append({t: Logprob(logprob=v, rank=1)})
    assert sampled_logprobs(SimpleNamespace(token_ids=ids, logprobs=flat)) == values

    # A position holding more than the sampled token (logprobs=k > 0): looked up by id.
    per_token = [{7: Logprob(logprob=-0.1, rank=1), t: Logprob(logprob=v, rank=2)}
                 for t, v in zip(ids, values)]
    assert sampled_logprobs(SimpleNamespace(token_ids=ids, logprobs=per_token)) == values
    wide = FlatLogprobs()
    for position in per_token:
        wide.append(position)
    assert sampled_logprobs(SimpleNamespace(token_ids=ids, logprobs=wide)) == values


def test_a_completion_without_logprobs_is_an_error_that_says_why():
    with pytest.raises(ValueError, match="no log-probs; training samples need logprobs=0"):
        sampled_logprobs(SimpleNamespace(token_ids=[1], logprobs=None))
