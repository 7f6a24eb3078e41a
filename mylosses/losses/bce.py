r"""Binary cross entropy on probabilities: ``BCELoss`` / ``binary_cross_entropy``.

Forward, for a probability :math:`x \in [0, 1]`, a target :math:`y \in [0, 1]` and an optional
weight :math:`w` (broadcast to the input):

.. math::

    l_n = -w_n \left[ y_n \max(\log x_n, -100) + (1 - y_n) \max(\log(1 - x_n), -100) \right],

reduced by 'none', 'sum' or 'mean' (divided by the number of elements, whatever the weights).
The clamp at -100 is torch's: without it a confident wrong prediction (:math:`x = 0`,
:math:`y = 1`) would give :math:`\infty` and ``nan`` gradients downstream; with it the loss is
at most 100 per element. :math:`\log(1 - x)` is computed as ``log1p(-x)``, exact for tiny
:math:`x`.

Backward, with :math:`g_n` the upstream gradient times the reduction's factor:

.. math::

    \frac{\partial \ell}{\partial x_n} = g_n w_n \frac{x_n - y_n}{\max(x_n (1 - x_n), 10^{-12})},
    \qquad
    \frac{\partial \ell}{\partial y_n} = g_n w_n \left[\log(1 - x_n) - \log x_n\right]
    = -g_n w_n \operatorname{logit}(x_n).

Derivation: :math:`\frac{d}{dx}[-y \log x - (1 - y)\log(1 - x)] = -\frac{y}{x} + \frac{1 - y}{1 - x}
= \frac{x - y}{x (1 - x)}`; the target enters linearly. Surprise: **the backward is not the
derivative of the clamped forward.** torch ignores the clamp there: the input's gradient only
keeps the denominator away from 0 (so :math:`x = 0` or :math:`1` gives huge but finite
gradients such as :math:`-10^{12} y`), and the target's gradient is the unclamped
:math:`-\operatorname{logit}(x)`, :math:`\pm\infty` at :math:`x \in \{0, 1\}`. We match it.

The second derivatives are torch's formulas too (``binary_cross_entropy_double_backward`` in
torch's autograd): w.r.t. the input :math:`g w \frac{x^2 - 2xy + y}{(x + \epsilon)^2 (1 - x +
\epsilon)^2}`, w.r.t. the target :math:`-\frac{g w}{\max(x(1 - x), \epsilon)}`, with
:math:`\epsilon = 10^{-12}`; a small Function (``_InputGrad``) carries them, as they are not
quite the derivative of the clamped first derivative.

More of torch's semantics: the input *and the target* must lie in [0, 1] (a RuntimeError
naming which, NaN included); input and target must have the same shape (a ValueError) and
dtype; the weight broadcasts to the input but may not grow it, and may not require grad (torch
has no derivative for it).

Speed: torch's CPU kernel is a scalar loop (a ``log`` and a ``log1p`` per element, with the
range checks), and its backward is another. Here forward walks the input in cache-sized blocks
(``mylosses/_binary.py``) with vectorised ops, computing the loss, the range checks and the
input's gradient at once; backward only scales the gradient (``mylosses/_function.py``), and
not at all for an upstream gradient of exactly 1 (``loss.backward()``). A reduced, unweighted
input of up to a block takes a short path (``_small``), where the fixed cost of each op (a few
µs) is the time: the loss is one ``lerp`` of the two logs, whose sum also serves as the input's
range check (a NaN log makes it NaN), and the clamp of :math:`\log(1 - x)` is only applied
when that sum is not finite (it matters only at :math:`x = 1`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _binary, _function, _reduction, _validation
from mylosses._pointwise import compute_dtype
from mylosses._reduction import MEAN, NONE

_cast = _function.cast

__all__ = ["BCELoss", "binary_cross_entropy"]

_EPS = 1e-12  # the double backward's (a double in torch's autograd formulas)
# The first backward's: torch's CPU kernel holds 1e-12 as a float, so float64 gradients at
# x = 0 or 1 are divided by float32(1e-12), not by 1e-12.
_GRAD_EPS = 9.999999960041972e-13
_NATIVE = (torch.float32, torch.float64)
# The Function's ``mode`` bits, as in bce_with_logits.py; SMALL: forward takes ``_small``.
EAGER, INPUT, TARGET, SMALL = 1, 2, 4, 8


def _flat(t: Tensor) -> Tensor:
    return t.view(-1)


# -- the fused kernel (eager) ------------------------------------------------------------------


def _fused_block(
    x: Tensor,
    t: Tensor,
    c: float | Tensor,
    out: Tensor | None,
    g: Tensor | None,
    tg: Tensor | None,
    s: Tensor,
    s2: Tensor,
    s3: Tensor | None,
    ranges: list[Tensor] | None,
) -> Tensor | None:
    """One block: the loss (summed, or elementwise into ``out``) and the gradients into ``g``
    and ``tg``, times ``c`` (the reduction's factor, times the weight when it is a tensor).
    ``ranges`` collects each block's extremes of x and y for the range checks."""
    weighted = isinstance(c, Tensor)
    if ranges is not None and x.numel():
        ranges += [*torch.aminmax(x), *torch.aminmax(t)]
    lx = torch.log(x, out=s)
    l1x = torch.neg(x, out=s2).log1p_()
    if tg is not None:
        torch.sub(l1x, lx, out=tg)  # -logit(x), unclamped as in torch
        if weighted or c != 1.0:
            tg.mul_(c)
    lx.clamp_(min=-100)
    l1x.clamp_(min=-100)
    total = None
    if out is not None or weighted:
        e = out if out is not None else s3
        assert e is not None
        torch.sub(t, 1, out=e).mul_(l1x).addcmul_(t, lx, value=-1)  # (y - 1) l1x - y lx
        if weighted:
            e.mul_(c)
        if out is None:
            total = e.sum()
    else:
        assert s3 is not None
        u = torch.sub(t, 1, out=s3)  # y - 1 (every term below has one sign: no cancellation)
        total = torch.dot(_flat(u), _flat(l1x)) - torch.dot(_flat(t), _flat(lx))
        if c != 1.0:
            total = total * c
    if g is not None:
        den = torch.neg(x, out=s).add_(1).mul_(x).clamp_(min=_GRAD_EPS)  # x (1 - x), 1 - x exact
        torch.sub(x, t, out=g).div_(den)
        if weighted or c != 1.0:
            g.mul_(c)
    return total


def _check_ranges(extremes: list[Tensor]) -> None:
    """torch's range checks (NaN fails them), from the blocks' (min x, max x, min y, max y)."""
    if not extremes:
        return
    if len(extremes) == 4:
        lo_x, hi_x, lo_t, hi_t = extremes
    else:
        lo_x = torch.stack(extremes[0::4]).min()
        hi_x = torch.stack(extremes[1::4]).max()
        lo_t = torch.stack(extremes[2::4]).min()
        hi_t = torch.stack(extremes[3::4]).max()
    for what, lo, hi in (("input", lo_x, hi_x), ("target", lo_t, hi_t)):
        if not (float(lo) >= 0 and float(hi) <= 1):
            raise RuntimeError(f"all elements of {what} should be between 0 and 1")


def _small(
    x: Tensor, t: Tensor, reduction: int, need_input: bool, need_target: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``_fused`` for a small, unweighted, reduced call of a native dtype (a batch of a few
    rows), where every op's fixed cost counts: the same arithmetic in the fewest ops, with
    cached 0-d constants instead of Python numbers (``mylosses/_binary.py``).

    The range checks cost one op here: an input outside [0, 1] (or NaN) makes a log NaN and
    with it the sum (``0 * nan`` is NaN too), so only the target needs its extremes; any
    failure goes to the full check for torch's message."""
    n = x.numel()
    mean = reduction == MEAN
    lx = x.log()
    l1x = x.neg().log1p_()
    tg = None
    if need_target:
        tg = l1x.sub(lx)  # -logit(x), unclamped as in torch
        if mean:
            tg.mul_(_binary.scale_tensor(n, x.dtype))
    lx.clamp_min_(-100)
    # -(y lx + (1 - y) l1x) = -lerp(l1x, lx, y): one op. Both terms have one sign, so lerp's
    # two forms (by y < 1/2 or not) are exact to a few ulps of the result. log(1 - x) is below
    # -100 only at x = 1 exactly (-inf; log1p(-x) >= -37 for any float x < 1), where the sum
    # is not finite: only then is its clamp needed.
    total = l1x.lerp_(lx, t).sum()  # in place: l1x is not needed again
    lo, hi = t.aminmax()
    v = float(total)
    if not (float(lo) >= 0 and float(hi) <= 1 and v - v == 0):  # v - v: nan unless finite
        _check_ranges([*torch.aminmax(x), lo, hi])
        total = x.neg().log1p_().clamp_min_(-100).lerp_(lx, t).sum()
    total = total.mul_(_binary.scale_tensor(n, x.dtype, -1.0)) if mean else total.neg_()
    if not need_input:
        return total, None, tg
    den = _binary.ONE.sub(x).mul_(x).clamp_min_(_GRAD_EPS)  # x (1 - x), as torch's kernel
    if mean:  # (1/n) (x - y) / den, in torch's order
        return total, torch.addcdiv(_binary.ZERO, x.sub(t), den, value=1.0 / n), tg
    return total, x.sub(t).div_(den), tg


def _is_small(input: Tensor, target: Tensor, weight: Tensor | None, reduction: int) -> bool:
    """Whether ``_small`` computes this call (the caller has checked the shapes)."""
    return (
        weight is None
        and reduction != NONE
        and input.dtype in _NATIVE
        and target.dtype == input.dtype
        and 0 < input.numel() <= _binary.SMALL
        and input.is_contiguous()
        and target.is_contiguous()
    )


def _fused(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    need_input: bool,
    need_target: bool,
    check: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The loss and the wanted gradients times the reduction's factor (before the upstream
    gradient), in the work dtype, by blocks where the layout allows; range checks when
    ``check``."""
    shape = input.shape
    n = input.numel()
    if _is_small(input, target, weight, reduction):
        return _small(input, target, reduction, need_input, need_target)
    scale = _reduction.reduction_scale(reduction, n)
    work = compute_dtype(input.dtype)
    inner = 1 if weight is None else _binary.suffix_span(weight, shape)
    blocked = (
        n > _binary.BLOCK
        and inner is not None
        and input.dtype == work
        and input.is_contiguous()
        and target.is_contiguous()
    )
    ranges: list[Tensor] | None = [] if check else None
    new = input.new_empty
    out = new(shape, dtype=work) if reduction == NONE else None
    g = new(shape, dtype=work) if need_input else None
    tg = new(shape, dtype=work) if need_target else None
    if not blocked:
        x = _cast(input, work).contiguous()
        t = _cast(target, work).contiguous()
        c: float | Tensor = scale if weight is None else _cast(weight, work) * scale
        s, s2 = new(shape, dtype=work), new(shape, dtype=work)
        s3 = None if out is not None else new(shape, dtype=work)
        total = _fused_block(x, t, c, out, g, tg, s, s2, s3, ranges)
    else:
        assert inner is not None
        rows = n // inner
        c = scale if weight is None else _binary.periodic_vector(weight, shape, inner, work) * scale
        blocks = _binary.spans(n, inner)
        size = max((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in blocks)
        scratch = new((3, size), dtype=work)
        partials = []

        def cut(buf: Tensor, r0: int, r1: int, c0: int, c1: int) -> Tensor:
            return buf.view(rows, inner)[r0:r1, c0:c1]

        for r0, r1, c0, c1 in blocks:
            k = (r1 - r0) * (c1 - c0)
            bshape = (r1 - r0, c1 - c0)
            part = _fused_block(
                cut(input, r0, r1, c0, c1),
                cut(target, r0, r1, c0, c1),
                c if not isinstance(c, Tensor) else c[c0:c1],
                None if out is None else cut(out, r0, r1, c0, c1),
                None if g is None else cut(g, r0, r1, c0, c1),
                None if tg is None else cut(tg, r0, r1, c0, c1),
                scratch[0, :k].view(bshape),
                scratch[1, :k].view(bshape),
                scratch[2, :k].view(bshape),
                ranges,
            )
            if part is not None:
                partials.append(part)
        total = torch.stack(partials).sum() if partials else None
    if ranges is not None:
        _check_ranges(ranges)
    if out is not None:
        return out, g, tg
    assert total is not None
    if n == 0 and reduction == MEAN:
        total = total * float("nan")  # the mean of nothing is 0/0, as in torch
    return total, g, tg


# -- the differentiable formulas (compile, vmap, double backward) ------------------------------


def _loss_formula(input: Tensor, target: Tensor, weight: Tensor | None, reduction: int) -> Tensor:
    work = compute_dtype(input.dtype)
    x, t = _cast(input, work), _cast(target, work)
    loss = (t - 1) * (-x).log1p().clamp(min=-100) - t * x.log().clamp(min=-100)
    if weight is not None:
        loss = loss * _cast(weight, work)
    return _reduction.apply_reduction(loss, reduction)


def _factor(grad_loss: Tensor, weight: Tensor | None, reduction: int, like: Tensor) -> Tensor:
    """The upstream gradient times the reduction's factor and the weight, as ``like``."""
    c = _reduction.expand_grad(_cast(grad_loss, like.dtype), reduction, like.shape)
    return c if weight is None else c * _cast(weight, like.dtype)


def _slope(x: Tensor, t: Tensor) -> Tensor:
    """(x - y) / max(x (1 - x), eps): torch's d l / d x, without the clamp of the forward."""
    return (x - t) / (x * (1 - x)).clamp(min=_GRAD_EPS)


class _InputGrad(torch.autograd.Function):
    """d loss / d input with torch's second derivatives (module docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, t: Tensor, weight: Tensor | None, grad_loss: Tensor, reduction: int):
        return _slope(x, t) * _factor(grad_loss, weight, reduction, x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, t, weight, grad_loss, reduction = inputs
        ctx.save_for_backward(x, t, weight, grad_loss)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx: Any, gg: Tensor) -> tuple:
        x, t, weight, grad_loss = ctx.saved_tensors
        reduction = ctx.reduction
        need_x, need_t, _, need_g = ctx.needs_input_grad[:4]
        gx = gt = gl = None
        if need_x or need_t:
            c = gg * _factor(grad_loss, weight, reduction, x)
            if need_x:
                den = (x + _EPS) ** 2 * (1 - x + _EPS) ** 2
                gx = c * (x * x - 2 * x * t + t) / den
            if need_t:
                gt = -c / (x * (1 - x)).clamp(min=_EPS).detach()
        if need_g:
            gl = gg * _slope(x, t)
            if weight is not None:
                gl = gl * _cast(weight, x.dtype)
            if reduction != NONE:
                gl = gl.sum()
                if reduction == MEAN:
                    gl = gl * _reduction.reduction_scale(MEAN, x.numel())
            gl = _cast(gl, grad_loss.dtype)
        return gx, gt, None, gl, None


def _grad_formulas(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    grad_loss: Tensor,
    reduction: int,
    need_input: bool,
    need_target: bool,
) -> tuple[Tensor | None, Tensor | None]:
    work = compute_dtype(input.dtype)
    x, t = _cast(input, work), _cast(target, work)
    w = None if weight is None else _cast(weight, work)
    grad_input = grad_target = None
    if need_input:
        grad_input = _InputGrad.apply(x, t, w, grad_loss, reduction)
    if need_target:
        grad_target = ((-x).log1p() - x.log()) * _factor(grad_loss, w, reduction, x)
    return grad_input, grad_target


# -- the Function ------------------------------------------------------------------------------


class _BCE(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor, target: Tensor, weight: Tensor | None, reduction: int, mode: int
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if mode & SMALL:
            return _small(input, target, reduction, bool(mode & INPUT), bool(mode & TARGET))
        if not mode & EAGER:
            return _cast(_loss_formula(input, target, weight, reduction), input.dtype), None, None
        loss, g, tg = _fused(
            input, target, weight, reduction, bool(mode & INPUT), bool(mode & TARGET), True
        )
        return _cast(loss, input.dtype), g, tg

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, weight, reduction, mode = inputs
        _, g, tg = output
        if g is not None:
            ctx.mark_non_differentiable(g)
        if tg is not None:
            ctx.mark_non_differentiable(tg)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, weight)
        ctx.meta = (reduction, mode)
        ctx.stash = (g, tg) if g is not None or tg is not None else None

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _g: None, _tg: None) -> tuple:
        if grad_loss is None:
            return None, None, None, None, None
        need_input, need_target = ctx.needs_input_grad[:2]
        stash = ctx.stash
        if stash is not None and not torch.is_grad_enabled():
            # The usual case, first: forward left every wanted gradient (the saved tensors are
            # not even unpacked).
            g, tg = stash
            if (g is not None or not need_input) and (tg is not None or not need_target):
                ctx.stash = None
                if not _function.upstream_is_one(grad_loss):
                    g = _function.times_upstream(g, grad_loss) if need_input else None
                    tg = _function.times_upstream(tg, grad_loss) if need_target else None
                return g if need_input else None, tg if need_target else None, None, None, None
        input, target, weight = ctx.saved_tensors
        reduction, mode = ctx.meta
        stash, ctx.stash = ctx.stash, None
        g = tg = None
        if not torch.is_grad_enabled():
            if stash is not None:
                g, tg = stash
            if (
                ((need_input and g is None) or (need_target and tg is None))
                and mode & EAGER
                and _function.may_precompute()
            ):
                # A second backward through a retained graph: forward's kernel again.
                _, g, tg = _fused(input, target, weight, reduction, need_input, need_target, False)
        if (need_input and g is None) or (need_target and tg is None):
            g, tg = _grad_formulas(
                input, target, weight, grad_loss, reduction, need_input, need_target
            )
        else:
            g = _function.times_upstream(g, grad_loss) if need_input and g is not None else None
            tg = _function.times_upstream(tg, grad_loss) if need_target and tg is not None else None
        grad_input = _cast(g, input.dtype) if need_input and g is not None else None
        grad_target = _cast(tg, target.dtype) if need_target and tg is not None else None
        return grad_input, grad_target, None, None, None


_apply_bce = super(torch.autograd.Function, _BCE).apply


# -- the functional and the module -------------------------------------------------------------


def _check_dtypes(input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    """torch's kernel: one dtype for input and target, a floating one; a weight that casts
    into it."""
    if target.dtype != input.dtype:
        raise RuntimeError(
            f"Found dtype {_validation.scalar_type_name(target.dtype)} but expected "
            f"{_validation.scalar_type_name(input.dtype)}"
        )
    if not input.dtype.is_floating_point:
        name = _validation.scalar_type_name(input.dtype)
        raise NotImplementedError(f"\"binary_cross_entropy\" not implemented for '{name}'")


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross entropy between probabilities and targets; see :class:`torch.nn.BCELoss`.

    >>> import torch, mylosses
    >>> x = torch.tensor([0.5, 1.0, 0.0])
    >>> mylosses.functional.binary_cross_entropy(x, torch.tensor([1.0, 1.0, 1.0]))
    tensor(33.5644)
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            binary_cross_entropy,
            (input, target, weight),
            input,
            target,
            weight=weight,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    if target.size() != input.size():
        raise ValueError(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}) is deprecated. Please ensure they have the same size."
        )
    if weight is not None:
        torch.broadcast_shapes(target.size(), weight.size())  # torch's RuntimeError if not
    if _is_small(input, target, weight, red) and _function.may_precompute():
        # A batch of a few rows: the shortest path (the eager short kernel, as below).
        if not (torch.is_grad_enabled() and (input.requires_grad or target.requires_grad)):
            return _small(input, target, red, False, False)[0]
        mode = EAGER | SMALL | (INPUT if input.requires_grad else 0)
        if target.requires_grad:
            mode |= TARGET
        # may_precompute(): no transform, no compile, so the plain apply (_function.apply)
        return _apply_bce(input, target, None, red, mode)[0]
    grad_on = _function.needs_autograd(input, target, weight)
    if grad_on and weight is not None and weight.requires_grad:
        raise RuntimeError(
            "The function 'binary_cross_entropy' is not differentiable with respect to "
            "argument 'weight'. This input cannot have requires_grad True."
        )
    if not (input.dtype in _NATIVE and target.dtype == input.dtype):
        _check_dtypes(input, target, weight)
    if weight is not None:
        if weight.is_complex():
            raise RuntimeError(
                f"result type {_validation.scalar_type_name(weight.dtype)} can't be cast to "
                f"the desired output type {_validation.scalar_type_name(input.dtype)}"
            )
        _binary.broadcast_into(input.shape, weight.shape, input.shape)
    if not grad_on:
        if _function.may_precompute():
            loss = _fused(input, target, weight, red, False, False, True)[0]
        else:
            loss = _loss_formula(input, target, weight, red)
        return _cast(loss, input.dtype)
    mode = 0
    if _function.may_precompute():
        mode = (
            EAGER | (INPUT if input.requires_grad else 0) | (TARGET if target.requires_grad else 0)
        )
    return _function.apply(_BCE, input, target, weight, red, mode)[0]


class BCELoss(torch.nn.BCELoss):
    __doc__ = torch.nn.BCELoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)
