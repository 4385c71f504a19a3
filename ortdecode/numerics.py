"""Numerically stable softmax / log-softmax and the finiteness check run on every step.

All functions work on the last axis, never modify their input, and accept -inf entries (masked tokens).
A row that is entirely -inf has no distribution; `check_scores` reports it before it reaches them.
"""

from __future__ import annotations

import numpy as np

from .errors import NonFiniteLogitsError


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log(softmax(x)) in x's dtype: x - max - log(sum(exp(x - max))). Shapes: [..., vocab]."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """softmax over the last axis, computed in `dtype` (float64 by default, for cumulative sums)."""
    shifted = x.astype(dtype, copy=True)
    shifted -= shifted.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


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
