"""Case generator for PoissonNLLLoss.

torch's semantics that the draws cover:

- ``poisson_nll_loss`` is an autograd composition: ``exp(input) - target * input``
  (``log_input=True``) or ``input - target * log(input + eps)``, plus, with ``full=True``, the
  Stirling term ``y log y - y + 0.5 log(2 pi y)`` masked to 0 where ``target <= 1``. Input and
  target broadcast freely (either may be the larger; tag ``bcast``), shapes that do not
  broadcast are a RuntimeError (tag ``invalid``);
- the target gets a gradient, NaN where ``target <= 0`` with ``full=True`` (autograd multiplies
  the masked zero by ``log y``), so targets are Poisson counts (many exact 0 and 1) and, at
  times, real values, negatives (tag ``negtarget``) and nan/inf (tag ``nonfinite``);
- ``exp`` overflows for large log-rates (tag ``big``: about ±1e4, or ±100 near the threshold);
  with ``log_input=False`` zero and negative rates give -inf/NaN logs (tag ``negrate``), and
  ``eps`` is drawn (0 included);
- integer and bool inputs are promoted (the result is float32, float64 with a float64 target);
  a bool input with ``log_input=False`` fails at the subtraction (tag ``invalid``); every float
  dtype and mixed pairs; an invalid reduction name ('elementwise_mean' included) is a
  ValueError; legacy ``size_average``/``reduce``; 0-d, empty, large, non-contiguous layouts.
"""

from __future__ import annotations

from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
i64, i32, b8 = torch.int64, torch.int32, torch.bool

# (input dtype, target dtype): weight.
_DTYPES: dict[tuple[torch.dtype, torch.dtype], float] = {
    (f64, f64): 3.0,
    (f32, f32): 4.0,
    (f16, f16): 1.5,
    (bf16, bf16): 1.5,
    (f32, f64): 0.4,
    (f64, f32): 0.3,
    (f16, f32): 0.2,
    (bf16, f32): 0.2,
    (f32, f16): 0.2,
    (f32, i64): 0.3,
    (f64, i32): 0.1,
    (f32, b8): 0.1,
    (i64, f32): 0.3,
    (i64, i64): 0.2,
    (i32, f64): 0.1,
    (i64, f16): 0.1,
    (b8, f32): 0.1,
}
_DOUBLE_BACKWARD_DTYPES = (f32, f64)
_EPS = (1e-8, 1e-4, 0.5, 0.0, 1)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _rates(d: Draw, shape: tuple[int, ...], log_input: bool, big: bool) -> torch.Tensor:
    """float64 input values: log-rates (normal, or about ±1e4 / ±100 when ``big``) for
    ``log_input``, else rates in [0, 2) (some exact zeros)."""
    if log_input:
        values = d.values(shape, f64, "big" if big else "normal")
        if big and d.chance(0.5):
            values = values / 100.0  # around exp's overflow threshold (88 in float32)
        return values
    values = d.values(shape, f64, "positive")
    if big:
        values = values * 1e4
    if values.numel() and d.chance(0.2):
        values.view(-1)[:: d.choice((3, 5, 7))] = 0.0
    return values


def _counts(d: Draw, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    """float64 targets: Poisson counts (many 0 and 1), non-negative reals, or any reals."""
    if kind == "counts":
        rate = torch.rand(shape, generator=d.gen, dtype=f64) * d.choice((1.0, 4.0, 20.0))
        return torch.poisson(rate, generator=d.gen)
    if kind == "real":
        return torch.rand(shape, generator=d.gen, dtype=f64) * 6
    return torch.randn(shape, generator=d.gen, dtype=f64) * 3  # "negtarget"


def _to(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == b8:
        return values > 0.5
    if not dtype.is_floating_point:
        return values.round().to(dtype)
    return values.to(dtype)


def poisson_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)

    log_input = d.chance(0.6)
    if not log_input or d.chance(0.3):
        kwargs["log_input"] = log_input
    tags.append("log" if log_input else "rate")
    if d.chance(0.4):
        kwargs["full"] = True
        tags.append("full")
    elif d.chance(0.1):
        kwargs["full"] = False
    if d.chance(0.25):
        kwargs["eps"] = d.choice(_EPS)
        tags.append("eps")

    in_dtype, t_dtype = d.choice(list(_DTYPES), weights=list(_DTYPES.values()))
    if in_dtype == b8 and not log_input:
        tags.append("invalid")  # bool input - float: torch's subtraction error
    dtype_label = _dtype_name(in_dtype)
    if t_dtype != in_dtype:
        dtype_label += f"+{_dtype_name(t_dtype)}"

    kind = d.choice(("nd", "0d", "empty", "large"), weights=(83, 5, 6, 6))
    in_shape = t_shape = d.shape(kind)
    if kind != "nd":
        tags.append(kind)
    if kind != "large" and d.chance(0.15):
        in_shape, t_shape = d.broadcast_pair(in_shape)
        if d.chance(0.5):
            in_shape, t_shape = t_shape, in_shape
        tags.append("bcast")
    if kind != "large" and in_shape and d.chance(0.02):
        t_shape = (*in_shape[:-1], in_shape[-1] + 1)  # does not broadcast
        tags.append("invalid")

    big = d.chance(0.1)
    if big:
        tags.append("big")
    t_kind = d.choice(("counts", "real", "negtarget"), weights=(6, 2, 1))
    if t_kind != "counts":
        tags.append(t_kind if t_kind == "negtarget" else "realtarget")
    rates = _rates(d, in_shape, log_input, big)
    if not log_input and rates.numel() and d.chance(0.1):
        rates = rates - 1.0  # negative rates: NaN logs
        tags.append("negrate")
    input = _to(rates, in_dtype)
    target = _to(_counts(d, t_shape, t_kind), t_dtype)
    if d.chance(0.06):
        for t in (input, target) if d.chance(0.3) else (d.choice((input, target)),):
            d.sprinkle_nonfinite(t)
        tags.append("nonfinite")
    input, in_layout = d.lay_out(input)
    target, t_layout = d.lay_out(target)
    layouts = {in_layout, t_layout}

    wants = d.choice(("input", "target", "both", "none"), weights=(6, 1, 3, 1))
    for name, t in (("input", input), ("target", target)):
        if wants in (name, "both") and t.is_floating_point():
            t.requires_grad_()

    tags += sorted(layouts & {"transposed", "sliced", "expanded"})
    tensors = (input, target)
    double_backward = (
        any(t.requires_grad for t in tensors)
        and all(t.dtype in _DOUBLE_BACKWARD_DTYPES for t in tensors)
        and d.chance(0.25)
    )
    ctor_names = ("log_input", "full", "size_average", "eps", "reduce", "reduction")
    return Case(
        loss="PoissonNLLLoss",
        seed=seed,
        device=device,
        args=(input, target),
        kwargs=kwargs,
        ctor={k: v for k, v in kwargs.items() if k in ctor_names},
        label="/".join([head, dtype_label, *tags]),
        double_backward=double_backward,
        arg_names=positional_names(torch.nn.functional.poisson_nll_loss, 2),
    ).clone(device=device)


def bench_case(size: BenchSize, device: str) -> Case:
    """Mean reduction of float32 (8, 64) (overhead-bound) or (4096, 1024) (memory-bound)
    log-rates, Poisson-count targets, the gradient of the input only."""
    shape = (8, 64) if size == "small" else (4096, 1024)
    d = Draw(0)
    input = d.values(shape, f32).requires_grad_()
    target = _counts(d, shape, "counts").to(f32)
    return Case(
        loss="PoissonNLLLoss",
        seed=0,
        device=device,
        args=(input, target),
        kwargs={},
        ctor={},
        label=f"bench/{size}",
        arg_names=positional_names(torch.nn.functional.poisson_nll_loss, 2),
    ).clone(device=device)


SPECS = (LossSpec("PoissonNLLLoss", "poisson_nll_loss", poisson_case, bench_case),)
