"""Case generator for GaussianNLLLoss.

torch's semantics that the draws cover:

- ``gaussian_nll_loss(input, target, var)`` is the composition ``0.5 * (log(v) + (input -
  target) ** 2 / v)`` (``+ 0.5 log 2 pi`` with ``full``), ``v`` a clone of ``var`` clamped in
  place at ``eps`` under no_grad: the gradient w.r.t. ``var`` passes the clamp straight
  through. Variances at or below ``eps`` (zeros, tiny values, a large ``eps``) are the clamp's
  kink: tag ``ties`` (finite differences across it do not match the gradient torch defines);
- ``var`` shapes: the input's, one dimension fewer, a size-1 last dimension or one other size-1
  dimension (homoscedastic), a 0-d var with a 1-d input, a Python float (no gradient); wrong
  sizes, negative entries, a Python int, integer and complex var tensors are errors (tag
  ``invalid``); the target broadcasts against the input (tag ``bcast``);
- reductions 'none', 'sum', 'mean' (no legacy arguments; other names are ValueError), every
  floating dtype and mixed ones, integer inputs and targets (float32 results), nan/inf, 0-d,
  empty, large, non-contiguous layouts; gradients w.r.t. input, target and var.
"""

from __future__ import annotations

from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
c64, i64, i32, b8 = torch.complex64, torch.int64, torch.int32, torch.bool

# (input, target, var) dtypes: weight.
_DTYPES: dict[tuple[torch.dtype, torch.dtype, torch.dtype], float] = {
    (f64, f64, f64): 3.0,
    (f32, f32, f32): 4.0,
    (f16, f16, f16): 1.2,
    (bf16, bf16, bf16): 1.2,
    (f32, f32, f64): 0.3,
    (f64, f32, f32): 0.3,
    (f32, f64, f32): 0.2,
    (f16, f16, f32): 0.2,
    (bf16, f32, bf16): 0.2,
    (f32, i64, f32): 0.2,
    (i64, i64, f32): 0.2,
    (i32, f32, f64): 0.1,
}
_INVALID_VAR_DTYPES = (i64, b8, c64)
_DOUBLE_BACKWARD_DTYPES = (f32, f64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _var_shape(d: Draw, shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "short":
        return shape[:-1]
    if kind == "last1":
        return (*shape[:-1], 1)
    if kind == "one1":
        dims = [i for i, n in enumerate(shape) if n != 1]
        i = d.choice(dims)
        return tuple(1 if j == i else n for j, n in enumerate(shape))
    return shape


def _bad_var_shape(d: Draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A var shape torch rejects ("var is of incorrect size")."""
    if not shape:
        return (2,)
    options = [(*shape, 2), (*shape[:-1], shape[-1] + 1)]
    if len(shape) >= 2 and sum(1 for n in shape if n != 1) >= 2:
        options.append(tuple(1 for _ in shape))  # two mismatched dims
    if len(shape) >= 2:
        options.append(shape[1:] if shape[1:] != shape[:-1] else (*shape[1:], 7))
    return d.choice(options)


def gaussian_nll_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.0)
    if head not in ("none", "mean", "sum"):
        tags.append("invalid")
    if d.chance(0.4):
        kwargs["full"] = d.chance(0.5)
    eps = 1e-6
    big_eps = False
    if d.chance(0.3):
        # below the drawn variances (>= 0.1), or near/above them (the clamp's kink: ``ties``)
        eps = d.choice((1e-3, 1e-8, 0.05, 0.0, 0.1, 0.5, 1))
        kwargs["eps"] = eps
        big_eps = eps >= 0.1

    dtypes = d.choice(list(_DTYPES), weights=list(_DTYPES.values()))
    in_dtype, t_dtype, v_dtype = dtypes
    names = [_dtype_name(t) for t in dtypes]
    dtype_label = names[0] if len(set(names)) == 1 else "+".join(names)

    kind = d.choice(("nd", "0d", "empty", "large"), weights=(85, 5, 6, 4))
    shape = d.shape(kind)
    if kind != "nd":
        tags.append(kind)
    t_shape = shape
    if kind == "nd" and d.chance(0.08):
        t_shape = d.choice((shape[1:], (1, *shape), tuple(1 for _ in shape)))
        tags.append("bcast")

    var_kinds = ["same", "float", "short", "last1"]
    weights = [6.0, 1.5, 1.5, 1.5]
    if len(shape) >= 2 and any(n != 1 for n in shape[:-1]):
        var_kinds.append("one1")
        weights.append(1.0)
    var_kind = d.choice(var_kinds, weights)
    if not shape and var_kind in ("last1", "short"):
        var_kind = "same"
    if var_kind != "same":
        tags.append(f"var{var_kind}")
    invalid_var = d.chance(0.04)

    values = d.choice(("normal", "big", "grid"), weights=(8, 1, 1))
    if values == "big":
        tags.append("big")
    x = d.values(shape, in_dtype, "big" if values == "big" else "normal")
    t = d.values(t_shape, t_dtype, "big" if values == "big" else "normal")
    if values == "grid":
        x = d.values(shape, in_dtype, "grid:0.5")
        t = d.values(t_shape, t_dtype, "grid:0.5")  # exact zeros of input - target

    clamped = d.chance(0.12) or big_eps
    if big_eps:
        tags.append("ties")
    var: Any
    if var_kind == "float":
        var = d.choice((0.5, 1.0, 2.0, 0.0, 1e-8, 3.7)) if clamped else d.choice((0.5, 1.0, 3.7))
        if var <= eps and not big_eps:
            tags.append("ties")
        if invalid_var:
            var = d.choice((-1.0, 1))  # negative; a Python int (torch.any raises TypeError)
            tags.append("invalid")
    else:
        v_shape = _var_shape(d, shape, var_kind)
        if invalid_var and d.chance(0.5):
            v_shape = _bad_var_shape(d, shape)
        scale = 1e4 if values == "big" and d.chance(0.5) else 1.0
        var = ((d.values(v_shape, f64, "positive") + 0.1) * scale).to(v_dtype)
        if clamped and var.numel():
            flat = var.view(-1)
            for _ in range(d.rng.randint(1, 3)):
                flat[d.rng.randrange(flat.numel())] = d.choice((0.0, 1e-9, eps / 2, eps))
        if bool((var.double() <= eps).any()) and not big_eps:
            tags.append("ties")
        if invalid_var:
            tags.append("invalid")
            if v_shape == _var_shape(d, shape, var_kind):
                how = d.choice(("negative", "dtype"))
                if how == "negative" and var.numel():
                    var.view(-1)[d.rng.randrange(var.numel())] = -0.5
                else:
                    var = var.to(d.choice(_INVALID_VAR_DTYPES))
        if not var.is_floating_point() and not var.is_complex():
            tags.append("invalid")
    if d.chance(0.05):
        chosen = [x, t] + ([var] if isinstance(var, torch.Tensor) else [])
        for z in chosen if d.chance(0.3) else (d.choice(chosen),):
            d.sprinkle_nonfinite(z)
        tags.append("nonfinite")

    x, lx = d.lay_out(x)
    t, lt = d.lay_out(t)
    layouts = {lx, lt}
    if isinstance(var, torch.Tensor):
        var, lv = d.lay_out(var)
        layouts.add(lv)

    wants = d.choice(("xv", "x", "all", "v", "t", "none"), weights=(5, 3, 2, 1, 0.5, 0.7))
    chosen_t: list[torch.Tensor] = []
    if "x" in wants or wants == "all":
        chosen_t.append(x)
    if "v" in wants or wants == "all":
        chosen_t += [var] if isinstance(var, torch.Tensor) else []
    if wants in ("t", "all"):
        chosen_t.append(t)
    for z in chosen_t:
        if z.is_floating_point():
            z.requires_grad_()

    args = (x, t, var)
    label = [head, dtype_label, *tags, *sorted(layouts & {"transposed", "sliced", "expanded"})]
    double_backward = (
        any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        and all(
            a.dtype in _DOUBLE_BACKWARD_DTYPES or not a.is_floating_point()
            for a in args
            if isinstance(a, torch.Tensor)
        )
        and d.chance(0.25)
    )
    ctor_keys = ("full", "eps", "reduction")
    return Case(
        loss="GaussianNLLLoss",
        seed=seed,
        device=device,
        args=args,
        kwargs=kwargs,
        ctor={k: v for k, v in kwargs.items() if k in ctor_keys},
        label="/".join(label),
        double_backward=double_backward,
        arg_names=positional_names(torch.nn.functional.gaussian_nll_loss, 3),
    ).clone(device=device)


def _bench(size: BenchSize, device: str) -> Case:
    """Mean reduction of a float32 (8, 64) or (4096, 1024) prediction with a variance of the
    same shape (heteroscedastic); the gradients of the input and the variance (a network
    predicting both), not of the target."""
    shape = (8, 64) if size == "small" else (4096, 1024)
    d = Draw(0)
    x = d.values(shape, f32).requires_grad_()
    t = d.values(shape, f32)
    var = (d.values(shape, f32, "positive") + 0.1).requires_grad_()
    return Case(
        loss="GaussianNLLLoss",
        seed=0,
        device=device,
        args=(x, t, var),
        kwargs={},
        ctor={},
        label=f"bench/{size}",
        arg_names=positional_names(torch.nn.functional.gaussian_nll_loss, 3),
    ).clone(device=device)


SPECS = (LossSpec("GaussianNLLLoss", "gaussian_nll_loss", gaussian_nll_case, _bench),)
