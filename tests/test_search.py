"""Token selection: the sampler's law (chi-square), Gumbel-top-k, greedy tie-breaking."""

import numpy as np
import pytest
from scipy.stats import chisquare

from ortdecode import GenerationConfig
from ortdecode.search import TokenSearch, sample_rows, sample_without_replacement
from ortdecode.stopping import StopRules


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of observed counts against probabilities; bins with expected count < 5 are pooled."""
    expected = probs / probs.sum() * counts.sum()
    small = expected < 5
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    return chisquare(observed[keep], expected[keep]).pvalue


def test_sample_rows_follows_the_distribution():
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0])
    with np.errstate(divide="ignore"):
        draws = sample_rows(np.tile(np.log(probs), (40_000, 1)).astype(np.float32), rng)
    counts = np.bincount(draws, minlength=len(probs))
    assert counts[-1] == 0  # zero-probability tokens are never drawn
    assert chi_square_p(counts, probs) > 1e-3


def test_sample_rows_never_picks_a_masked_token():
    scores = np.full((1000, 10), -np.inf, dtype=np.float32)
    scores[:, 4] = 0.0
    assert (sample_rows(scores, np.random.default_rng(1)) == 4).all()


def test_sample_without_replacement_is_distinct_and_first_draw_follows_the_weights():
    rng = np.random.default_rng(2)
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    picks = sample_without_replacement(np.log(np.tile(probs, (20_000, 1))), 3, rng)
    assert all(len(set(row)) == 3 for row in picks[:100])
    assert chi_square_p(np.bincount(picks[:, 0], minlength=4), probs) > 1e-3


def test_greedy_takes_the_first_maximum_and_pads_finished_rows():
    config = GenerationConfig(max_new_tokens=5)
    search = TokenSearch(config, num_inputs=2, rng=np.random.default_rng(0), rules=StopRules(config, model_eos=[1]))
    search.advance(np.array([[0.0, 5.0, 5.0, 1.0], [0.0, 0.0, 3.0, 3.0]], dtype=np.float32))  # row 0: EOS (1)
    search.advance(np.array([[0.0, 0.0, 0.0, 9.0], [0.0, 9.0, 0.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(search.input_ids, [[0, 1, 0], [0, 2, 1]])
    assert search.done


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_with_a_seed_is_repeatable(seed):
    config = GenerationConfig(do_sample=True, max_new_tokens=3)
    scores = np.random.default_rng(9).standard_normal((4, 30)).astype(np.float32)
    runs = []
    for _ in range(2):
        search = TokenSearch(config, num_inputs=4, rng=np.random.default_rng(seed), rules=StopRules(config, model_eos=[1]))
        search.advance(scores)
        runs.append(search.input_ids.copy())
    np.testing.assert_array_equal(*runs)
