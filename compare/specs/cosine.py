"""Case generator for CosineEmbeddingLoss.

torch's semantics that the draws cover (``cosine_embedding_loss`` is an ATen composition:
row dot products over dim ``target.dim()``, ``+ 1e-12`` on each squared norm, the cosine, then
``1 - cos`` where the target is 1 and ``max(0, cos - margin)`` where it is -1):

- (N, D) inputs with an (N,) target, and unbatched (D,) inputs with a 0-d target; the inputs
  broadcast against each other ((1, D), (N, 1)) and the target against the cosines ((1,));
  wrong dimensions, mismatched sizes and a complex input are errors (tag ``invalid``);
- targets ±1, and other values (0, 2, 0.5: no loss, no gradient; tag ``othertarget``), integer,
  float and bool targets;
- ``margin`` left to its default 0 or drawn in [-1, 1], outside it (tag ``outside`` is not
  used: any margin is valid), as an int or a float;
- zero rows (the epsilon's cosine 0, a tie with margin 0 and target -1), rows parallel or
  antiparallel to their partner (cos = ±1, ties with margin ±1) and grid values with exact
  zero dot products: all tagged ``ties``; values of about ±1e4 (``big``); nan/inf
  (``nonfinite``);
- every dtype torch accepts: float64, float32, float16, bfloat16, mixed pairs, integer and bool
  inputs (promoted to float32); empty batches and D = 0; large (memory-bound) shapes;
  non-contiguous layouts; legacy ``size_average``/``reduce``.
"""

from __future__ import annotations

from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
c64, i64, i32, b8 = torch.complex64, torch.int64, torch.int32, torch.bool

# (input1 dtype, input2 dtype): weight.
_DTYPES: dict[tuple[torch.dtype, torch.dtype], float] = {
    (f64, f64): 3.0,
    (f32, f32): 4.0,
    (f16, f16): 1.2,
    (bf16, bf16): 1.2,
    (f32, f64): 0.3,
    (f64, f32): 0.3,
    (f16, f32): 0.2,
    (bf16, f16): 0.2,
    (i64, f32): 0.2,
    (f64, i32): 0.1,
    (i64, i64): 0.1,
    (b8, f32): 0.05,
}
_DOUBLE_BACKWARD_DTYPES = (f32, f64)
_ROWS = (1, 2, 3, 5, 7, 8, 13, 17)
_COLS = (1, 2, 3, 5, 7, 11, 17, 64)
_LARGE = ((317, 331), (613, 541), (41, 7919), (20_011, 9))
_NAMES = positional_names(torch.nn.functional.cosine_embedding_loss, 3)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _targets(d: Draw, shape: tuple[int, ...], dtype: torch.dtype, other: bool) -> torch.Tensor:
    """±1 targets; with ``other``, some 0, 2 and 0.5 among them (no loss there)."""
    if dtype == b8:
        return torch.rand(shape, generator=d.gen) < 0.5
    t = (torch.randint(0, 2, shape, generator=d.gen) * 2 - 1).to(f64)
    if other:
        odd = torch.rand(shape, generator=d.gen) < 0.4
        values = torch.tensor((0.0, 2.0, 0.5), dtype=f64)
        pick = values[torch.randint(0, 3, shape, generator=d.gen)]
        if not dtype.is_floating_point:
            pick = pick.round()
        t = torch.where(odd, pick, t)
    return t.to(dtype)


def _values(d: Draw, shape: tuple[int, ...], dtype: torch.dtype, kind: str) -> torch.Tensor:
    if not dtype.is_floating_point and not dtype.is_complex:
        if dtype == b8:
            return torch.rand(shape, generator=d.gen) < 0.5
        return d.values(shape, dtype, "big" if kind == "big" else "normal")
    if dtype.is_complex:
        return d.values(shape, dtype)
    if kind == "big":
        v = d.values(shape, f64, "big")
        return (v / d.choice((1.0, 10.0, 100.0))).to(dtype)
    if kind == "grid":
        return d.values(shape, dtype, "grid:0.5")
    return d.values(shape, dtype)


def _ties(d: Draw, x1: torch.Tensor, x2: torch.Tensor, tags: list[str]) -> None:
    """In place: zero rows, and rows parallel or antiparallel to their partner (exact cosines
    0 and ±1, the ties of margins 0 and ±1)."""
    if x1.dim() == 0 or x1.numel() == 0 or x2.numel() == 0:
        return
    a, b = x1, x2
    rows = 1 if a.dim() == 1 else a.shape[0]
    for _ in range(d.rng.randint(1, 3)):
        how = d.choice(("zero1", "zero2", "both", "parallel", "anti"))
        r = d.rng.randrange(rows)
        ra = a if a.dim() == 1 else a[r % a.shape[0]]
        rb = b if b.dim() == 1 else b[r % b.shape[0]]
        if how in ("zero1", "both"):
            ra.zero_()
        if how in ("zero2", "both"):
            rb.zero_()
        if how in ("parallel", "anti") and ra.shape == rb.shape:
            scale = d.choice((1.0, 2.0, 0.5)) * (1 if how == "parallel" else -1)
            rb.copy_(ra * scale)
    tags.append("ties")


def cosine_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.1)

    if d.chance(0.6):
        margin = d.choice(
            (0.0, 0.5, -0.5, round(d.uniform(-1, 1), 3), 1.0, -1.0, 1.5, -2.0, 1),
            weights=(2, 2, 2, 3, 1, 1, 0.5, 0.5, 0.5),
        )
        kwargs["margin"] = margin

    d1, d2 = d.choice(list(_DTYPES), weights=list(_DTYPES.values()))
    if d.chance(0.02):
        d1, d2 = d.choice(((c64, c64), (f32, c64)))
        tags.append("invalid")
    dtype_label = _dtype_name(d1) + ("" if d2 == d1 else f"+{_dtype_name(d2)}")
    t_dtype = d.choice((d1 if d1.is_floating_point else f32, f32, i64, b8), weights=(8, 1, 1, 0.3))

    kind = d.choice(("batch", "unbatched", "empty", "large"), weights=(78, 12, 6, 4))
    if kind == "large":
        s1 = d.choice(_LARGE)
    elif kind == "unbatched":
        s1 = (d.choice(_COLS),)
    elif kind == "empty":
        s1 = d.choice(((0, d.choice(_COLS)), (d.choice(_ROWS), 0), (0,)))
    else:
        s1 = (d.choice(_ROWS), d.choice(_COLS))
    if kind == "empty" and (len(s1) == 1 or s1[0] != 0):
        kind = "emptyrow"  # D = 0: every cosine is 0 (the loss is not empty)
    if kind != "batch":
        tags.append(kind)
    s2 = s1
    t_shape: tuple[int, ...] = s1[:1] if len(s1) == 2 else ()
    if kind in ("batch", "unbatched") and d.chance(0.12):
        # broadcasting: a (1, D) or (N, 1) partner, or a (1,) target
        how = d.choice(("row", "col", "target", "first"))
        if len(s1) == 1:
            s2 = (1,)
        elif how == "row":
            s2 = (1, s1[1])
        elif how == "col":
            s2 = (s1[0], 1)
        elif how == "target":
            t_shape = (1,)
        else:
            s1 = (1, s1[1])
        tags.append("bcast")
    if d.chance(0.04):
        how = d.choice(("target2d", "dims", "rows", "cols"))
        if how == "target2d":
            t_shape = (*t_shape, 2)
        elif how == "dims":
            s2 = (2, *s2) if len(s2) < 2 else s2[1:]
        elif how == "rows" and len(s1) == 2:
            t_shape = (s1[0] + 1,)
        else:
            s2 = (*s2[:-1], s2[-1] + 1)
        tags.append("invalid")

    values = d.choice(("normal", "big", "grid"), weights=(8, 1, 2))
    if values != "normal":
        tags.append("big" if values == "big" else "ties")
    x1 = _values(d, s1, d1, values)
    x2 = _values(d, s2, d2, values)
    if d.chance(0.15) and x1.is_floating_point() and x2.is_floating_point():
        _ties(d, x1, x2, tags)
    other = d.chance(0.15)
    if other:
        tags.append("othertarget")
    target = _targets(d, t_shape, t_dtype, other)
    if d.chance(0.05):
        for t in (x1, x2) if d.chance(0.3) else (d.choice((x1, x2)),):
            d.sprinkle_nonfinite(t)
        tags.append("nonfinite")
    # Most calls contiguous (the blocked path of mylosses), some of any layout.
    x1, l1 = d.lay_out(x1, None if d.chance(0.4) else "contiguous")
    x2, l2 = d.lay_out(x2, None if d.chance(0.4) else "contiguous")
    target, lt = d.lay_out(target, None if d.chance(0.15) else "contiguous")
    tags += sorted({l1, l2, lt} & {"transposed", "sliced", "expanded"})

    wants = d.choice(("input1", "input2", "both", "none"), weights=(2, 2, 5, 1))
    for name, t in (("input1", x1), ("input2", x2)):
        if wants in (name, "both") and (t.is_floating_point() or t.is_complex()):
            t.requires_grad_()
    tensors = (x1, x2)
    double_backward = (
        any(t.requires_grad for t in tensors)
        and all(t.dtype in _DOUBLE_BACKWARD_DTYPES for t in tensors)
        and d.chance(0.25)
    )
    ctor = {
        k: v for k, v in kwargs.items() if k in ("margin", "size_average", "reduce", "reduction")
    }
    return Case(
        loss="CosineEmbeddingLoss",
        seed=seed,
        device=device,
        args=(x1, x2, target),
        kwargs=kwargs,
        ctor=ctor,
        label="/".join([head, dtype_label, *tags]),
        double_backward=double_backward,
        arg_names=_NAMES,
    ).clone(device=device)


def bench_case(size: BenchSize, device: str) -> Case:
    """Mean reduction of float32 (8, 64) (overhead-bound) or (4096, 1024) (memory-bound) row
    pairs with ±1 targets and the default margin, the gradients of both inputs."""
    shape = (8, 64) if size == "small" else (4096, 1024)
    d = Draw(0)
    x1 = d.values(shape, f32).requires_grad_()
    x2 = d.values(shape, f32).requires_grad_()
    target = _targets(d, shape[:1], f32, False)
    return Case(
        loss="CosineEmbeddingLoss",
        seed=0,
        device=device,
        args=(x1, x2, target),
        kwargs={},
        ctor={},
        label=f"bench/{size}",
        arg_names=_NAMES,
    ).clone(device=device)


SPECS = (LossSpec("CosineEmbeddingLoss", "cosine_embedding_loss", cosine_case, bench_case),)
