import numpy as np
import pytest

from ortdecode.errors import NonFiniteLogitsError
from ortdecode.numerics import check_scores, log_softmax, softmax


def test_log_softmax_is_stable_for_huge_logits():
    x = np.array([[1e4, 1e4 - 1.0, -1e4]], dtype=np.float32)
    out = log_softmax(x)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.exp(out).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0] - out[0, 1], 1.0, rtol=1e-6)


def test_softmax_handles_minus_inf_and_sums_to_one_in_float64():
    probs = softmax(np.array([[-np.inf, 0.0, 1e4, -np.inf]], dtype=np.float32))
    assert probs.dtype == np.float64 and probs[0, 0] == 0.0 and probs[0, 3] == 0.0
    np.testing.assert_allclose(probs.sum(), 1.0)


def test_softmax_does_not_modify_its_input():
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    softmax(x)
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
