"""The weight probe: a fixed prefix, the model's greedy continuation, and their log-probs."""

import pytest
import torch

from cluster.contract.weights import PROBE_GREEDY, PROBE_PREFIX, probe, probe_logprobs
from cluster.policy.embedded import build_model


@pytest.mark.parametrize("checkpointing", [False, True])
def test_probe_scores_its_greedy_continuation_as_a_full_forward_does(checkpointing):
    """The cached, token-at-a-time probe agrees with one full forward over its ids, also for
    a training-mode model that checkpoints activations (which turns HF's cache off in
    training); the model is left in the mode it was in."""
    model = build_model(seed=3)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    vocab = model.config.vocab_size
    ids, logprobs = probe(model, vocab)
    assert model.training
    assert len(ids) == PROBE_PREFIX + PROBE_GREEDY and len(logprobs) == len(ids) - 1
    model.eval()
    assert max(abs(a - b) for a, b in zip(logprobs, probe_logprobs(model, ids))) < 1e-5
    # The continuation is greedy: each token is the argmax after its prefix.
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    assert ids[PROBE_PREFIX:] == logits[PROBE_PREFIX - 1:-1, :vocab].argmax(-1).tolist()


def test_a_model_without_a_cache_gets_the_same_probe():
    """Custom models may return no key/value cache: the probe recomputes the sequence."""
    model = build_model(seed=3).eval()
    vocab = model.config.vocab_size

    class NoCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, **kwargs):
            out = self.inner(input_ids=input_ids)
            out.past_key_values = None
            return out

    ids, logprobs = probe(NoCache(), vocab)
    expected_ids, expected = probe(model, vocab)
    assert ids == expected_ids and logprobs == pytest.approx(expected, abs=1e-5)


class CountingModel(torch.nn.Module):
    """A model that counts its forward passes (optionally returning no cache)."""

    def __init__(self, inner, cache: bool = True):
        super().__init__()
        self.inner, self.cache, self.passes = inner, cache, 0

    def forward(self, input_ids, **kwargs):
        self.passes += 1
        out = self.inner(input_ids=input_ids, **(kwargs if self.cache else {}))
        if not self.cache:
            out.past_key_values = None
        return out


@pytest.mark.parametrize("cache", [True, False])
def test_a_guess_never_changes_the_probe_and_a_right_one_makes_it_one_pass(cache):
    """The guess (the last version's greedy tokens) is checked token by token: right, it
    saves every pass but one; wrong from any token on, the continuation is still the model's
    own greedy one, with the same log-probs as without a guess."""
    model = build_model(seed=3).eval()
    vocab = model.config.vocab_size
    expected_ids, expected = probe(model, vocab)
    greedy = expected_ids[PROBE_PREFIX:]
    wrong = [(t + 1) % vocab for t in greedy]
    for guess, most_passes in ((greedy, 1), (greedy[:3] + wrong[3:], 2 + PROBE_GREEDY - 5),
                               (wrong, 2 + PROBE_GREEDY - 2), (greedy[:2], 2 + PROBE_GREEDY - 4),
                               (greedy + [5, 6], 1)):
        counted = CountingModel(model, cache)
        ids, logprobs = probe(counted, vocab, guess)
        assert ids == expected_ids
        assert logprobs == pytest.approx(expected, abs=1e-5)
        if cache:
            assert counted.passes == most_passes, guess
