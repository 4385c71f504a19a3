import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ortdecode.errors import NonFiniteLogitsError
from ortdecode.numerics import check_scores, first_crossing, kth_largest, log_softmax, nucleus_floor, top_k_indices


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


@pytest.mark.parametrize("n", [1000, 1024, 32128])
def test_first_crossing_finds_crossings_in_the_last_shorter_block(n):
    weights = np.zeros((3, n), dtype=np.float32)
    weights[:, -3:] = [1.0, 2.0, 4.0]  # all the mass in the last columns
    weights[2, 0] = 1.0
    targets = np.array([0.5, 2.5, 2.5])
    np.testing.assert_array_equal(first_crossing(weights, targets), [n - 3, n - 2, n - 2])


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


def _reference_top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Largest first, equal values in column order: a stable sort of the negated row."""
    return np.argsort(-values, axis=-1, kind="stable")[:, :k]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), width=st.sampled_from([7, 8192, 8195, 32128, 4 * 32128]), k=st.integers(1, 16),
       levels=st.sampled_from([None, 3, 50]), masked=st.floats(0.0, 0.999), flat=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_top_k_indices_and_kth_largest_match_a_full_stable_sort(rows, width, k, levels, masked, flat, seed):
    """Rows as beam search and top-k sampling see them: vocabulary-wide (and beams x vocabulary), with ties
    (`levels` distinct values), -inf masks covering up to almost every column, and rows that are flat."""
    rng = np.random.default_rng(seed)
    k = min(k, width)
    values = rng.standard_normal((rows, width)).astype(np.float32) * 4
    if levels is not None:
        values = np.round(values * levels / 16) / levels
    values[rng.random((rows, width)) < masked] = -np.inf
    values[:, rng.integers(width)] = 1.0  # every row keeps a finite entry
    if flat:
        values[-1] = 0.5  # a flat row: every column ties
    expected = _reference_top_k(values, k)
    np.testing.assert_array_equal(top_k_indices(values, k), expected)
    np.testing.assert_array_equal(kth_largest(values, k)[:, 0], values[np.arange(rows), expected[:, -1]])


def test_top_k_indices_selects_candidates_instead_of_sorting_whole_rows(monkeypatch):
    """On vocabulary-wide rows the k largest come from the entries above a floor, not from a sort of the row
    (that would cost more than a decoder step at beam 4, batch 32)."""
    values = np.random.default_rng(0).standard_normal((32, 4 * 32128)).astype(np.float32)
    expected = _reference_top_k(values, 8)
    monkeypatch.setattr(np, "argsort", lambda *a, **kw: pytest.fail("sorted a whole row"))
    np.testing.assert_array_equal(top_k_indices(values, 8), expected)


def _reference_nucleus_floor(values: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The definition: sort the row descending, sum its weights exp(score - max) in float64 until they reach
    top_p x total; the floor is the score where they do. Also returns how far the sum at the cut and at the
    token before it are from the target, relative to the total (rounding decides a cut closer than ~1e-12)."""
    floors, margins = [], []
    for row in values:
        descending = -np.sort(-row)
        with np.errstate(invalid="ignore"):
            weights = np.exp(descending - descending[0]).astype(np.float64)  # float32 exp, as the samplers
        sums = np.cumsum(weights)
        target = top_p * sums[-1]
        cut = min(int(np.argmax(sums >= target)), len(row) - 1)
        floors.append(descending[cut])
        margins.append(min(abs(sums[cut] - target), abs(sums[cut - 1] - target) if cut else np.inf) / sums[-1])
    return np.array(floors, dtype=values.dtype), np.array(margins)


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 4), width=st.sampled_from([2, 7, 300, 8195, 32128]), top_p=st.floats(0.01, 0.999),
       scale=st.sampled_from([0.01, 1.0, 4.0, 30.0, 1000.0]), levels=st.sampled_from([None, 3, 50]),
       masked=st.floats(0.0, 0.99), seed=st.integers(0, 2**32 - 1))
def test_nucleus_floor_is_where_a_sorted_cumulative_sum_reaches_top_p(rows, width, top_p, scale, levels, masked,
                                                                       seed):
    """Rows of every spread (weights that underflow, rows where every weight counts), with ties and -inf masks:
    the floor is the sorted row's, unless the cut lies within rounding of top_p x total."""
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal((rows, width)) * scale).astype(np.float32)
    if levels is not None:
        values = (np.round(values * levels / scale) / levels * scale).astype(np.float32)
    values[rng.random((rows, width)) < masked] = -np.inf
    values[:, rng.integers(width)] = 1.0  # every row keeps a finite entry
    expected, margins = _reference_nucleus_floor(values, top_p)
    clear = margins > 1e-12
    np.testing.assert_array_equal(nucleus_floor(values, top_p)[clear], expected[clear])


def test_nucleus_floor_of_a_masked_row_is_nan_and_sorts_only_the_tokens_near_the_cut(monkeypatch):
    """Vocabulary-wide rows: the floors are the sorted rows', from a sort of one bin's tokens per row."""
    values = np.random.default_rng(0).standard_normal((32, 32128)).astype(np.float32) * 3
    values[0] = -np.inf
    expected, _ = _reference_nucleus_floor(values[1:], 0.9)
    sorted_sizes = []
    argsort = np.argsort

    def counting_argsort(a, *args, **kwargs):
        sorted_sizes.append(np.size(a))
        return argsort(a, *args, **kwargs)

    monkeypatch.setattr(np, "argsort", counting_argsort)
    floors = nucleus_floor(values, 0.9)
    assert np.isnan(floors[0])
    np.testing.assert_array_equal(floors[1:], expected)
    assert len(sorted_sizes) == 31 and max(sorted_sizes) < 32128 // 20, sorted_sizes
