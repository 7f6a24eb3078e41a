"""Case generators for the triplet losses: TripletMarginLoss and TripletMarginWithDistanceLoss.

torch's semantics that the draws cover:

- ``triplet_margin_loss``: the distance ``||x - y + eps||_p`` over the last dimension for
  p = 2 (mostly), 1, 3, 1.5, 0.5, -1, inf, -inf and 0 (no gradient at all); eps default, 0
  (with ``ties``: rows where anchor == positive, a zero distance, and grid values where
  ``d(a, n) == d(p, n)`` and the hinge's argument is exactly 0) and other values; swap;
  margins (a non-positive one is a ValueError); legacy ``size_average``/``reduce``;
- shapes: (N, D) mostly, (D,), 0-d, 3-d, an empty batch or an empty last dimension (an error
  for p < 0 and p = ±inf), size-1 dimensions broadcast, a different number of dimensions
  (a RuntimeError) and sizes that do not broadcast (``invalid``);
- dtypes: float64, float32, float16, bfloat16, mixed float pairs, integer inputs (a float32
  loss, or promoted with a float partner), complex inputs (a real loss, complex gradients),
  bool (an error); nan/inf, values of about ±1e4 (``big``), non-contiguous layouts;
- ``triplet_margin_with_distance_loss``: ``distance_function`` None (torch's pairwise distance
  with p = 2 and eps = 1e-6), or one of the module-level callables below (cosine distance
  written with plain ops, L-inf, pairwise L1, squared Euclidean), the same object for
  mylosses and torch, in the functional and in the module;
  margin (> 0, else ValueError), swap, 'none'/'mean'/'sum' (anything else is a ValueError).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
c64, c128, i64, i32, u8, b8 = (
    torch.complex64,
    torch.complex128,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
)

# (anchor, positive, negative) dtypes: weight.
_DTYPES: dict[tuple[torch.dtype, ...], float] = {
    (f64, f64, f64): 3.0,
    (f32, f32, f32): 4.0,
    (f16, f16, f16): 1.0,
    (bf16, bf16, bf16): 1.0,
    (f32, f64, f32): 0.3,
    (f64, f32, f32): 0.2,
    (f16, f32, f16): 0.2,
    (f16, bf16, f16): 0.1,
    (i64, i64, i64): 0.3,
    (i32, f32, i64): 0.2,
    (u8, u8, u8): 0.1,
    (i64, f64, f64): 0.1,
    (c64, c64, c64): 0.2,
    (c128, c128, c128): 0.2,
    (c64, f32, f32): 0.1,
}
_DOUBLE_BACKWARD_DTYPES = (f32, f64)

# p: weight (2 is the default and the common case).
_NORMS: dict[float, float] = {
    2.0: 8.0,
    1.0: 2.0,
    3.0: 1.0,
    1.5: 1.0,
    0.5: 1.0,
    -1.0: 0.7,
    math.inf: 1.0,
    -math.inf: 0.5,
    0.0: 0.5,
    2.5: 0.5,
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- custom distance functions (module level: picklable, the same object on both sides) ------


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos(x, y) over the last dimension, written with plain ops."""
    dot = (x * y).sum(-1)
    norms = (x * x).sum(-1).sqrt() * (y * y).sum(-1).sqrt()
    return 1 - dot / norms.clamp_min(1e-8)


def linf_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_i |x_i - y_i| over the last dimension."""
    return (x - y).abs().amax(-1)


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x - y) ** 2).sum(-1)


def pairwise_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torch's own pairwise distance with p = 1, as a user would pass it."""
    return torch.pairwise_distance(x, y, p=1.0)


# (A ``PairwiseDistance`` module would do too, but the generic module tests deep-copy the
# constructor arguments and compare them with ==: tests/test_triplet.py covers it.)
_DISTANCES: dict[str, Any] = {
    "cosine": cosine_distance,
    "linf": linf_distance,
    "sqeuclid": squared_euclidean,
    "pairwise_l1": pairwise_l1,
}


# -- shared drawing ----------------------------------------------------------------------------


def _values(d: Draw, shape: tuple[int, ...], dtype: torch.dtype, kind: str) -> torch.Tensor:
    if kind == "big":
        values = d.values(shape, f64, "big")
        if d.chance(0.5):
            values = values / 100.0
        if dtype.is_complex:
            return torch.complex(values, values.flip(-1) if values.dim() else values).to(dtype)
        if not dtype.is_floating_point:
            return values.round().to(dtype) if dtype != u8 else values.abs().remainder(256).to(u8)
        return values.to(dtype)
    if kind == "grid":
        return d.values(shape, dtype if dtype.is_floating_point else f64, "grid:0.5").to(dtype)
    if dtype == u8:
        return d.values(shape, i64, "positive").to(u8)
    return d.values(shape, dtype)


def _inputs(
    d: Draw,
    tags: list[str],
    dtypes: tuple[torch.dtype, ...],
    *,
    eps_zero: bool,
) -> tuple[list[torch.Tensor], set[str]]:
    """Anchor, positive and negative (before layouts and requires_grad), with the shape tags."""
    kind = d.choice(("2d", "1d", "0d", "3d", "empty", "large"), weights=(70, 8, 4, 8, 6, 3))
    if kind == "2d":
        shape: tuple[int, ...] = (d.choice((1, 2, 3, 5, 8, 13)), d.choice((1, 2, 3, 4, 7, 16, 33)))
    elif kind == "1d":
        shape = (d.choice((1, 2, 3, 5, 16)),)
    elif kind == "0d":
        shape = ()
    elif kind == "3d":
        shape = (d.choice((1, 2, 3)), d.choice((1, 2, 4)), d.choice((1, 3, 5)))
    elif kind == "empty":
        shape = d.choice(((0, 5), (3, 0), (0, 0), (0,), (2, 0, 3)))
    else:
        shape = d.choice(((317, 331), (2048, 67), (53, 2011)))
    if kind == "empty" and math.prod(shape[:-1]) > 0:
        kind = "emptydim"  # an empty last dimension: every distance is 0, the loss is not empty
    if kind not in ("2d", "1d", "3d"):
        tags.append(kind)
    shapes = [shape, shape, shape]
    if shape and kind != "large" and d.chance(0.15):
        # size-1 dimensions broadcast (mostly the positive alone, as the tests look for)
        which = d.choice((1, 0, 2, 3), weights=(3, 1, 1, 1))
        targets = [which] if which < 3 else [1, 2]
        for i in targets:
            small = tuple(1 if d.chance(0.5) else s for s in shape)
            shapes[i] = small if small != shape else (1, *shape[1:])
        tags.append("bcast")
    if d.chance(0.02) and kind != "large":
        # a different number of dimensions, or sizes that do not broadcast: errors
        i = d.choice((0, 1, 2))
        shapes[i] = d.choice(
            ((*shapes[i], 2), (*shapes[i][:-1], shapes[i][-1] + 2) if shapes[i] else (3,))
        )
        tags.append("invalid")
    values = d.choice(("normal", "big", "grid"), weights=(80, 8, 12))
    if values != "normal":
        tags.append("big" if values == "big" else "ties")
    tensors = [_values(d, s, t, values) for s, t in zip(shapes, dtypes, strict=True)]
    if eps_zero and values == "normal" and shape and shape[0] > 1 and d.chance(0.5):
        # zero distances: some rows of the positive (or negative) equal the anchor's
        i = d.choice((1, 2))
        if tensors[i].shape == tensors[0].shape:
            rows = torch.rand(shape[0], generator=d.gen) < 0.5
            tensors[i][rows] = tensors[0][rows].to(tensors[i].dtype)
            tags.append("ties")
    if d.chance(0.04):
        for t in tensors if d.chance(0.3) else [d.choice(tensors)]:
            d.sprinkle_nonfinite(t)
        tags.append("nonfinite")
    layouts = set()
    out = []
    for t in tensors:
        t, layout = d.lay_out(t)
        layouts.add(layout)
        out.append(t)
    return out, layouts


def _require_grads(d: Draw, tensors: list[torch.Tensor]) -> None:
    wants = d.choice(("all", "anchor", "one", "two", "none"), weights=(6, 1, 2, 1, 0.5))
    differentiable = [t.is_floating_point() or t.is_complex() for t in tensors]
    if wants == "all":
        chosen = [0, 1, 2]
    elif wants == "anchor":
        chosen = [0]
    elif wants == "one":
        chosen = [d.choice((0, 1, 2))]
    elif wants == "two":
        chosen = [0, 1, 2]
        chosen.remove(d.choice((0, 1, 2)))
    else:
        chosen = []
    for i in chosen:
        if differentiable[i]:
            tensors[i].requires_grad_()


def _case(
    d: Draw,
    name: str,
    functional: str,
    seed: int,
    device: str,
    tensors: list[torch.Tensor],
    kwargs: dict[str, Any],
    ctor: dict[str, Any] | None,
    label: list[str],
    layouts: set[str],
) -> Case:
    label += sorted(layouts & {"transposed", "sliced", "expanded"})
    double_backward = (
        any(t.requires_grad for t in tensors)
        and all(t.dtype in _DOUBLE_BACKWARD_DTYPES for t in tensors)
        and d.chance(0.25)
    )
    return Case(
        loss=name,
        seed=seed,
        device=device,
        args=tuple(tensors),
        kwargs=kwargs,
        ctor=ctor,
        label="/".join(label),
        double_backward=double_backward,
        arg_names=positional_names(getattr(torch.nn.functional, functional), 3),
    ).clone(device=device)


def _draw_dtypes(d: Draw, tags: list[str]) -> tuple[tuple[torch.dtype, ...], str]:
    dtypes = d.choice(list(_DTYPES), weights=list(_DTYPES.values()))
    if d.chance(0.02):
        dtypes = d.choice(((b8, b8, b8), (f32, b8, f32), (f32, f32, b8)))
        tags.append("invalid")
    names = [_dtype_name(t) for t in dtypes]
    label = names[0] if len(set(names)) == 1 else "+".join(names)
    return dtypes, label


# -- TripletMarginLoss -------------------------------------------------------------------------


def triplet_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.08)
    dtypes, dtype_label = _draw_dtypes(d, tags)
    if d.chance(0.4):
        kwargs["margin"] = d.choice((0.5, 1.0, 2.0, 0.1, d.uniform(0.05, 3.0)))
    if d.chance(0.02):
        kwargs["margin"] = d.choice((0.0, -1.0))
        tags.append("invalid")
    pnorm = d.choice(list(_NORMS), weights=list(_NORMS.values()))
    if pnorm == 0.0 and dtypes[0].is_complex:
        # torch's complex p = 0 norm warns ("Casting complex values to real ...") once per
        # process, from C++: whichever side runs first warns, so no comparison can agree.
        pnorm = 1.0
    if pnorm != 2.0 or d.chance(0.3):
        kwargs["p"] = pnorm
    eps_zero = d.chance(0.2)
    if eps_zero:
        kwargs["eps"] = 0.0
    elif d.chance(0.15):
        kwargs["eps"] = d.choice((1e-3, 0.1, -1e-6, 1e-8))
    if d.chance(0.35):
        kwargs["swap"] = True
    elif d.chance(0.1):
        kwargs["swap"] = False
    tensors, layouts = _inputs(d, tags, dtypes, eps_zero=eps_zero)
    _require_grads(d, tensors)
    label = [head, dtype_label, f"p={pnorm:g}", *(["swap"] if kwargs.get("swap") else []), *tags]
    return _case(
        d,
        "TripletMarginLoss",
        "triplet_margin_loss",
        seed,
        device,
        tensors,
        kwargs,
        dict(kwargs),
        label,
        layouts,
    )


# -- TripletMarginWithDistanceLoss -------------------------------------------------------------


def with_distance_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.0)
    if head == "elementwise_mean":
        tags.append("invalid")  # a ValueError here, unlike the other losses
    dtypes, dtype_label = _draw_dtypes(d, tags)
    distance = d.choice(("none", *_DISTANCES), weights=(4, 2, 1.5, 1, 1))
    if distance != "none":
        kwargs["distance_function"] = _DISTANCES[distance]
    elif d.chance(0.2):
        kwargs["distance_function"] = None
    if d.chance(0.4):
        kwargs["margin"] = d.choice((0.5, 1.0, 2.0, 0.1, d.uniform(0.05, 3.0)))
    if d.chance(0.02):
        kwargs["margin"] = d.choice((0.0, -1.0))
        tags.append("invalid")
    if d.chance(0.35):
        kwargs["swap"] = True
    tensors, layouts = _inputs(d, tags, dtypes, eps_zero=False)
    _require_grads(d, tensors)
    label = [
        head,
        dtype_label,
        f"dist={distance}",
        *(["swap"] if kwargs.get("swap") else []),
        *tags,
    ]
    return _case(
        d,
        "TripletMarginWithDistanceLoss",
        "triplet_margin_with_distance_loss",
        seed,
        device,
        tensors,
        kwargs,
        dict(kwargs),
        label,
        layouts,
    )


# -- bench -------------------------------------------------------------------------------------


def _bench(name: str, functional: str) -> Any:
    def bench_case(size: BenchSize, device: str) -> Case:
        """Mean reduction of float32 (8, 64) (overhead-bound) or (4096, 1024) (memory-bound),
        defaults (p = 2, no swap), all three inputs requiring grad."""
        shape = (8, 64) if size == "small" else (4096, 1024)
        d = Draw(0)
        tensors = [d.values(shape, f32).requires_grad_() for _ in range(3)]
        return Case(
            loss=name,
            seed=0,
            device=device,
            args=tuple(tensors),
            kwargs={},
            ctor={},
            label=f"bench/{size}",
            arg_names=positional_names(getattr(torch.nn.functional, functional), 3),
        ).clone(device=device)

    return bench_case


SPECS = (
    LossSpec(
        "TripletMarginLoss",
        "triplet_margin_loss",
        triplet_case,
        _bench("TripletMarginLoss", "triplet_margin_loss"),
    ),
    LossSpec(
        "TripletMarginWithDistanceLoss",
        "triplet_margin_with_distance_loss",
        with_distance_case,
        _bench("TripletMarginWithDistanceLoss", "triplet_margin_with_distance_loss"),
    ),
)
