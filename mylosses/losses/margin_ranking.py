r"""Margin ranking loss: ``MarginRankingLoss`` / ``margin_ranking_loss``.

Two scores :math:`x_1, x_2` and a label :math:`y` (1: :math:`x_1` should rank higher, -1:
:math:`x_2` should; any real label is accepted) are compared with a margin :math:`m`:

.. math::

    u_n = m - y_n (x_{1,n} - x_{2,n}), \qquad l_n = \max(0, u_n), \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum_n l_n & \text{'sum'} \\
           \frac{1}{N}\sum_n l_n & \text{'mean'} \end{cases}

Backward: :math:`\partial \max(0, u) / \partial u = [u \ge 0]` (torch's ``clamp_min``
convention: at an exact tie :math:`u = 0` the gradient passes, and a NaN :math:`u` gives 0),
and :math:`\partial u / \partial x_1 = -y`, :math:`\partial u / \partial x_2 = y`,
:math:`\partial u / \partial y = -(x_1 - x_2)`. With :math:`g_n` the upstream gradient times the
reduction's factor (1 for 'sum', 1/N for 'mean') and :math:`M_n = [u_n \ge 0]`:

.. math::

    \frac{\partial \ell}{\partial x_{1,n}} = -y_n M_n g_n, \qquad
    \frac{\partial \ell}{\partial x_{2,n}} = y_n M_n g_n, \qquad
    \frac{\partial \ell}{\partial y_n} = -(x_{1,n} - x_{2,n}) M_n g_n .

The mask is piecewise constant, so the second derivatives are the cross terms
:math:`\partial^2 \ell / \partial x_1 \partial y = -M g` (and :math:`+M g` for :math:`x_2`);
double backward differentiates the same formulas, written with differentiable ops.

Surprises in torch (all matched here):

- the label gets a gradient (it is a plain factor of the composition ``-y * (x1 - x2) +
  margin``), and products with a masked-out zero still make NaN from an infinite factor
  (``0 * inf``), exactly as torch's chain of nodes does;
- all three tensors must have the same *number of dimensions* (a RuntimeError naming the three
  sizes), and then broadcast freely against each other ((3, 1), (1, 4) and (1, 1) give a
  (3, 4) loss); a 0-d label with 1-d scores is an error;
- integer scores and labels are computed in integers and promoted to float32 by the margin (the
  result is float32); bool scores fail at the subtraction and a bool label at its negation, with
  torch's messages; complex inputs fail at the clamp (NotImplementedError);
- the reduction's name is checked first, the dimensions next, and only then the margin's type.

Speed: torch's composition runs six full-size ops forward (neg, sub, mul, add, clamp, sum) and
as many backward, keeping several full-size tensors alive. When scores of one shape and dtype
(float32/float64, contiguous) require grad, our forward walks them once in cache-sized blocks:
:math:`d = x_1 - x_2`, :math:`u = m - y d`, the mask :math:`M` written straight into the first
gradient's buffer as a float (``torch.ge(..., out=float)`` costs a tenth of a bool comparison
plus a cast on this CPU), the clamped loss summed from a scratch block, then each requested
gradient finished in place in its own buffer while the block is in cache. Backward only
multiplies those buffers by the upstream gradient (``mylosses/_function.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE

_cast = _function.cast
_sum_to = _function.sum_to_like
_take = _function.take_gradients

__all__ = ["MarginRankingLoss", "margin_ranking_loss"]

# Elements per block (as in ``mylosses/_pointwise.py``: the blocks stay in a core's L2).
BLOCK = 1 << 17

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)

# ``precompute`` bits: which gradients forward computes (0: none, the loss only).
_X1, _X2, _Y = 1, 2, 4


def _result_dtype(x1: Tensor, x2: Tensor, y: Tensor) -> torch.dtype:
    """torch's: the three promoted, and integers promoted to the default float by the margin."""
    dtype = torch.promote_types(torch.promote_types(x1.dtype, x2.dtype), y.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _unclamped(x1: Tensor, x2: Tensor, y: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """``(u, d)``: u = margin - y d and d = x1 - x2, broadcast, with differentiable ops.

    The difference is taken in the two scores' own promoted dtype, as torch's ``input1 -
    input2`` is (so it rounds where torch's does: float32 scores with a float64 label), except
    that half results are computed in float32 throughout and rounded once at the end. Integer
    scores and labels stay integers until the margin makes them float32, as in torch.
    """
    res = _result_dtype(x1, x2, y)
    if res in _HALF:
        x1, x2, y = _cast(x1, torch.float32), _cast(x2, torch.float32), _cast(y, torch.float32)
        res = torch.float32
    d = x1 - x2
    if d.dtype.is_floating_point or y.dtype.is_floating_point:
        return margin - _cast(y, res) * _cast(d, res), d
    return margin - y * d, d  # integers: exact products, then float32 by the margin


def _loss(x1: Tensor, x2: Tensor, y: Tensor, margin: float, reduction: int) -> Tensor:
    """The loss alone (evaluation, vmap, compile, and calls the fused path does not serve)."""
    u, _ = _unclamped(x1, x2, y, margin)
    loss = _reduction.apply_reduction(u.clamp_min(0), reduction)
    return _cast(loss, _result_dtype(x1, x2, y))


def _block(
    x1: Tensor,
    x2: Tensor,
    y: Tensor,
    m: Tensor | None,
    nscale: Tensor | None,
    u: Tensor,
    d: Tensor,
    mask: Tensor,
    g1: Tensor | None,
    g2: Tensor | None,
    gy: Tensor | None,
) -> Tensor:
    """One flat block of the fused pass: the clamped loss left in ``u`` (returned), the
    gradients times ``-scale`` (``nscale``, a 0-d tensor; None for a scale of 1) written into
    ``g1``, ``g2``, ``gy`` (those not None). ``m`` is the margin as a 0-d tensor of the dtype
    (each Python scalar operand costs a few microseconds more than a 0-d tensor), None for 0.
    ``d`` and ``mask`` are working space (``gy`` and ``g1``/``g2`` themselves where wanted)."""
    torch.sub(x1, x2, out=d)
    torch.mul(y, d, out=u)
    if m is None:
        u.neg_()  # -y d + 0
    else:
        torch.sub(m, u, out=u)  # margin - y d: the same bits as torch's -y d + margin
    torch.ge(u, _ZERO[u.dtype], out=mask)  # M = [u >= 0], as a float
    u.relu_()  # max(0, u), NaN kept
    if gy is not None:  # -(x1 - x2) M scale
        gy.mul_(mask)
        gy.mul_(nscale) if nscale is not None else gy.neg_()
    if g1 is not None or g2 is not None:
        mask.mul_(y)  # y M
        mask.mul_(nscale) if nscale is not None else mask.neg_()  # -y M scale
        if g1 is not None and g2 is not None:
            torch.neg(g1, out=g2)
        elif g2 is not None:
            g2.neg_()
    return u


# 0-d constants: an operand of a 0-d tensor costs microseconds less than a Python number.
_ZERO = {dtype: torch.zeros((), dtype=dtype) for dtype in _NATIVE}


def _fused(
    x1: Tensor, x2: Tensor, y: Tensor, margin: float, reduction: int, need: int
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The loss and the scaled gradients that ``need`` asks for, in one pass (module
    docstring). Three tensors of one shape and dtype (float32/float64), contiguous, not empty."""
    n = x1.numel()
    dtype = x1.dtype
    m = torch.scalar_tensor(margin, dtype=dtype) if margin != 0.0 else None
    nscale = torch.scalar_tensor(-1.0 / n, dtype=dtype) if reduction == MEAN else None
    g1 = torch.empty_like(x1) if need & _X1 else None
    g2 = torch.empty_like(x1) if need & _X2 else None
    gy = torch.empty_like(x1) if need & _Y else None
    if reduction == NONE or n <= BLOCK:
        # One block (small inputs, and the elementwise loss, which is an output of its own)
        u = torch.empty_like(x1)
        d = gy if gy is not None else torch.empty_like(x1)
        mask = g1 if g1 is not None else g2 if g2 is not None else torch.empty_like(x1)
        _block(x1, x2, y, m, nscale, u, d, mask, g1, g2, gy)
        if reduction == NONE:
            return u, g1, g2, gy
        total = u.sum()
    else:
        a, b, t = x1.view(-1), x2.view(-1), y.view(-1)
        f1, f2, fy = (None if g is None else g.view(-1) for g in (g1, g2, gy))
        u = torch.empty(BLOCK, dtype=dtype, device=x1.device)
        spare = None if fy is not None else torch.empty_like(u)
        spare_mask = None if (f1 is not None or f2 is not None) else torch.empty_like(u)
        partials = []
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            s = slice(start, stop)
            size = stop - start
            b1 = None if f1 is None else f1[s]
            b2 = None if f2 is None else f2[s]
            by = None if fy is None else fy[s]
            d = by if by is not None else spare[:size]  # type: ignore[index]
            mask = b1 if b1 is not None else b2 if b2 is not None else spare_mask[:size]  # type: ignore[index]
            ub = _block(a[s], b[s], t[s], m, nscale, u[:size], d, mask, b1, b2, by)
            partials.append(ub.sum())
        total = torch.stack(partials).sum()
    if nscale is not None:
        total = total.mul_(nscale).neg_()  # sum * (1/n)
    return total, g1, g2, gy


def _gradients(
    x1: Tensor,
    x2: Tensor,
    y: Tensor,
    margin: float,
    reduction: int,
    grad_loss: Tensor,
    need: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The three gradients from the saved inputs, with differentiable ops (double backward,
    broadcast and mixed-dtype calls): the mask is a constant, the rest is differentiated."""
    u, d = _unclamped(x1, x2, y, margin)
    work = u.dtype
    mask = (u >= 0).to(work)
    g = _cast(_reduction.expand_grad(grad_loss, reduction, u.shape), work)
    gu = mask * g  # torch's where(u >= 0, g, 0) (g is finite: the same numbers)
    yw = _cast(y, work)
    grad1 = _sum_to(-(yw * gu), x1) if need[0] else None
    grad2 = _sum_to(yw * gu, x2) if need[1] else None
    grady = _sum_to(-(_cast(d, work) * gu), y) if need[2] else None
    return grad1, grad2, grady


class _MarginRanking(torch.autograd.Function):
    """l = max(0, margin - y (x1 - x2)); gradients w.r.t. x1, x2 and y.

    ``forward(input1, input2, target, margin, reduction, precompute)`` returns the loss and the
    three stashed gradients (None where not computed): with ``precompute`` (bits ``_X1``,
    ``_X2``, ``_Y``: a call of one shape and float32/float64 dtype, contiguous and not empty,
    in eager mode) forward computes the requested gradients and stashes them for backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input1: Tensor,
        input2: Tensor,
        target: Tensor,
        margin: float,
        reduction: int,
        precompute: int,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        if precompute:
            return _fused(input1, input2, target, margin, reduction, precompute)
        return _loss(input1, input2, target, margin, reduction), None, None, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input1, input2, target, margin, reduction, precompute = inputs
        stash = output[1:]
        made = [g for g in stash if g is not None]
        if made:
            ctx.mark_non_differentiable(*made)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input1, input2, target)
        ctx.meta = (margin, reduction, precompute)
        ctx.stashed = stash if made else None

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, *_stash: None) -> tuple:
        if grad_loss is None:
            return (None,) * 6
        need = ctx.needs_input_grad[:3]
        margin, reduction, precompute = ctx.meta
        stash = _take(ctx)
        if stash is None and precompute and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again.
            x1, x2, y = ctx.saved_tensors
            stash = _fused(x1, x2, y, margin, reduction, precompute)[1:]
        if stash is not None and _function.upstream_is_one(grad_loss):
            grads = tuple(g if wanted else None for g, wanted in zip(stash, need, strict=True))
        elif stash is not None:
            grads = tuple(
                _function.times_upstream(g, grad_loss) if g is not None and wanted else None
                for g, wanted in zip(stash, need, strict=True)
            )
        else:
            x1, x2, y = ctx.saved_tensors
            grads = _gradients(x1, x2, y, margin, reduction, grad_loss, need)
        return (*grads, None, None, None)


def _check(input1: Tensor, input2: Tensor, target: Tensor) -> None:
    """torch's errors, in the order its composition meets them: ``input1 - input2`` (bool
    tensors, shapes), ``-target`` (bool), the product's shapes, then the clamp (complex)."""
    _validation.check_subtractable(input1, input2)
    shape = _validation.broadcast_or_raise(input1.shape, input2.shape)
    if target.dtype == torch.bool:
        raise _validation.negate_bool_error()
    _validation.broadcast_or_raise(target.shape, shape)
    if input1.is_complex() or input2.is_complex() or target.is_complex():
        raise NotImplementedError("clamp is not supported for complex types")


def margin_ranking_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The ranking hinge max(0, -target * (input1 - input2) + margin); see
    :class:`torch.nn.MarginRankingLoss`.

    >>> import torch, mylosses
    >>> x1, x2 = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    >>> mylosses.functional.margin_ranking_loss(x1, x2, torch.tensor([1.0, 1.0]), margin=0.5)
    tensor(0.7500)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input1, input2, target):
        return handle_torch_function(
            margin_ranking_loss,
            (input1, input2, target),
            input1,
            input2,
            target,
            margin=margin,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    ndim = input1.dim()
    if input2.dim() != ndim or target.dim() != ndim:
        raise RuntimeError(
            "margin_ranking_loss : All input tensors should have same dimension but got sizes: "
            f"input1: {input1.size()}, input2: {input2.size()}, target: {target.size()} "
        )
    if type(margin) is not float:
        margin = _validation.float_argument("margin_ranking_loss", "margin", 4, margin)
    shape, dtype = input1.shape, input1.dtype
    same = (
        input2.shape == shape
        and target.shape == shape
        and input2.dtype == dtype
        and target.dtype == dtype
        and dtype in _NATIVE
    )
    if not same:
        _check(input1, input2, target)
    if not _function.needs_autograd(input1, input2, target):
        return _loss(input1, input2, target, margin, red)
    precompute = 0
    if (
        same
        and input1.numel() > 0
        and input1.is_contiguous()
        and input2.is_contiguous()
        and target.is_contiguous()
        and _function.may_precompute()
    ):
        precompute = (
            (_X1 if input1.requires_grad else 0)
            | (_X2 if input2.requires_grad else 0)
            | (_Y if target.requires_grad else 0)
        )
    return _function.apply(_MarginRanking, input1, input2, target, margin, red, precompute)[0]


class MarginRankingLoss(torch.nn.MarginRankingLoss):
    __doc__ = torch.nn.MarginRankingLoss.__doc__

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return margin_ranking_loss(
            input1, input2, target, margin=self.margin, reduction=self.reduction
        )
