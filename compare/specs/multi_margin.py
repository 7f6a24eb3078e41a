"""Case generators for the multi-class hinge losses: MultiMarginLoss and MultiLabelMarginLoss.

torch's semantics that the draws cover (both are native CPU kernels):

- inputs (N, C), (C,) (one sample) and 0-d (one class), an empty batch (0, C) (with 'none'
  only: torch's 'mean' and 'sum' of an empty batch return uninitialised memory), large ones;
  an empty class dimension or a 3-d input is an error;
- ``multi_margin_loss``: an int64 class-index target of N elements (1-d, or 0-d for one
  sample); ``p`` of 1 or 2 (also written 2.0 or True; 3 is a ValueError), ``margin`` positive,
  zero or negative; a (C,) weight of the input's dtype (2-d: ValueError; wrong size or dtype:
  RuntimeError; one that requires grad is an error too, tested in tests/test_multi_margin.py
  since the generic tests read "requires grad" as "gets a gradient"); a target class outside
  [0, C) is a RuntimeError;
- ``multilabel_margin_loss``: an int64 target of the input's shape listing classes, padded with
  -1 (the first -1 ends the list, what follows is ignored but range-checked), duplicates
  counted twice; values below -1 or from C up are a RuntimeError;
- both: float32/float64 only (half and integer inputs raise NotImplementedError, an int32
  target RuntimeError); ties at the margin (scores on a grid of 0.5 with margins that are
  multiples of it: ``z == 0`` exactly, gradient 0 as torch's ``z > 0``), ±1e4, nan and inf
  (a NaN ``z`` is skipped by torch's kernels), non-contiguous layouts, legacy arguments.

torch has no double backward for either loss: each spec names a ``reference``, the loss as a
composition of plain torch ops, whose float64 second-order gradients the harness compares ours
with (``compare/parity.py``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
i64, i32 = torch.int64, torch.int32

_SIZES = (1, 2, 3, 5, 7, 11, 13, 17)
_LARGE = ((317, 331), (613, 541), (2048, 64))
_DOUBLE_BACKWARD_DTYPES = (f32, f64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _reduction_name(kwargs: dict[str, Any]) -> str:
    """The reduction a call asks for ('elementwise_mean' is torch's old name of 'mean')."""
    if "size_average" in kwargs or "reduce" in kwargs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.nn._reduction.legacy_get_string(
                kwargs.get("size_average"), kwargs.get("reduce"), emit_warning=False
            )
    reduction = kwargs.get("reduction", "mean")
    return "mean" if reduction == "elementwise_mean" else reduction


def _shape(d: Draw, tags: list[str]) -> tuple[int, ...]:
    kind = d.choice(("2d", "1d", "0d", "empty", "large"), weights=(70, 12, 5, 6, 4))
    if kind == "2d":
        return (d.choice(_SIZES), d.choice((*_SIZES, 64)))
    if kind == "1d":
        tags.append("1d")
        return (d.choice((*_SIZES, 64)),)
    if kind == "0d":
        tags.append("0d")
        return ()
    tags.append(kind)
    if kind == "empty":
        return (0, d.choice(_SIZES))
    return d.choice(_LARGE)


def _values(d: Draw, shape: tuple[int, ...], dtype: torch.dtype, tags: list[str]) -> torch.Tensor:
    kind = d.choice(("normal", "grid", "big"), weights=(8, 2, 1))
    if kind == "grid":
        tags.append("ties")
        values = d.values(shape, f64, "grid:0.5")
    elif kind == "big":
        tags.append("big")
        values = d.values(shape, f64, "big")
    else:
        values = d.values(shape, f64)
    values = values.to(dtype) if dtype.is_floating_point else values.round().to(dtype)
    if dtype.is_floating_point and d.chance(0.05):
        d.sprinkle_nonfinite(values)
        tags.append("nonfinite")
    return values


def _input_dtype(d: Draw, tags: list[str]) -> torch.dtype:
    dtype = d.choice((f64, f32), weights=(4, 5))
    if d.chance(0.03):
        dtype = d.choice((f16, bf16, i64))
        tags.append("invalid")
    return dtype


def _finish(
    d: Draw,
    name: str,
    functional: str,
    seed: int,
    device: str,
    args: tuple[torch.Tensor, ...],
    kwargs: dict[str, Any],
    label: list[str],
    ctor: dict[str, Any] | None,
) -> Case:
    tensors = [*args, kwargs.get("weight")]
    input = args[0]
    double_backward = (
        input.requires_grad
        and all(
            t is None or not t.is_floating_point() or t.dtype in _DOUBLE_BACKWARD_DTYPES
            for t in tensors
        )
        and d.chance(0.25)
    )
    return Case(
        loss=name,
        seed=seed,
        device=device,
        args=args,
        kwargs=kwargs,
        ctor=ctor,
        label="/".join(label),
        double_backward=double_backward,
        arg_names=positional_names(getattr(torch.nn.functional, functional), 2),
    ).clone(device=device)


def _none_if_empty(kwargs: dict[str, Any], tags: list[str], head: str) -> str:
    """An empty batch draws reduction 'none' (torch's kernels return uninitialised memory for
    an empty 'mean' or 'sum'): the reduction label to use."""
    if "empty" in tags and _reduction_name(kwargs) != "none":
        kwargs.pop("size_average", None)
        kwargs.pop("reduce", None)
        kwargs["reduction"] = "none"
        return "none"
    return head


# -- MultiMarginLoss ---------------------------------------------------------------------------


def multi_margin_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)
    dtype = _input_dtype(d, tags)
    shape = _shape(d, tags)
    head = _none_if_empty(kwargs, tags, head)
    n = shape[0] if len(shape) == 2 else 1
    c = shape[-1] if shape else 1

    p = d.choice((1, 2, None), weights=(3, 4, 3))
    if p is not None:
        if p == 1 and d.chance(0.1):
            p = True  # torch compares with ==: True passes (2.0 too: tests/test_multi_margin.py)
        kwargs["p"] = p
        tags.append(f"p{int(p)}")
    if d.chance(0.01):
        kwargs["p"] = 3
        tags.append("invalid")
    if d.chance(0.6):
        margin = d.choice((0.5, 1.0, 2.0, 0.0, -0.5, round(d.uniform(0.1, 3.0), 3)))
        kwargs["margin"] = margin
        if margin == 0.0:
            tags.append("zeromargin")

    input = _values(d, shape, dtype, tags)
    t_values = torch.randint(0, c, (n,), generator=d.gen)
    target_kind = "1d" if len(shape) == 2 else d.choice(("0d", "1d"))
    target = t_values if target_kind == "1d" else t_values.reshape(())
    if d.chance(0.03) and target.numel():
        target.view(-1)[d.rng.randrange(target.numel())] = d.choice((c, -1, c + 3))
        tags.append("invalid")
    if d.chance(0.02):
        target = target.to(i32)
        tags.append("invalid")
    if d.chance(0.01):
        target = target.reshape(-1, 1) if target.numel() else target
        tags.append("invalid")

    module_ok = True
    if d.chance(0.35):
        w_dtype = dtype if dtype.is_floating_point else f32
        w_shape: tuple[int, ...] = (c,)
        if d.chance(0.04):
            w_shape = d.choice(((c + 1,), (1, c), ()))
            tags.append("invalid")
        if d.chance(0.03):
            w_dtype = f64 if w_dtype == f32 else f32
            tags.append("invalid")
        weight = d.values(w_shape, w_dtype, "positive") if w_dtype.is_floating_point else None
        assert weight is not None
        weight, w_layout = d.lay_out(weight)
        if w_layout == "expanded":
            module_ok = False  # a module's buffer is written in place: not a stride-0 one
        kwargs["weight"] = weight
        tags.append("weight")

    input, layout = d.lay_out(input)
    target, t_layout = d.lay_out(target)
    tags += sorted({layout, t_layout} & {"transposed", "sliced", "expanded"})
    if dtype.is_floating_point and d.chance(0.85):
        input.requires_grad_()
    if "weight" in kwargs and kwargs["weight"].dim() != 1:
        module_ok = False  # torch's module raises its own ValueError message at construction
    ctor_keys = ("p", "margin", "weight", "size_average", "reduce", "reduction")
    ctor = {k: v for k, v in kwargs.items() if k in ctor_keys} if module_ok else None
    label = [head, _dtype_name(dtype), *tags]
    return _finish(
        d,
        "MultiMarginLoss",
        "multi_margin_loss",
        seed,
        device,
        (input, target),
        kwargs,
        label,
        ctor,
    )


def multi_margin_reference(
    input: torch.Tensor,
    target: torch.Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """multi_margin_loss as plain torch ops (autograd differentiates it twice)."""
    x = input if input.dim() == 2 else input.reshape(1, -1)
    y = target.reshape(-1, 1)
    z = margin - x.gather(1, y) + x
    others = torch.ones_like(x, dtype=torch.bool).scatter(1, y, False)
    h = torch.where(others & (z > 0), z, torch.zeros_like(z))
    per = (h * h if p == 2 else h).sum(1) / x.shape[1]
    if weight is not None:
        per = per * weight[y.reshape(-1)]
    red = _reduction_name(
        {"size_average": size_average, "reduce": reduce, "reduction": reduction}
        if size_average is not None or reduce is not None
        else {"reduction": reduction}
    )
    if red == "none":
        return per.reshape(target.shape)
    return per.mean() if red == "mean" else per.sum()


# -- MultiLabelMarginLoss ----------------------------------------------------------------------


def _label_lists(d: Draw, n: int, c: int, tags: list[str]) -> torch.Tensor:
    """(n, c) rows of class indices, each list ended by -1 (unless full), duplicates possible,
    and sometimes junk after the -1 (ignored by torch, though range-checked)."""
    t = torch.full((n, c), -1, dtype=i64)
    many = d.chance(0.2)
    for i in range(n):
        k = d.rng.randint(0, c) if many else min(c, d.choice((0, 1, 1, 2, 3, 4)))
        if k:
            if d.chance(0.15):
                t[i, :k] = torch.randint(0, c, (k,), generator=d.gen)  # duplicates likely
            else:
                t[i, :k] = torch.randperm(c, generator=d.gen)[:k]
        if k < c - 1 and d.chance(0.2):
            t[i, k + 1 :] = torch.randint(-1, c, (c - k - 1,), generator=d.gen)
            if "junk" not in tags:
                tags.append("junk")
    return t


def multilabel_margin_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)
    dtype = _input_dtype(d, tags)
    shape = _shape(d, tags)
    head = _none_if_empty(kwargs, tags, head)
    n = shape[0] if len(shape) == 2 else 1
    c = shape[-1] if shape else 1

    input = _values(d, shape, dtype, tags)
    if "large" in tags:
        target = torch.full(shape, -1, dtype=i64)
        for i in range(n):
            k = d.rng.randint(0, 6)
            target[i, :k] = torch.randperm(c, generator=d.gen)[:k]
    else:
        target = _label_lists(d, n, c, tags).reshape(shape)
        if not shape and d.chance(0.5):
            target = target.reshape(1)
    if d.chance(0.03) and target.numel():
        target.view(-1)[d.rng.randrange(target.numel())] = d.choice((c, -2, c + 5))
        tags.append("invalid")
    if d.chance(0.02):
        target = target.to(i32)
        tags.append("invalid")
    if d.chance(0.01) and len(shape) == 2:
        target = target[:, :-1] if c > 1 else target.reshape(-1)
        tags.append("invalid")

    input, layout = d.lay_out(input)
    target, t_layout = d.lay_out(target)
    tags += sorted({layout, t_layout} & {"transposed", "sliced", "expanded"})
    if dtype.is_floating_point and d.chance(0.85):
        input.requires_grad_()
    ctor = {k: v for k, v in kwargs.items() if k in ("size_average", "reduce", "reduction")}
    label = [head, _dtype_name(dtype), *tags]
    return _finish(
        d,
        "MultiLabelMarginLoss",
        "multilabel_margin_loss",
        seed,
        device,
        (input, target),
        kwargs,
        label,
        ctor,
    )


def multilabel_margin_reference(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """multilabel_margin_loss as plain torch ops over every (row, slot, class)."""
    x = input if input.dim() == 2 else input.reshape(1, -1)
    t = target if target.dim() == 2 else target.reshape(1, -1)
    valid = (t < 0).cumsum(1) == 0
    safe = t.clamp(min=0)
    listed = torch.zeros(t.shape, dtype=torch.long).scatter_add(1, safe, valid.long()) > 0
    z = (1 - x.gather(1, safe)).unsqueeze(2) + x.unsqueeze(1)
    active = valid.unsqueeze(2) & ~listed.unsqueeze(1) & (z > 0)
    per = torch.where(active, z, torch.zeros_like(z)).sum((1, 2)) / x.shape[1]
    red = _reduction_name(
        {"size_average": size_average, "reduce": reduce, "reduction": reduction}
        if size_average is not None or reduce is not None
        else {"reduction": reduction}
    )
    if red == "none":
        return per if target.dim() == 2 else per.sum()
    return per.mean() if red == "mean" else per.sum()


# -- bench -------------------------------------------------------------------------------------


def multi_margin_bench(size: BenchSize, device: str) -> Case:
    """Mean reduction, p = 1, no weight, float32 (8, 64) or (4096, 1000); the input's gradient."""
    shape = (8, 64) if size == "small" else (4096, 1000)
    d = Draw(0)
    input = d.values(shape, f32).requires_grad_()
    target = torch.randint(0, shape[1], (shape[0],), generator=d.gen)
    return Case(
        loss="MultiMarginLoss",
        seed=0,
        device=device,
        args=(input, target),
        kwargs={},
        ctor={},
        label=f"bench/{size}",
        arg_names=positional_names(torch.nn.functional.multi_margin_loss, 2),
    ).clone(device=device)


def multilabel_margin_bench(size: BenchSize, device: str) -> Case:
    """Mean reduction, float32 (8, 64) or (2048, 1000), each row listing 1 to 8 distinct
    classes then -1 (torch's serial loop costs rows x listed x C); the input's gradient."""
    shape = (8, 64) if size == "small" else (2048, 1000)
    d = Draw(0)
    input = d.values(shape, f32).requires_grad_()
    target = torch.full(shape, -1, dtype=i64)
    for i in range(shape[0]):
        k = d.rng.randint(1, 8)
        target[i, :k] = torch.randperm(shape[1], generator=d.gen)[:k]
    return Case(
        loss="MultiLabelMarginLoss",
        seed=0,
        device=device,
        args=(input, target),
        kwargs={},
        ctor={},
        label=f"bench/{size}",
        arg_names=positional_names(torch.nn.functional.multilabel_margin_loss, 2),
    ).clone(device=device)


SPECS = (
    LossSpec(
        "MultiMarginLoss",
        "multi_margin_loss",
        multi_margin_case,
        multi_margin_bench,
        reference=multi_margin_reference,
    ),
    LossSpec(
        "MultiLabelMarginLoss",
        "multilabel_margin_loss",
        multilabel_margin_case,
        multilabel_margin_bench,
        reference=multilabel_margin_reference,
    ),
)
