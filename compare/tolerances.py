"""The one tolerance table, and the one tensor comparison, of mylosses.

Tests and the harness both import this module; no tolerance is written anywhere else.

float64 and float32 (and their complex counterparts) are compared directly,
``|ours - torch| <= atol + rtol * |torch|`` elementwise, as ``torch.testing.assert_close`` does.

float16 and bfloat16 results are judged against the truth rather than against torch, because
torch's own half results are sometimes far from exact: given a float64 ``reference`` (torch run
on upcast copies of the same inputs), mylosses passes where, elementwise,

    |ours - reference| <= factor * max(|torch - reference|) + atol + rtol * |reference|

with the max over the tensor's finite errors (an infinite error of torch, an overflow, allows
any error at that element; the truth correctly rounded to the dtype, inf after an overflow
included, has no error): our error is at most twice torch's largest error on that tensor
(flash-attention's rule) plus one unit in the last place. torch's error at one element is no
yardstick: after a cancellation (a weighted mean's weight gradient, a gradient summed over
broadcast dimensions) torch's half result is sometimes exact by luck where ours is one rounding
of the cancelled terms off. Without a reference, half tensors fall back to the direct rule with
the same ``rtol``/``atol``.

Non-finite values must match: NaN where torch has NaN (or, against a reference, where torch or
the truth has NaN) and an infinity of the same sign where torch has one; an infinity where the
truth is finite is torch's (overflow) error, and ours may be better.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch

__all__ = [
    "OVERRIDES",
    "TOLERANCES",
    "Tolerance",
    "compare_tensors",
    "loosest_tolerance",
    "tolerance_for",
]


@dataclass(frozen=True)
class Tolerance:
    """How far mylosses may be from torch for one dtype.

    ``factor`` is set for the half dtypes only: with a float64 reference, our error may be
    ``factor`` times torch's own error (plus ``atol + rtol * |reference|``). ``arbitrate``
    (float32): where ours and torch disagree beyond ``rtol``/``atol``, a float64 reference
    decides, and ours passes if it is no farther from the truth than torch is (factor 1).
    """

    rtol: float
    atol: float
    factor: float | None = None
    arbitrate: bool = False


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-7, atol=1e-7),
    # torch's float32 result is sometimes the one that is off: a weighted mean's weight gradient
    # cancels two large terms, torch leaves float32 rounding noise (6e-5 where the truth is 0)
    # and ours may be exact. Such a disagreement is settled against the float64 truth.
    torch.float32: Tolerance(rtol=1e-4, atol=1e-5, arbitrate=True),
    # rtol is one unit in the last place of the dtype (torch.finfo(dtype).eps).
    torch.float16: Tolerance(rtol=1e-3, atol=1e-5, factor=2.0),
    torch.bfloat16: Tolerance(rtol=8e-3, atol=1e-5, factor=2.0),
}

# Justified per-loss exceptions to TOLERANCES, keyed by (torch class name, dtype). Each entry
# carries a comment saying why; none is needed yet.
OVERRIDES: dict[tuple[str, torch.dtype], Tolerance] = {}

_EXACT = Tolerance(rtol=0.0, atol=0.0)


def tolerance_for(
    dtype: torch.dtype, loss: str | None = None, inputs: Iterable[torch.dtype] = ()
) -> Tolerance:
    """The tolerance for a tensor of ``dtype`` (complex dtypes use their real dtype's; integer
    and bool tensors must be equal), with ``loss``'s override if it has one.

    ``inputs`` are the dtypes of the case's tensors. Where one of them is less precise than
    ``dtype`` (a float64 result of a float32 input and a float64 target), torch may compute in
    the lower precision and promote at the end (``binary_cross_entropy_with_logits`` does): its
    result then carries that precision's rounding, and a disagreement is arbitrated against the
    float64 truth (ours must be no farther from it than torch is), as for float32 results."""
    if dtype.is_complex:
        dtype = dtype.to_real()
    if loss is not None and (loss, dtype) in OVERRIDES:
        return OVERRIDES[(loss, dtype)]
    tol = TOLERANCES.get(dtype, _EXACT)
    if tol is not _EXACT and tol.factor is None and any(_coarser(d, dtype) for d in inputs):
        return replace(tol, arbitrate=True)
    return tol


def _coarser(a: torch.dtype, b: torch.dtype) -> bool:
    """Whether floating dtype ``a`` holds fewer significant bits than ``b``."""
    a = a.to_real() if a.is_complex else a
    return a.is_floating_point and torch.finfo(a).eps > torch.finfo(b).eps


def loosest_tolerance(dtypes: Iterable[torch.dtype], loss: str | None = None) -> Tolerance:
    """The loosest of the tolerances of ``dtypes``: for second-order gradients of a case whose
    tensors mix dtypes. There a float64 value (say the grad-grad of a float64 target) is the
    derivative of a float32 gradient (the float32 input's), and where the implementations cast
    between the two differs by a float32 rounding; forward values and first-order gradients
    stay at their own dtype's tolerance."""
    return max((tolerance_for(d, loss) for d in dtypes), key=lambda t: (t.rtol, t.atol))


def compare_tensors(
    name: str,
    ours: torch.Tensor | None,
    theirs: torch.Tensor | None,
    reference: torch.Tensor | None = None,
    *,
    tolerance: Tolerance | None = None,
) -> str | None:
    """Compare mylosses' tensor ``ours`` with torch's ``theirs``.

    Returns None when they agree within ``tolerance`` (default: ``tolerance_for(theirs.dtype)``),
    else one message naming ``name`` and the mismatch: None against a tensor, the shapes, the
    dtypes, or the first mismatching indices with both values (and the reference's), the
    number of mismatches and the largest absolute and relative differences.
    ``reference`` (float64, torch run on upcast inputs) is used only for dtypes whose tolerance
    has a ``factor`` (float16, bfloat16) or ``arbitrate`` (float32, on a disagreement).
    """
    if ours is None or theirs is None:
        if ours is None and theirs is None:
            return None
        return f"{name}: mylosses gave {_what(ours)}, torch gave {_what(theirs)}"
    if ours.shape != theirs.shape:
        return f"{name}: shape {tuple(ours.shape)} != torch's {tuple(theirs.shape)}"
    if ours.dtype != theirs.dtype:
        return f"{name}: dtype {ours.dtype} != torch's {theirs.dtype}"
    if theirs.numel() == 0:
        return None
    tol = tolerance if tolerance is not None else tolerance_for(theirs.dtype)
    a, b = _as_real64(ours), _as_real64(theirs)
    if tol.factor is not None and reference is not None:
        if reference.shape != theirs.shape:
            return f"{name}: reference shape {tuple(reference.shape)} != {tuple(theirs.shape)}"
        r = _as_real64(reference)
        rounded = _as_real64(reference.to(theirs.dtype))
        torch_error = _error(b, r, rounded)
        finite_errors = torch_error[torch_error.isfinite()]
        largest = finite_errors.max() if finite_errors.numel() else torch_error.new_zeros(())
        allowed = tol.factor * torch.maximum(torch_error, largest)
        good = _error(a, r, rounded) <= allowed + tol.atol + tol.rtol * _finite_abs(r)
        good &= ~a.isnan() | b.isnan() | r.isnan()
        rule = (
            f"|ours-ref| <= {tol.factor:g}*max|torch-ref| ({float(largest):.3g}) "
            f"+ {tol.atol:g} + {tol.rtol:g}*|ref|"
        )
    else:
        r = None
        good = _same(a, b) | (
            a.isfinite() & b.isfinite() & ((a - b).abs() <= tol.atol + tol.rtol * b.abs())
        )
        rule = f"rtol={tol.rtol:g}, atol={tol.atol:g}"
    if bool(good.all()):
        return None
    if tol.arbitrate and reference is not None:
        judge = Tolerance(rtol=tol.rtol, atol=tol.atol, factor=1.0)
        return compare_tensors(name, ours, theirs, reference, tolerance=judge)
    return _mismatch_message(name, ours, a, b, r, good, rule)


def _what(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"a {t.dtype} tensor of shape {tuple(t.shape)}"


def _as_real64(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU in float64; a complex tensor as float64 pairs (a trailing dim of 2)."""
    t = t.detach().cpu()
    if t.is_complex():
        return torch.view_as_real(t.to(torch.complex128).resolve_conj())
    return t.to(torch.float64)


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Equal, counting NaN as equal to NaN (infinities compare equal by sign already)."""
    return (a == b) | (a.isnan() & b.isnan())


def _error(x: torch.Tensor, ref: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """``|x - ref|``: 0 where x is the truth ``ref`` correctly rounded (``rounded``: an overflow
    to inf included) or the same (NaN), inf where either is non-finite and they differ."""
    finite = x.isfinite() & ref.isfinite()
    err = torch.where(finite, (x - ref).abs(), torch.full_like(x, float("inf")))
    return torch.where(_same(x, ref) | _same(x, rounded), torch.zeros_like(x), err)


def _finite_abs(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t.isfinite(), t.abs(), torch.zeros_like(t))


def _mismatch_message(
    name: str,
    ours: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor | None,
    good: torch.Tensor,
    rule: str,
) -> str:
    bad = (~good).nonzero()
    where = "; ".join(_at(a, b, r, tuple(int(i) for i in idx)) for idx in bad[:3])
    finite = a.isfinite() & b.isfinite()
    diff = (a - b).abs()[finite]
    max_abs = float(diff.max()) if diff.numel() else float("nan")
    nonzero = finite & (b != 0)
    rel = (a - b).abs()[nonzero] / b.abs()[nonzero]
    max_rel = float(rel.max()) if rel.numel() else float("nan")
    complex_note = " (complex as (real, imag) pairs)" if ours.is_complex() else ""
    return (
        f"{name}: {bad.shape[0]} of {good.numel()} values differ{complex_note} ({rule}); "
        f"first at {where}; max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g} (finite values)"
    )


def _at(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor | None, idx: tuple[int, ...]) -> str:
    text = f"{list(idx)} ours={float(a[idx])!r} torch={float(b[idx])!r}"
    return text if r is None else f"{text} ref={float(r[idx])!r}"
