"""Case generators for the ranking hinges: MarginRankingLoss and HingeEmbeddingLoss.

torch's semantics that the draws cover:

- ``margin_ranking_loss`` is the composition ``(-y * (x1 - x2) + margin).clamp_min(0)``: the
  three tensors must have the same number of dimensions (else RuntimeError) and then broadcast
  against each other through size-1 dims; the label gets a gradient; integer scores and labels
  promote to float32 (by the margin), bool ones fail at the subtraction or negation, complex
  ones at the clamp; ``margin`` may be any real number (or a one-element tensor), else
  TypeError. Exact ties ``margin - y (x1 - x2) == 0`` (where clamp_min's gradient passes) come
  from grid values (tag ``ties``);
- ``hinge_embedding_loss`` is ``where(y != 1, (margin - x).clamp_min(0), 0) + where(y != -1,
  x, 0)``: labels other than ±1 (0, 2, real values, NaN) take both terms; the result has the
  input's dtype; the label broadcasts both ways, may be any dtype (bool, integer, complex) and
  gets no gradient; the margin is converted to the input's dtype (truncated for integer inputs,
  an overflow error for float16), integer inputs give integer results and 'mean' of them
  raises; ties ``x == margin`` come from grid values, margins zero, negative and infinite too;
- both: legacy ``size_average``/``reduce``, invalid reductions, every dtype and mixed ones,
  nan/inf, 0-d, empty, large, non-contiguous layouts.
"""

from __future__ import annotations

from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
c64, i64, i32, b8 = torch.complex64, torch.int64, torch.int32, torch.bool

_DOUBLE_BACKWARD_DTYPES = (f32, f64)
_DYADIC = (0.25, 0.5, 1.0, 2.0)

# (input1, input2, target) dtypes: weight.
_MRL_DTYPES: dict[tuple[torch.dtype, torch.dtype, torch.dtype], float] = {
    (f64, f64, f64): 3.0,
    (f32, f32, f32): 4.0,
    (f16, f16, f16): 1.2,
    (bf16, bf16, bf16): 1.2,
    (f32, f32, f64): 0.3,
    (f64, f32, f32): 0.3,
    (f16, bf16, f32): 0.2,
    (f16, f16, f32): 0.2,
    (f32, f32, i64): 0.3,
    (f16, f16, i64): 0.2,
    (i64, i64, i64): 0.3,
    (i32, i64, f32): 0.2,
}
_MRL_INVALID_DTYPES = (
    (b8, b8, f32),
    (f32, b8, f32),
    (f32, f32, b8),
    (c64, c64, c64),
    (f32, c64, f32),
)

# (input, target) dtypes: weight.
_HINGE_DTYPES: dict[tuple[torch.dtype, torch.dtype], float] = {
    (f64, f64): 3.0,
    (f32, f32): 4.0,
    (f16, f16): 1.2,
    (bf16, bf16): 1.2,
    (f32, f64): 0.3,
    (f16, f64): 0.2,
    (f64, f32): 0.3,
    (f32, i64): 0.4,
    (f64, b8): 0.2,
    (f32, c64): 0.1,
    (i64, i64): 0.3,
    (i32, f32): 0.2,
}
_HINGE_INVALID_DTYPES = ((b8, f32), (c64, f32))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _margin(d: Draw, kwargs: dict[str, Any], tags: list[str], values: str, default: bool) -> float:
    """A margin written into ``kwargs`` (or left to torch's default): dyadic (so that grid values
    tie with it), any real number, zero, negative, an int, or rarely an invalid one. Returns the
    margin in effect (for the grid's step)."""
    how = d.choice(
        ("default", "dyadic", "any", "zero", "neg", "int", "invalid"), (3, 3, 3, 1, 1, 0.4, 0.3)
    )
    if values == "grid" and how in ("any", "int", "invalid"):
        how = "dyadic"
    if how == "default":
        return 1.0 if default else 0.0
    if how == "invalid":
        kwargs["margin"] = "1"  # TypeError: must be float, not str
        tags.append("invalid")
        return 1.0
    margin: float = {
        "dyadic": d.choice(_DYADIC),
        "any": round(d.uniform(0.05, 3.0), 3),
        "zero": 0.0,
        "neg": d.choice((-0.5, -1.0, -0.125)),
    }.get(how, 0.0)
    if how == "int":
        kwargs["margin"] = d.choice((1, 2))
        return float(kwargs["margin"])
    kwargs["margin"] = margin
    return margin


def _values(
    d: Draw, shape: tuple[int, ...], dtype: torch.dtype, values: str, q: float
) -> torch.Tensor:
    if values == "grid":
        return d.values(shape, dtype, f"grid:{q}")
    if values == "big" and dtype.is_floating_point:
        v = d.values(shape, f64, "big")
        return (v / d.choice((1.0, 100.0))).to(dtype)
    return d.values(shape, dtype, "big" if values == "big" else "normal")


def _labels(d: Draw, shape: tuple[int, ...], dtype: torch.dtype, kind: str) -> torch.Tensor:
    """``kind``: "sign" (±1), "mixed" (-1, 0, 1, 2: other labels take both hinge terms),
    "real" (standard normal)."""
    if dtype == b8:
        return torch.rand(shape, generator=d.gen) < 0.5
    if kind == "real" and (dtype.is_floating_point or dtype.is_complex):
        return d.values(shape, dtype)
    if kind == "mixed":
        ints = torch.tensor((-1, 0, 1, 2))[torch.randint(0, 4, shape, generator=d.gen)]
    else:
        ints = torch.randint(0, 2, shape, generator=d.gen) * 2 - 1
    return ints.to(dtype)


def _finish(
    d: Draw,
    name: str,
    functional: str,
    seed: int,
    device: str,
    args: tuple[torch.Tensor, ...],
    kwargs: dict[str, Any],
    label: list[str],
    layouts: set[str],
) -> Case:
    label += sorted(layouts & {"transposed", "sliced", "expanded"})
    double_backward = (
        any(t.requires_grad for t in args)
        and all(t.dtype in _DOUBLE_BACKWARD_DTYPES or not t.is_floating_point() for t in args)
        and d.chance(0.25)
    )
    ctor_keys = ("margin", "size_average", "reduce", "reduction")
    return Case(
        loss=name,
        seed=seed,
        device=device,
        args=args,
        kwargs=kwargs,
        ctor={k: v for k, v in kwargs.items() if k in ctor_keys},
        label="/".join(label),
        double_backward=double_backward,
        arg_names=positional_names(getattr(torch.nn.functional, functional), len(args)),
    ).clone(device=device)


def _means(kwargs: dict[str, Any]) -> bool:
    """Whether the call's reduction in effect is 'mean' (legacy arguments resolved)."""
    if "size_average" in kwargs or "reduce" in kwargs:
        return kwargs.get("reduce", True) is not False and kwargs.get("size_average") is not False
    return kwargs.get("reduction", "mean") in ("mean", "elementwise_mean")


def _shrunk(d: Draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` with some dims set to 1 (the same number of dims: broadcasts back)."""
    return tuple(1 if d.chance(0.4) else n for n in shape)


# -- MarginRankingLoss -------------------------------------------------------------------------


def margin_ranking_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)

    values = d.choice(("normal", "big", "grid"), weights=(7, 1, 2))
    margin = _margin(d, kwargs, tags, values, default=False)
    q = (margin / 2 if margin else 0.25) if values == "grid" else 0.0
    if values != "normal":
        tags.append("ties" if values == "grid" else "big")

    dtypes = d.choice(list(_MRL_DTYPES), weights=list(_MRL_DTYPES.values()))
    if d.chance(0.03):
        dtypes = d.choice(_MRL_INVALID_DTYPES)
        tags.append("invalid")
    names = [_dtype_name(t) for t in dtypes]
    dtype_label = names[0] if len(set(names)) == 1 else "+".join(names)

    kind = d.choice(("nd", "1d", "0d", "empty", "large"), weights=(60, 25, 5, 6, 4))
    shape = (d.choice((1, 2, 3, 5, 8, 17, 64)),) if kind == "1d" else d.shape(kind)
    if kind not in ("nd", "1d"):
        tags.append(kind)
    shapes = [shape, shape, shape]
    if kind not in ("large", "0d") and d.chance(0.15):
        while shapes[0] == shapes[1] == shapes[2] and any(n > 1 for n in shape):
            shapes = [_shrunk(d, shape) for _ in range(3)]
        tags.append("bcast")
    if d.chance(0.03):
        # torch: all three must have the same number of dims (or a size mismatch)
        i = d.rng.randrange(3)
        shapes[i] = d.choice(((), (*shapes[i], 1), (3, 4) if shapes[i] != (3,) else (4,)))
        tags.append("invalid")

    label_kind = d.choice(("sign", "real", "grid"), weights=(6, 1, 1))
    x1, x2 = (_values(d, s, t, values, q) for s, t in zip(shapes[:2], dtypes[:2], strict=True))
    if dtypes[2].is_floating_point and label_kind == "real":
        y = d.values(shapes[2], dtypes[2])
        tags.append("realtarget")
    elif dtypes[2].is_floating_point and label_kind == "grid":
        y = d.values(shapes[2], dtypes[2], "grid:0.5")  # multiples of 1/2, zeros too
        tags.append("realtarget")
    else:
        y = _labels(d, shapes[2], dtypes[2], "sign")
    if d.chance(0.05):
        for t in (x1, x2, y) if d.chance(0.3) else (d.choice((x1, x2, y)),):
            d.sprinkle_nonfinite(t)
        tags.append("nonfinite")
    laid = [d.lay_out(t) for t in (x1, x2, y)]
    x1, x2, y = (t for t, _ in laid)

    wants = d.choice(
        ("scores", "all", "x1", "target", "x2", "none"), weights=(5, 2, 1, 0.5, 0.5, 1)
    )
    chosen = {
        "scores": (x1, x2),
        "all": (x1, x2, y),
        "x1": (x1,),
        "x2": (x2,),
        "target": (y,),
        "none": (),
    }[wants]
    for t in chosen:
        if t.is_floating_point():
            t.requires_grad_()
    return _finish(
        d,
        "MarginRankingLoss",
        "margin_ranking_loss",
        seed,
        device,
        (x1, x2, y),
        kwargs,
        [head, dtype_label, *tags],
        {layout for _, layout in laid},
    )


# -- HingeEmbeddingLoss ------------------------------------------------------------------------


def hinge_embedding_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)

    values = d.choice(("normal", "distance", "big", "grid"), weights=(5, 3, 1, 2))
    margin = _margin(d, kwargs, tags, values, default=True)
    if d.chance(0.03):
        kwargs["margin"] = margin = d.choice((float("inf"), 1e5))  # 1e5: float16 overflows
        tags.append("nonfinite" if margin == float("inf") else "big")
    q = (abs(margin) / 2 if margin else 0.25) if values == "grid" else 0.0
    if values in ("grid", "big"):
        tags.append("ties" if values == "grid" else "big")

    in_dtype, t_dtype = d.choice(list(_HINGE_DTYPES), weights=list(_HINGE_DTYPES.values()))
    if d.chance(0.03):
        in_dtype, t_dtype = d.choice(_HINGE_INVALID_DTYPES)
        tags.append("invalid")
    if not (in_dtype.is_floating_point or in_dtype.is_complex) and _means(kwargs):
        tags.append("invalid")  # torch.mean of integers raises ('sum' gives an integer)
    dtype_label = _dtype_name(in_dtype)
    if t_dtype != in_dtype:
        dtype_label += f"+{_dtype_name(t_dtype)}"

    kind = d.choice(("nd", "0d", "empty", "large"), weights=(85, 5, 6, 4))
    in_shape = t_shape = d.shape(kind)
    if kind != "nd":
        tags.append(kind)
    if kind != "large" and d.chance(0.15):
        in_shape, t_shape = d.broadcast_pair(in_shape)
        if d.chance(0.5):
            in_shape, t_shape = t_shape, in_shape  # the label broadcasts both ways
        tags.append("bcast")
    if kind != "large" and d.chance(0.02):
        t_shape = (*t_shape[:-1], t_shape[-1] + 1) if t_shape else (2,)
        if in_shape and in_shape[-1] in (1, t_shape[-1]):
            in_shape = (*in_shape[:-1], t_shape[-1] + 1)
        in_shape = in_shape or (3,)
        tags.append("invalid")

    if values == "distance" and in_dtype.is_floating_point:
        input = d.values(in_shape, in_dtype, "positive")
    else:
        input = _values(d, in_shape, in_dtype, "normal" if values == "distance" else values, q)
    label_kind = d.choice(("sign", "mixed", "real"), weights=(6, 2, 1))
    if label_kind != "sign":
        tags.append(f"{label_kind}target")
    target = _labels(d, t_shape, t_dtype, label_kind)
    if d.chance(0.05):
        for t in (input, target) if d.chance(0.3) else (d.choice((input, target)),):
            d.sprinkle_nonfinite(t)
        tags.append("nonfinite")
    input, in_layout = d.lay_out(input)
    target, t_layout = d.lay_out(target)
    # (The label gets no gradient from torch: tests/test_ranking.py checks that one that
    # requires grad is accepted; here it would make gradcheck differentiate a selection.)
    if input.is_floating_point() and d.chance(0.85):
        input.requires_grad_()
    return _finish(
        d,
        "HingeEmbeddingLoss",
        "hinge_embedding_loss",
        seed,
        device,
        (input, target),
        kwargs,
        [head, dtype_label, *tags],
        {in_layout, t_layout},
    )


# -- bench -------------------------------------------------------------------------------------


def _bench_mrl(size: BenchSize, device: str) -> Case:
    """Mean reduction of float32 scores of 8 (overhead-bound) or 2**22 (memory-bound), ±1
    labels; the gradients of both scores (the label's is rarely wanted)."""
    n = 8 if size == "small" else 1 << 22
    d = Draw(0)
    x1 = d.values((n,), f32).requires_grad_()
    x2 = d.values((n,), f32).requires_grad_()
    y = _labels(d, (n,), f32, "sign")
    return Case(
        loss="MarginRankingLoss",
        seed=0,
        device=device,
        args=(x1, x2, y),
        kwargs={},
        ctor={},
        label=f"bench/{size}",
        arg_names=positional_names(torch.nn.functional.margin_ranking_loss, 3),
    ).clone(device=device)


def _bench_hinge(size: BenchSize, device: str) -> Case:
    """Mean reduction of float32 distances (non-negative) of 8 or 2**22 elements, ±1 labels;
    the gradient of the input."""
    n = 8 if size == "small" else 1 << 22
    d = Draw(0)
    x = d.values((n,), f32, "positive").requires_grad_()
    y = _labels(d, (n,), f32, "sign")
    return Case(
        loss="HingeEmbeddingLoss",
        seed=0,
        device=device,
        args=(x, y),
        kwargs={},
        ctor={},
        label=f"bench/{size}",
        arg_names=positional_names(torch.nn.functional.hinge_embedding_loss, 2),
    ).clone(device=device)


SPECS = (
    LossSpec("MarginRankingLoss", "margin_ranking_loss", margin_ranking_case, _bench_mrl),
    LossSpec("HingeEmbeddingLoss", "hinge_embedding_loss", hinge_embedding_case, _bench_hinge),
)
