import numpy as np
import pytest

from ortdecode.errors import NonFiniteLogitsError
from ortdecode.numerics import check_scores, first_crossing, log_softmax


def test_log_softmax_is_stable_for_huge_logits():
    x = np.array([[1e4, 1e4 - 1.0, -1e4]], dtype=np.float32)
    out = log_softmax(x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.exp(out).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0] - out[0, 1], 1.0, rtol=1e-6)


def test_first_crossing_matches_a_plain_cumulative_sum():
    rng = np.random.default_rng(0)
    weights = rng.random((6, 1000)).astype(np.float32)
    weights[:, ::3] = 0.0  # zero weights are never the answer
    targets = rng.random(6) * weights.sum(-1, dtype=np.float64)
    expected = np.argmax(np.cumsum(weights, axis=-1, dtype=np.float64) > targets[:, None], axis=-1)
    np.testing.assert_array_equal(first_crossing(weights, targets), expected)
    assert (weights[np.arange(6), first_crossing(weights, targets)] > 0).all()


def test_first_crossing_clamps_to_the_last_positive_weight():
    weights = np.array([[0.0, 2.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    assert first_crossing(weights, np.array([10.0]))[0] == 2


def test_log_softmax_does_not_modify_its_input():
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    log_softmax(x)
    np.testing.assert_array_equal(x, [[1.0, 2.0]])


@pytest.mark.parametrize("bad, match", [(np.nan, "step 7: logits contain NaN"), (np.inf, "step 7: logits contain \\+inf")])
def test_check_scores_names_the_step(bad, match):
    values = np.zeros((3, 5), dtype=np.float32)
    values[1, 2] = bad
    with pytest.raises(NonFiniteLogitsError, match=match):
        check_scores(values, 7, "logits")


def test_check_scores_rejects_rows_with_every_token_masked():
    values = np.zeros((2, 4), dtype=np.float32)
    values[1] = -np.inf
    with pytest.raises(NonFiniteLogitsError, match="step 0: scores mask every token .* rows \\[1\\]"):
        check_scores(values, 0, "scores")


def test_check_scores_accepts_minus_inf_entries():
    values = np.zeros((2, 4), dtype=np.float32)
    values[:, :3] = -np.inf
    check_scores(values, 0, "scores")
