"""Case generators for the soft margin losses: SoftMarginLoss and MultiLabelSoftMarginLoss.

torch's semantics that the draws cover:

- ``soft_margin_loss`` is torch's naive ``log1p(exp(-x * y))``: inf (and a nan gradient) where
  ``exp`` overflows, so ``big`` draws ``x * y`` of about ±1e4; the result has the input's dtype
  and shape, the target only broadcasts *to* the input (a larger target is an error), integer
  and bool targets are fine, an integer input, a complex target or a target that requires grad
  are errors, and a complex input gives a complex loss (no autograd);
- ``multilabel_soft_margin_loss`` is a composition: the elementwise loss, times ``weight``
  (anything that broadcasts: (C,), (N, C), (1,), 0-d, even a leading extra dim), summed over
  dim ``input.dim() - 1`` of the broadcast loss and divided by ``C = input.size(-1)``, then
  reduced. A 1-d input is one sample (the 'none' result is 0-d), a 0-d input raises IndexError,
  ``C == 0`` gives nan rows (tag ``emptyclass``). The target and the weight get gradients. An
  invalid reduction raises only after the loss is computed; a bool target raises at
  ``1 - target``;
- both: ±1 (multi-hot 0/1) targets and other real values, legacy ``size_average``/``reduce``,
  every dtype and mixed pairs, nan/inf, 0-d, empty, large, non-contiguous layouts.
"""

from __future__ import annotations

from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
c64, i64, i32, b8 = torch.complex64, torch.int64, torch.int32, torch.bool

# (input dtype, target dtype): weight.
_DTYPES: dict[tuple[torch.dtype, torch.dtype], float] = {
    (f64, f64): 3.0,
    (f32, f32): 4.0,
    (f16, f16): 1.5,
    (bf16, bf16): 1.5,
    (f32, f64): 0.4,
    (f64, f32): 0.3,
    (f16, f32): 0.2,
    (f32, f16): 0.2,
    (bf16, f16): 0.2,
    (f16, f64): 0.1,
    (f32, i64): 0.3,
    (f64, i32): 0.1,
}
_DOUBLE_BACKWARD_DTYPES = (f32, f64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _targets(d: Draw, shape: tuple[int, ...], dtype: torch.dtype, kind: str) -> torch.Tensor:
    """``kind``: "sign" (±1), "multihot" (0/1), "real" (standard normal), "unit" ([0, 1])."""
    if dtype == b8:
        return torch.rand(shape, generator=d.gen) < 0.5
    if kind == "real":
        return d.values(shape, dtype)
    if kind == "unit":
        return (torch.rand(shape, generator=d.gen, dtype=f64)).to(dtype)
    bits = torch.randint(0, 2, shape, generator=d.gen)
    if kind == "sign":
        bits = bits * 2 - 1
    return bits.to(dtype)


def _inputs(d: Draw, shape: tuple[int, ...], dtype: torch.dtype, big: bool) -> torch.Tensor:
    if big:
        # about ±1e4, with some moderate values between (the overflow threshold of exp is near)
        values = d.values(shape, f64, "big")
        if d.chance(0.5):
            values = values / d.choice((10.0, 100.0))
        return values.to(dtype)
    return d.values(shape, dtype)


def _target_shape(d: Draw, shape: tuple[int, ...], tags: list[str]) -> tuple[int, ...]:
    """A target shape that broadcasts to ``shape`` without growing it (0-d, a suffix, size-1
    dims), or rarely one that does not (tag ``invalid``)."""
    if not shape:
        return shape
    how = d.choice(("scalar", "suffix", "ones"))
    tags.append("bcast")
    if how == "scalar":
        return ()
    if how == "suffix" and len(shape) > 1:
        return shape[d.rng.randrange(1, len(shape)) :]
    ones = tuple(1 if d.chance(0.5) else n for n in shape)
    return ones if ones != shape else (1, *shape[1:])


def _finish(
    d: Draw,
    name: str,
    functional: str,
    seed: int,
    device: str,
    args: tuple[torch.Tensor, ...],
    kwargs: dict[str, Any],
    head: str,
    dtype_label: str,
    tags: list[str],
    layouts: set[str],
    module_kwargs: tuple[str, ...],
) -> Case:
    tags += sorted(layouts & {"transposed", "sliced", "expanded"})
    tensors = [*args, kwargs.get("weight")]
    double_backward = (
        any(t is not None and t.requires_grad for t in tensors)
        and all(t is None or t.dtype in _DOUBLE_BACKWARD_DTYPES for t in tensors)
        and d.chance(0.25)
    )
    ctor = {k: v for k, v in kwargs.items() if k in module_kwargs} if module_kwargs else None
    return Case(
        loss=name,
        seed=seed,
        device=device,
        args=args,
        kwargs=kwargs,
        ctor=ctor,
        label="/".join([head, dtype_label, *tags]),
        double_backward=double_backward,
        arg_names=positional_names(getattr(torch.nn.functional, functional), 2),
    ).clone(device=device)


# -- SoftMarginLoss ----------------------------------------------------------------------------


def soft_margin_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)

    in_dtype, t_dtype = d.choice(list(_DTYPES), weights=list(_DTYPES.values()))
    if d.chance(0.03):
        t_dtype = b8
    if d.chance(0.03):
        in_dtype, t_dtype = d.choice(((c64, f32), (c64, c64), (i64, f32), (f32, c64), (b8, f32)))
        if not in_dtype.is_complex:
            tags.append("invalid")
    dtype_label = _dtype_name(in_dtype)
    if t_dtype != in_dtype:
        dtype_label += f"+{_dtype_name(t_dtype)}"

    kind = d.choice(("nd", "0d", "empty", "large"), weights=(85, 5, 6, 4))
    in_shape = t_shape = d.shape(kind)
    if kind != "nd":
        tags.append(kind)
    if kind != "large" and d.chance(0.12):
        t_shape = _target_shape(d, in_shape, tags)
    if d.chance(0.02) and kind != "large":
        in_shape, t_shape = t_shape, (2, *in_shape)  # a target larger than the input: error
        tags.append("invalid")

    big = d.chance(0.1)
    if big:
        tags.append("big")
    targets = d.choice(("sign", "real"), weights=(4, 1))
    if targets == "real":
        tags.append("realtarget")
    if in_dtype.is_complex:
        input = torch.complex(d.values(in_shape, f64), d.values(in_shape, f64) * 0.5).to(in_dtype)
    elif in_dtype.is_floating_point:
        input = _inputs(d, in_shape, in_dtype, big)
    else:
        input = _targets(d, in_shape, in_dtype, "sign")
    target = (
        _targets(d, t_shape, t_dtype, targets)
        if not t_dtype.is_complex
        else (d.values(t_shape, t_dtype))
    )
    if d.chance(0.05):
        for t in (input, target) if d.chance(0.3) else (d.choice((input, target)),):
            d.sprinkle_nonfinite(t)
        tags.append("nonfinite")
    input, in_layout = d.lay_out(input)
    target, t_layout = d.lay_out(target)

    # (A bool target: torch's backward fails (it negates the target), so only forward here; a
    # target that requires grad is an error: tests/test_soft_margin.py has both.)
    if in_dtype.is_floating_point and t_dtype != b8 and d.chance(0.85):
        input.requires_grad_()
    elif in_dtype.is_complex and d.chance(0.1):
        input.requires_grad_()  # torch: no autograd for complex outputs
        tags.append("invalid")
    return _finish(
        d,
        "SoftMarginLoss",
        "soft_margin_loss",
        seed,
        device,
        (input, target),
        kwargs,
        head,
        dtype_label,
        tags,
        {in_layout, t_layout},
        ("size_average", "reduce", "reduction"),
    )


# -- MultiLabelSoftMarginLoss ------------------------------------------------------------------


def multilabel_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)

    in_dtype, t_dtype = d.choice(list(_DTYPES), weights=list(_DTYPES.values()))
    if d.chance(0.02):
        t_dtype = b8  # torch: 1 - target raises for bool
        tags.append("invalid")
    if d.chance(0.02):
        in_dtype = d.choice((i64, b8))  # torch: log_sigmoid not implemented
        tags.append("invalid")
    dtype_label = _dtype_name(in_dtype)
    if t_dtype != in_dtype:
        dtype_label += f"+{_dtype_name(t_dtype)}"

    kind = d.choice(("nd", "1d", "0d", "empty", "large"), weights=(75, 10, 4, 7, 4))
    if kind == "1d":
        in_shape = (d.choice((1, 2, 3, 5, 7, 11, 13, 17, 64)),)
    else:
        in_shape = d.shape(kind)
        if kind == "nd" and len(in_shape) > 3 and d.chance(0.6):
            in_shape = in_shape[:2]  # mostly (N, C)
    if kind == "empty" and in_shape[-1] == 0:
        kind = "emptyclass"  # C == 0: every row is 0/0 = nan
    if kind != "nd":
        tags.append(kind)
    t_shape = in_shape
    if kind not in ("large", "0d") and d.chance(0.1):
        in_shape, t_shape = d.broadcast_pair(in_shape)
        tags.append("bcast")

    big = d.chance(0.08)
    if big:
        tags.append("big")
    targets = d.choice(("multihot", "real", "unit"), weights=(6, 1, 1))
    if targets != "multihot":
        tags.append(f"{targets}target")
    if in_dtype.is_floating_point:
        input = _inputs(d, in_shape, in_dtype, big)
    else:
        input = _targets(d, in_shape, in_dtype, "multihot")
    target = _targets(d, t_shape, t_dtype, targets)
    if d.chance(0.05):
        for t in (input, target) if d.chance(0.3) else (d.choice((input, target)),):
            d.sprinkle_nonfinite(t)
        tags.append("nonfinite")
    input, in_layout = d.lay_out(input)
    target, t_layout = d.lay_out(target)
    layouts = {in_layout, t_layout}
    module_kwargs: tuple[str, ...] = ("weight", "size_average", "reduce", "reduction")
    if d.chance(0.35):
        full = torch.broadcast_shapes(in_shape, t_shape)
        c = full[-1] if full else 1
        w_shape = d.choice(
            ((c,), full, (1,), (), (2, *full), full[-2:] if len(full) > 1 else (c,)),
            weights=(5, 2, 1, 1, 0.3, 1),
        )
        if d.chance(0.04):
            w_shape = (c + 1,)  # does not broadcast
            tags.append("invalid")
        w_dtype = d.choice((in_dtype, f32, f64, i64), weights=(8, 1, 1, 0.5))
        if not in_dtype.is_floating_point:
            w_dtype = f32
        w_kind = "positive" if w_dtype.is_floating_point else "normal"
        weight = d.values(w_shape, w_dtype, w_kind)
        if w_dtype == i64:
            weight = weight.abs()
        weight, w_layout = d.lay_out(weight)
        layouts.add(w_layout)
        if w_layout == "expanded":
            module_kwargs = ()  # a module's buffers are written in place: not a stride-0 one
        kwargs["weight"] = weight
        tags.append("weight")
        if weight.is_floating_point() and in_dtype.is_floating_point and d.chance(0.3):
            weight.requires_grad_()

    wants = d.choice(("input", "target", "both", "none"), weights=(5, 1, 3, 1))
    for name, t in (("input", input), ("target", target)):
        if wants in (name, "both") and t.is_floating_point() and in_dtype.is_floating_point:
            t.requires_grad_()
    return _finish(
        d,
        "MultiLabelSoftMarginLoss",
        "multilabel_soft_margin_loss",
        seed,
        device,
        (input, target),
        kwargs,
        head,
        dtype_label,
        tags,
        layouts,
        module_kwargs,
    )


def _bench(name: str, functional: str, multihot: bool) -> Any:
    def bench_case(size: BenchSize, device: str) -> Case:
        """Mean reduction of float32 (8, 64) (overhead-bound) or (4096, 1024) (memory-bound),
        the gradient of the input only; ±1 targets (0/1 for the multi-label loss)."""
        shape = (8, 64) if size == "small" else (4096, 1024)
        d = Draw(0)
        input = d.values(shape, f32).requires_grad_()
        target = _targets(d, shape, f32, "multihot" if multihot else "sign")
        return Case(
            loss=name,
            seed=0,
            device=device,
            args=(input, target),
            kwargs={},
            ctor={},
            label=f"bench/{size}",
            arg_names=positional_names(getattr(torch.nn.functional, functional), 2),
        ).clone(device=device)

    return bench_case


SPECS = (
    LossSpec(
        "SoftMarginLoss",
        "soft_margin_loss",
        soft_margin_case,
        _bench("SoftMarginLoss", "soft_margin_loss", multihot=False),
    ),
    LossSpec(
        "MultiLabelSoftMarginLoss",
        "multilabel_soft_margin_loss",
        multilabel_case,
        _bench("MultiLabelSoftMarginLoss", "multilabel_soft_margin_loss", multihot=True),
    ),
)
