"""The parity judge: is an export's logits error the size of float rounding, or a bug?

A fixed absolute tolerance judges rounding, not correctness: a model whose logits reach 100 has float32
rounding errors near 1e-4 in PyTorch itself. So the judge measures what float32 costs on this very
model and these inputs, against a float64 run of the same checkpoint:

    err_torch  = max |PyTorch float32 logits - PyTorch float64 logits|
    err_export = max |export logits          - PyTorch float64 logits|
    pass when  err_export <= FACTOR * err_torch + FLOOR_ULPS * eps(dtype) * scale

`scale` is max |float64 logits|. FACTOR = 4: the export runs the same operations in the same precision
with other kernels (other summation orders, fused ops), so its rounding error is of PyTorch's order; 4x
leaves room for a less favourable order and nothing for a real defect (a wrong head size or a missing
scale moves logits by a sizeable fraction of `scale`). The floor, 8 units in the last place of the
export's dtype at the logits' scale, keeps the bound meaningful when PyTorch float32 happens to be
almost exact. float16 exports get float16's epsilon in the floor.

Greedy tokens must agree with float64's at every teacher-forced step, except at true near-ties: where
float64's top-2 gap is no larger than twice the export's measured error at that step (each of the two
logits may move by that much; the row's error counts only up to the tolerance), either token is a
correct float result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FACTOR = 4.0
FLOOR_ULPS = 8.0
EPSILON = {"float32": float(np.finfo(np.float32).eps), "float16": float(np.finfo(np.float16).eps)}


@dataclass(frozen=True)
class ParityVerdict:
    err_vs_float32: float  # max |export - PyTorch float32|
    err_vs_float64: float  # max |export - PyTorch float64|
    torch_float32_vs_float64: float  # PyTorch float32's own error: what float32 costs here
    logits_scale: float  # max |float64 logits|
    tolerance: float  # the bound err_vs_float64 was held to (or `atol` on err_vs_float32)
    rule: str  # "parity" (the float64 judge) or "atol" (the user's override)
    greedy_mismatches: int  # steps whose argmax differs from float64's outside a near-tie
    near_ties: int  # steps whose argmax differs from float64's at a near-tie (excused)
    passed: bool | None  # None: measured, not judged (int8 without --atol)
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def greedy_disagreements(logits: np.ndarray, reference64: np.ndarray, tolerance: float) -> tuple[int, int]:
    """(mismatches, near_ties) of argmax(logits) vs argmax(reference64) over every row of [..., vocab]. A row
    is a near-tie when float64's top-2 gap is at most twice the row's error, counted up to `tolerance` (a
    grossly wrong row excuses nothing)."""
    logits = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    reference64 = reference64.reshape(-1, reference64.shape[-1])
    differ = np.argmax(logits, axis=-1) != np.argmax(reference64, axis=-1)
    top2 = np.sort(reference64, axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    row_error = np.abs(logits - reference64).max(axis=-1)
    tie = gap <= 2 * np.minimum(row_error, tolerance)
    return int((differ & ~tie).sum()), int((differ & tie).sum())


def judge(export: np.ndarray, torch32: np.ndarray, torch64: np.ndarray, dtype: str = "float32",
          atol: float | None = None, judged: bool = True) -> ParityVerdict:
    """Judge export logits against PyTorch float32 and float64 logits of the same teacher-forced steps.

    export, torch32, torch64: [..., vocab], the same positions. `atol` overrides the rule: pass when
    max |export - PyTorch float32| <= atol. `judged=False` (int8 without atol) measures only."""
    if dtype not in EPSILON:
        raise ValueError(f"`dtype` has to be one of {', '.join(EPSILON)}, but is {dtype!r}")
    torch64 = np.asarray(torch64, dtype=np.float64)
    err32 = float(np.abs(export.astype(np.float64) - torch32.astype(np.float64)).max())
    err64 = float(np.abs(export.astype(np.float64) - torch64).max())
    torch_err = float(np.abs(torch32.astype(np.float64) - torch64).max())
    scale = float(np.abs(torch64).max())
    if atol is not None:
        tolerance, rule = float(atol), "atol"
    else:
        tolerance, rule = FACTOR * torch_err + FLOOR_ULPS * EPSILON[dtype] * scale, "parity"
    mismatches, ties = greedy_disagreements(export, torch64, tolerance)
    if rule == "atol":
        passed = err32 <= atol
        reason = (f"max |logits - PyTorch float32 logits| = {err32:.3g} {'<=' if passed else '>'} atol {atol:g}")
    else:
        close = err64 <= tolerance
        passed = (close and mismatches == 0) if judged else None
        reason = (f"max |logits - float64 logits| = {err64:.3g} {'<=' if close else '>'} {tolerance:.3g} "
                  f"(= {FACTOR:g} x PyTorch float32's own {torch_err:.3g} + {FLOOR_ULPS:g} ulp of {dtype} at logits "
                  f"scale {scale:.3g}); greedy tokens differ from float64's at {mismatches} step(s) outside "
                  f"near-ties ({ties} near-tie(s) excused)")
        if not judged:
            reason = "measured, not judged: " + reason
    return ParityVerdict(err_vs_float32=err32, err_vs_float64=err64, torch_float32_vs_float64=torch_err,
                         logits_scale=scale, tolerance=tolerance, rule=rule, greedy_mismatches=mismatches,
                         near_ties=ties, passed=passed, reason=reason)
