"""Numerics shared by the samplers: stable log-softmax, the cumulative-sum search behind sampling and
top-p, and the finiteness check run on every step.

All functions work on the last axis, never modify their input, and accept -inf entries (masked tokens).
A row that is entirely -inf has no distribution; `check_scores` reports it before it reaches them.
"""

from __future__ import annotations

import numpy as np

from .errors import NonFiniteLogitsError


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log(softmax(x)) in x's dtype: x - max - log(sum(exp(x - max))). Shapes: [..., vocab]."""
    with np.errstate(over="ignore"):  # -3e38 - 3e38 = -inf: probability 0, which it is
        shifted = x - x.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # in place: one array fewer made and read
    return shifted


_GROUPS = 2048  # column groups whose maxima bound the k-th largest value from below (`_top_candidates`)


def _top_candidates(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The entries of float[rows, n] that can be among each row's k largest, found without a selection over
    the whole row. Column c belongs to group c % `_GROUPS` (the last n % _GROUPS columns are groups of their
    own). The group maxima are distinct entries, so at least k entries reach the k-th largest maximum: a floor
    under the row's k-th largest value. Only the groups whose maximum reaches the floor hold candidates.
    Returns the candidates' (rows, columns) sorted by row, then value descending, then column, and where each
    row's run starts; None when the rows are too short for it to pay, or when the floor lets too many groups
    through (flat rows, rows mostly -inf)."""
    count, n = values.shape
    per_group = n // _GROUPS
    if per_group < 4 or 4 * k > _GROUPS:
        return None
    head = per_group * _GROUPS
    maxima = values[:, :head].reshape(count, per_group, _GROUPS).max(axis=1)  # one pass, contiguous runs
    maxima = np.concatenate([maxima, values[:, head:]], axis=1)  # the last columns: one-column groups
    floor = np.partition(maxima, maxima.shape[1] - k, axis=1)[:, maxima.shape[1] - k]
    rows, groups = np.nonzero(maxima >= floor[:, None])
    if len(rows) > count * max(4 * k, 64):
        return None
    in_head = groups < _GROUPS
    members = groups[in_head, None] + _GROUPS * np.arange(per_group)  # each hit group's columns
    rows = np.concatenate([np.repeat(rows[in_head], per_group), rows[~in_head]])
    columns = np.concatenate([members.reshape(-1), head + groups[~in_head] - _GROUPS])
    order = np.lexsort((columns, -values[rows, columns], rows))
    rows, columns = rows[order], columns[order]
    return rows, columns, np.searchsorted(rows, np.arange(count))


def top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """int64[rows, k]: the columns of the k largest entries of each row of float[rows, n], largest first, equal
    values in column order (a stable sort's order; k <= n)."""
    found = _top_candidates(values, k)
    if found is None:
        return np.argsort(-values, axis=-1, kind="stable")[:, :k]
    _, columns, starts = found
    return columns[starts[:, None] + np.arange(k)].astype(np.int64, copy=False)


def kth_largest(values: np.ndarray, k: int) -> np.ndarray:
    """[rows, 1]: the k-th largest entry of each row of float[rows, n] (k <= n)."""
    found = _top_candidates(values, k)
    if found is None:
        return np.partition(values, -k, axis=-1)[:, -k:].min(axis=-1, keepdims=True)
    rows, columns, starts = found
    return values[rows[starts + k - 1], columns[starts + k - 1]][:, None]


def softmax_weights(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exp(scores - row max) in the scores' dtype, and their row sums in float64: softmax = weights / sums.
    Entries at -inf get weight 0."""
    with np.errstate(over="ignore"):  # differences below -3.4e38 become -inf: weight 0
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights, weights.sum(axis=-1, dtype=np.float64)


def without_overflow(scores: np.ndarray, compute) -> np.ndarray:
    """compute(scores, rows) -> new scores, computed in the scores' dtype; where that overflows (a row with
    finite scores gets a +inf or an all -inf result, e.g. 3e38 / temperature 0.5 in float32), the row is
    computed again in float64 and shifted so that its largest score is 0 before going back to the dtype.
    The shift leaves softmax, top-k and top-p unchanged. rows: the row indices (or a slice) being computed."""
    with np.errstate(over="ignore"):  # detected below, and done again
        out = compute(scores, slice(None))
    out_max = out.max(axis=-1)
    if np.isfinite(out_max).all():  # the common case, decided by one reduction
        return out
    bad = ~np.isfinite(out_max) & np.isfinite(scores.max(axis=-1))
    if not bad.any():
        return out
    rows = np.flatnonzero(bad)
    wide = compute(scores[rows].astype(np.float64), rows)
    finite_max = np.where(np.isfinite(wide), wide, -np.inf).max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):  # scores far below the row's best become -inf: probability 0
        out[rows] = (wide - finite_max).astype(out.dtype)
    return out


# `nucleus_floor`: scores binned by their distance below the row's best, in bins this wide; exp(-88) is below
# float32's smallest normal number, so the last bin (which also takes everything further down) weighs nothing
_NUCLEUS_BINS = 4096
_NUCLEUS_SPAN = 88.0


def nucleus_floor(scores: np.ndarray, top_p: float) -> np.ndarray:
    """float[rows]: the lowest score of each row's nucleus, the fewest best tokens whose probability reaches
    top_p (0 < top_p < 1): the tokens scoring at least that value (ties of the last one included). A row
    entirely -inf gets NaN (nothing compares below it).

    Without sorting the row (NumPy's sort of 32 rows x 32k took 19 ms on 2 cores): the weights exp(score - max)
    are summed in float64 into `_NUCLEUS_BINS` bins by score, the bin where the cumulative mass crosses
    top_p x total is found, and only that bin's tokens are sorted. The sums add the same weights as a
    cumulative sum over the sorted row, in another order: the cut can differ from a sorted sum's only where
    rounding crosses top_p x total (transformers sums in float32)."""
    rows, _ = scores.shape
    with np.errstate(invalid="ignore", over="ignore"):  # a row entirely -inf: -inf - -inf = NaN
        shifted = scores - scores.max(axis=-1, keepdims=True)
        weights = np.exp(shifted)
    # bin 0 holds the best scores; fmin sends -inf (and a masked row's NaN) to the last bin
    bins = np.fmin(shifted * (-_NUCLEUS_BINS / _NUCLEUS_SPAN), _NUCLEUS_BINS - 1).astype(np.int32)
    bins += (np.arange(rows, dtype=np.int32) * _NUCLEUS_BINS)[:, None]
    mass = np.bincount(bins.reshape(-1), weights=weights.reshape(-1), minlength=rows * _NUCLEUS_BINS)
    cdf = np.cumsum(mass.reshape(rows, _NUCLEUS_BINS), axis=-1)
    targets = np.nextafter(top_p * cdf[:, -1], 0)  # crossing "> target" is reaching top_p x total
    crossed = np.argmax(cdf > targets[:, None], axis=-1)
    floors = np.full(rows, np.nan, dtype=scores.dtype)
    for row in np.flatnonzero(np.isfinite(targets)):
        b = crossed[row]
        members = np.flatnonzero(bins[row] == row * _NUCLEUS_BINS + b)
        values = scores[row, members]
        order = np.argsort(-values, kind="stable")
        before = cdf[row, b - 1] if b else 0.0
        reached = before + np.cumsum(weights[row, members[order]], dtype=np.float64) > targets[row]
        # rounding may leave the bin's own sum just short of the target: then its last token
        floors[row] = values[order[np.argmax(reached) if reached.any() else len(order) - 1]]
    return floors


_BLOCK = 256


def first_crossing(weights: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each row of non-negative weights [rows, n], the first index i where
    weights[:i + 1].sum() > target (float64 sums), clamped to the last positive weight.

    This is the cumulative-sum search of sampling and top-p, done in two levels (sums of 256-wide
    blocks, then one block's cumsum): NumPy's cumsum over a 32k-wide axis costs milliseconds per row."""
    rows, n = weights.shape
    whole = n - n % _BLOCK  # the last n % _BLOCK columns form a shorter block (no padded copy of the rows)
    block_sums = weights[:, :whole].reshape(rows, -1, _BLOCK).sum(axis=-1, dtype=np.float64)
    if whole < n:
        block_sums = np.concatenate([block_sums, weights[:, whole:].sum(axis=-1, dtype=np.float64)[:, None]], axis=1)
    block_cdf = np.cumsum(block_sums, axis=-1)
    total = block_cdf[:, -1]
    targets = np.minimum(targets, np.nextafter(total, 0))  # some block always crosses
    block = np.argmax(block_cdf > targets[:, None], axis=-1)
    row = np.arange(rows)
    before = np.where(block > 0, block_cdf[row, np.maximum(block - 1, 0)], 0.0)
    columns = block[:, None] * _BLOCK + np.arange(_BLOCK)  # the crossing block's columns (past n: weight 0)
    inside = columns < n
    inner = np.cumsum(np.where(inside, weights[row[:, None], np.where(inside, columns, 0)], 0), axis=-1,
                      dtype=np.float64)
    # Rounding may put the remainder at or past the block's own sum: clamp inside the block.
    rest = np.minimum(targets - before, np.nextafter(inner[:, -1], 0))
    return block * _BLOCK + np.argmax(inner > rest[:, None], axis=-1)


def check_scores(values: np.ndarray, step: int, what: str) -> None:
    """Raise `NonFiniteLogitsError` naming the step if `values` [rows, vocab] holds NaN or +inf, or a row
    with no finite entry. -inf entries are fine: they are masked tokens."""
    # One pass decides the common case: a row's max is finite iff the row has no NaN, no +inf and
    # at least one finite entry.
    if np.isfinite(values.max(axis=-1)).all():
        return
    if np.isnan(values).any():
        rows = np.unique(np.nonzero(np.isnan(values))[0]).tolist()
        raise NonFiniteLogitsError(f"step {step}: {what} contain NaN (rows {rows[:8]})")
    if np.isposinf(values).any():
        rows = np.unique(np.nonzero(np.isposinf(values))[0]).tolist()
        raise NonFiniteLogitsError(f"step {step}: {what} contain +inf (rows {rows[:8]})")
    if np.isneginf(values.max(axis=-1)).any():
        rows = np.nonzero(np.isneginf(values.max(axis=-1)))[0].tolist()
        raise NonFiniteLogitsError(f"step {step}: {what} mask every token (all -inf) in rows {rows[:8]}")
