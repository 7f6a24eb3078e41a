"""Case generator for KLDivLoss.

torch's semantics that the draws cover:

- ``kl_div`` is the composition ``xlogy(y, y) - y * x`` (``log_target=False``) or
  ``exp(y) * (y - x)`` (``log_target=True``), reduced by 'none', 'sum', 'mean' (which warns)
  or 'batchmean' (the sum divided by ``input.size(0)``, also after the legacy
  ``size_average``/``reduce`` arguments chose the reduction);
- target entries of exactly 0 contribute 0 to the loss, but their gradient is NaN (autograd's
  ``y / y`` of xlogy): tag ``ties``; negative targets give NaN (tag ``nonfinite``);
- input and target broadcast against each other without a warning; both get gradients;
- complex inputs raise first, then integer and bool ones; half and mixed float dtypes are fine;
- 0-d, empty, large, non-contiguous layouts, big values (exp of a log target overflows), nan/inf.
"""

from __future__ import annotations

from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
c64, i64, b8 = torch.complex64, torch.int64, torch.bool

# (input, target) dtypes: weight.
_DTYPES: dict[tuple[torch.dtype, torch.dtype], float] = {
    (f64, f64): 3.0,
    (f32, f32): 4.0,
    (f16, f16): 1.2,
    (bf16, bf16): 1.2,
    (f32, f64): 0.3,
    (f64, f32): 0.3,
    (f16, f32): 0.3,
    (bf16, f16): 0.2,
}
_INVALID_DTYPES = ((i64, f32), (f32, i64), (b8, f32), (f32, b8), (c64, c64), (f32, c64))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _log_probs(d: Draw, shape: tuple[int, ...]) -> torch.Tensor:
    """float64 log-probabilities along the last dim (plain normals for a 0-d shape)."""
    v = d.values(shape, f64)
    if not shape or shape[-1] == 0:
        return v
    return v - v.logsumexp(-1, keepdim=True)


def kl_div_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)
    if kwargs.get("reduction") == "batchmean":
        head = "batchmean" if head == "invalid" else head  # valid for kl_div
    elif head not in ("legacy", "invalid", "elementwise_mean") and d.chance(0.3):
        kwargs["reduction"] = head = "batchmean"
    elif head == "legacy" and d.chance(0.2):
        kwargs["reduction"] = "batchmean"  # divides after the legacy reduction
    if d.chance(0.7):
        kwargs["log_target"] = d.chance(0.5)
    log_target = bool(kwargs.get("log_target", False))

    in_dtype, t_dtype = d.choice(list(_DTYPES), weights=list(_DTYPES.values()))
    if d.chance(0.03):
        in_dtype, t_dtype = d.choice(_INVALID_DTYPES)
        tags.append("invalid")
    dtype_label = _dtype_name(in_dtype)
    if t_dtype != in_dtype:
        dtype_label += f"+{_dtype_name(t_dtype)}"
    if log_target:
        tags.append("logtarget")

    kind = d.choice(("nd", "0d", "empty", "large"), weights=(85, 5, 6, 4))
    in_shape = t_shape = d.shape(kind)
    if kind != "nd":
        tags.append(kind)
    if kind != "large" and d.chance(0.15):
        in_shape, t_shape = d.broadcast_pair(in_shape)
        if d.chance(0.5):
            in_shape, t_shape = t_shape, in_shape  # broadcasting goes both ways
        tags.append("bcast")
    if kind != "large" and d.chance(0.02):
        t_shape = (*t_shape[:-1], t_shape[-1] + 1) if t_shape else (2,)
        if in_shape and in_shape[-1] in (1, t_shape[-1]):
            in_shape = (*in_shape[:-1], t_shape[-1] + 1)
        in_shape = in_shape or (3,)
        tags.append("invalid")

    values = d.choice(("logprob", "normal", "big"), weights=(6, 3, 1))
    if values == "big":
        tags.append("big")
    input = _log_probs(d, in_shape) if values == "logprob" else d.values(in_shape, f64, values)
    # Targets: probabilities (some exactly 0: NaN target gradients), uniform, negative ones;
    # log targets: log-probabilities, normals, big ones (exp overflows).
    if log_target:
        tkind = d.choice(("logprob", "normal", "big"), weights=(6, 3, 1))
        if tkind == "logprob":
            target = _log_probs(d, t_shape)
        else:
            target = d.values(t_shape, f64, tkind)
            if tkind == "big":
                tags.append("big")
    else:
        tkind = d.choice(("probs", "uniform", "zeros", "negative"), weights=(6, 3, 2, 0.5))
        if tkind == "probs":
            target = _log_probs(d, t_shape).exp()
        else:
            target = d.values(t_shape, f64, "positive") / 2
        if tkind == "zeros":
            target = target * (torch.rand(t_shape, generator=d.gen) < 0.7)
            tags.append("ties")
        elif tkind == "negative":
            target = target - 0.3
            tags.append("nonfinite")
    input = input.to(in_dtype) if in_dtype.is_floating_point or in_dtype.is_complex else input
    if not in_dtype.is_floating_point and not in_dtype.is_complex:
        input = input.round().to(in_dtype) if in_dtype != b8 else input > 0
    if t_dtype.is_floating_point or t_dtype.is_complex:
        target = target.to(t_dtype)
    else:
        target = (target > 0.2) if t_dtype == b8 else target.round().to(t_dtype)
    if d.chance(0.05):
        for t in (input, target) if d.chance(0.3) else (d.choice((input, target)),):
            d.sprinkle_nonfinite(t)
        tags.append("nonfinite")
    input, in_layout = d.lay_out(input)
    target, t_layout = d.lay_out(target)

    wants = d.choice(("input", "both", "target", "none"), weights=(6, 2, 1, 0.7))
    chosen = {"input": (input,), "both": (input, target), "target": (target,), "none": ()}[wants]
    for t in chosen:
        if t.is_floating_point():
            t.requires_grad_()
    args = (input, target)
    label = [head, dtype_label, *tags]
    label += sorted({in_layout, t_layout} & {"transposed", "sliced", "expanded"})
    double_backward = (
        any(t.requires_grad for t in args)
        and all(t.dtype in (f32, f64) for t in args)
        and d.chance(0.25)
    )
    ctor_keys = ("size_average", "reduce", "reduction", "log_target")
    return Case(
        loss="KLDivLoss",
        seed=seed,
        device=device,
        args=args,
        kwargs=kwargs,
        ctor={k: v for k, v in kwargs.items() if k in ctor_keys},
        label="/".join(label),
        double_backward=double_backward,
        arg_names=positional_names(torch.nn.functional.kl_div, 2),
    ).clone(device=device)


def _bench(size: BenchSize, device: str) -> Case:
    """'batchmean' (the KL divergence) of float32 log-probabilities of (8, 64) (overhead-bound)
    or (4096, 1024) (memory-bound) against probabilities; the gradient of the input (a
    distillation target is fixed)."""
    shape = (8, 64) if size == "small" else (4096, 1024)
    d = Draw(0)
    x = _log_probs(d, shape).to(f32).requires_grad_()
    y = _log_probs(d, shape).exp().to(f32)
    return Case(
        loss="KLDivLoss",
        seed=0,
        device=device,
        args=(x, y),
        kwargs={"reduction": "batchmean"},
        ctor={"reduction": "batchmean"},
        label=f"bench/{size}",
        arg_names=positional_names(torch.nn.functional.kl_div, 2),
    ).clone(device=device)


SPECS = (LossSpec("KLDivLoss", "kl_div", kl_div_case, _bench),)
