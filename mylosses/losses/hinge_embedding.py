r"""Hinge embedding loss: ``HingeEmbeddingLoss`` / ``hinge_embedding_loss``.

An input :math:`x` (typically a distance between two embeddings) and a label :math:`y`
(1: similar, -1: dissimilar) with a margin :math:`m`. torch's documentation shows two cases;
its implementation is the composition

.. math::

    l_n = [y_n \ne 1]\, \max(0, m - x_n) + [y_n \ne -1]\, x_n, \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum_n l_n & \text{'sum'} \\
           \frac{1}{N}\sum_n l_n & \text{'mean'} \end{cases}

so that :math:`y = 1` gives :math:`x`, :math:`y = -1` gives :math:`\max(0, m - x)`, and any
other label (0, 2, NaN, ...) gives *both terms*. Each bracket is a selection (``torch.where``),
not a product: a term that is not selected contributes 0 even where it is infinite.

Backward: :math:`\partial \max(0, u) / \partial u = [u \ge 0]` (torch's ``clamp_min``
convention: at the tie :math:`x = m` the gradient passes; NaN gives 0), so with :math:`g_n` the
upstream gradient times the reduction's factor (1 for 'sum', 1/N for 'mean'):

.. math::

    \frac{\partial \ell}{\partial x_n} = \left([y_n \ne -1] - [y_n \ne 1]\,[m - x_n \ge 0]\right)
    g_n .

The label only selects, so it gets no gradient (None, even when it requires grad), and the
second derivative w.r.t. :math:`x` is 0: double backward differentiates the formula above in
:math:`g` alone.

Surprises in torch (all matched here):

- the result has the *input's* dtype (a float16 input with a float64 label gives float16),
  and the label broadcasts both ways (an (N,) input with a (2, N) label gives a (2, N) loss);
- ``margin - input`` is ``empty_like(input).fill_(margin) - input``: the margin is converted
  to the input's dtype first, so it is truncated for integer inputs (2.5 becomes 2) and a margin
  too large for the dtype is a RuntimeError ("value cannot be converted to type c10::Half
  without overflow"); integer inputs give integer 'none' and 'sum' results, and 'mean' raises
  torch.mean's RuntimeError; a bool input fails at the subtraction, a complex one at the clamp;
- the label may be of any dtype, bool and complex included (it is only compared with 1 and -1).

Speed: torch's composition runs nine full-size ops forward (``zeros_like``, sub, clamp, two
comparisons, two ``where``, add, sum) and as many backward; ``where`` costs about forty times a
multiplication on this CPU, so torch's forward+backward takes about 40 ns an element. When a
contiguous float32/float64 input requires grad, our forward walks input and label once in
cache-sized blocks with float masks (``torch.ne(..., out=float)``), two dot products for the
loss, :math:`A = [y \ne 1]`, :math:`B = [y \ne -1]` and the gradient :math:`B - A [x \le m]`
(one ``addcmul``) written into the one full-size buffer. A mask times an infinite term would be
NaN where torch selects 0, so a non-finite total (only possible with infinite inputs) is
recomputed with ``torch.where``; the gradient is masks only and needs no such care.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE, SUM

_cast = _function.cast

__all__ = ["HingeEmbeddingLoss", "hinge_embedding_loss"]

# Elements per block (as in ``mylosses/_pointwise.py``: the blocks stay in a core's L2).
BLOCK = 1 << 17

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)


def _work(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


def _elementwise(input: Tensor, target: Tensor, margin: float) -> Tensor:
    """torch's composition (floating inputs; half ones in float32), broadcast."""
    x = _cast(input, _work(input.dtype))
    margin_clamp = (margin - x).clamp_min(0)
    return torch.where(target != 1, margin_clamp, 0.0) + torch.where(target != -1, x, 0.0)


def _loss(input: Tensor, target: Tensor, margin: float, reduction: int) -> Tensor:
    """The loss alone, exactly as torch composes it (evaluation, vmap, compile, odd calls)."""
    loss = _reduction.apply_reduction(_elementwise(input, target, margin), reduction)
    return _cast(loss, input.dtype)


def _integer(input: Tensor, target: Tensor, margin: float, reduction: int) -> Tensor:
    """torch's composition on integer (and bool) inputs, op for op, so that its errors come
    at the same moment: the margin's conversion, bool subtraction, broadcasting, and
    ``mean()`` of integers. Nothing here can require grad."""
    margin_clamp = torch.empty_like(input).fill_(margin).sub_(input).clamp_min_(0)
    zeros = torch.zeros_like(input)
    output = torch.where(target != 1, margin_clamp, zeros) + torch.where(target != -1, input, zeros)
    if reduction == NONE:
        return output
    return output.sum() if reduction == SUM else output.mean()


def _fused(
    input: Tensor, target: Tensor, margin: float, reduction: int, grad: bool
) -> tuple[Tensor, Tensor | None]:
    """The reduced loss and (with ``grad``) the scaled gradient (B - A [x <= m]) scale in one
    fresh buffer, block by block (module docstring). CPU; input float32/float64 and a real
    label of its shape, both contiguous, not empty; a finite margin; a reduction.

    Constants are 0-d tensors: an operand of a Python number costs a few microseconds more,
    which counts at small sizes."""
    n = input.numel()
    dtype = input.dtype
    one, minus_one = _CONSTANTS[dtype]
    m = torch.scalar_tensor(margin, dtype=dtype)  # torch's fill_: the margin in input's dtype
    scale = torch.scalar_tensor(1.0 / n, dtype=dtype) if reduction == MEAN else None
    x = input if input.dim() == 1 else input.flatten()
    y = target if target.dim() == 1 else target.flatten()
    out = torch.empty_like(x) if grad else None
    if n <= BLOCK:
        # One block, without slices (small inputs, where every op's overhead counts)
        a = out if out is not None else torch.empty_like(x)
        torch.ne(y, one, out=a)  # A = [y != 1]
        s = torch.sub(m, x).relu_()  # max(0, m - x)
        total = torch.dot(a, s)
        torch.ne(y, minus_one, out=s)  # B = [y != -1]
        total.add_(torch.dot(s, x))
        if out is not None:
            _gradient(s, a, x, m, scale)
    else:
        size = min(n, BLOCK)
        scratch = torch.empty(size, dtype=dtype)
        a_spare = None if out is not None else torch.empty(size, dtype=dtype)
        partials = []
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            k = stop - start
            xb, yb, s = x[start:stop], y[start:stop], scratch[:k]
            a = out[start:stop] if out is not None else a_spare[:k]  # type: ignore[index]
            torch.ne(yb, one, out=a)
            torch.sub(m, xb, out=s).relu_()
            partials.append(torch.dot(a, s))
            torch.ne(yb, minus_one, out=s)
            partials.append(torch.dot(s, xb))
            if out is not None:
                _gradient(s, a, xb, m, scale)
        total = torch.stack(partials).sum()
    grad_out = None if out is None else out.view_as(input)
    if not math.isfinite(float(total)):
        # A mask times an infinite input (0 * inf = nan) where torch selects 0: torch's way.
        return _loss(input, target, margin, reduction), grad_out
    if scale is not None:
        total = total.mul_(scale)
    return total, grad_out


def _gradient(b: Tensor, a: Tensor, x: Tensor, m: Tensor, scale: Tensor | None) -> None:
    """``a`` := (B - A [x <= m]) scale, with B in ``b`` (overwritten) and A in ``a``: the
    clamp's mask [m - x >= 0] is [x <= m] exactly (a difference of floats is 0 only where they
    are equal), so it needs no second look at m - x. The scale of 1/N is exact on 0 and ±1."""
    if scale is None:
        torch.addcmul(b, a, torch.le(x, m), value=-1, out=a)
    else:
        b.mul_(scale)
        torch.addcmul(b, a, torch.le(x, m), value=-float(scale), out=a)


# 0-d constants (1 and -1) per dtype.
_CONSTANTS = {
    dtype: (torch.ones((), dtype=dtype), torch.full((), -1.0, dtype=dtype)) for dtype in _NATIVE
}


def _derivative(input: Tensor, target: Tensor, margin: float) -> Tensor:
    """dl/dx = [y != -1] - [y != 1] [m - x >= 0], broadcast: masks only (a constant)."""
    x = _cast(input, _work(input.dtype))
    work = x.dtype
    clamp_passes = (margin - x >= 0).to(work)
    return (target != -1).to(work) - (target != 1).to(work) * clamp_passes


class _HingeEmbedding(torch.autograd.Function):
    """l = [y != 1] max(0, m - x) + [y != -1] x; the gradient w.r.t. the input only.

    ``forward(input, target, margin, reduction, precompute)`` returns ``(loss, gradient or
    None)``: with ``precompute`` (``_fused``'s conditions, in eager mode) the gradient is
    computed in forward and stashed for backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor, target: Tensor, margin: float, reduction: int, precompute: int
    ) -> tuple[Tensor, Tensor | None]:
        if precompute:
            return _fused(input, target, margin, reduction, True)
        return _loss(input, target, margin, reduction), None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, margin, reduction, precompute = inputs
        _, grad = output
        if grad is not None:
            ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target)
        ctx.meta = (margin, reduction, bool(precompute))
        _function.stash_gradient(ctx, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        grad = _function.take_gradient(ctx)
        margin, reduction, fused = ctx.meta
        if grad is None and fused and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again.
            input, target = ctx.saved_tensors
            grad = _fused(input, target, margin, reduction, True)[1]
        if grad is not None:  # forward's gradient, in the input's dtype: the common case
            return _function.times_upstream(grad, grad_loss), None, None, None, None
        # Double backward, or a call the fused path does not serve: differentiable in grad_loss.
        input, target = ctx.saved_tensors
        d = _derivative(input, target, margin)
        grad = d * _cast(_reduction.expand_grad(grad_loss, reduction, d.shape), d.dtype)
        if grad.shape != input.shape:
            grad = grad.sum_to_size(input.shape)
        return _cast(grad, input.dtype), None, None, None, None


def hinge_embedding_loss(
    input: Tensor,
    target: Tensor,
    margin: float = 1.0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The hinge embedding loss: input where target is 1, max(0, margin - input) where it is
    -1 (both for other labels); see :class:`torch.nn.HingeEmbeddingLoss`.

    >>> import torch, mylosses
    >>> x, y = torch.tensor([0.3, 0.3]), torch.tensor([1.0, -1.0])
    >>> mylosses.functional.hinge_embedding_loss(x, y, reduction="none")
    tensor([0.3000, 0.7000])
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            hinge_embedding_loss,
            (input, target),
            input,
            target,
            margin=margin,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    if type(margin) is not float:
        margin = _validation.float_argument("hinge_embedding_loss", "margin", 3, margin)
    dtype = input.dtype
    if not dtype.is_floating_point:
        if dtype.is_complex:
            raise NotImplementedError("clamp is not supported for complex types")
        return _integer(input, target, margin, red)
    finite = math.isfinite(margin)
    if finite and abs(margin) > torch.finfo(dtype).max and input.numel() != 1:
        # torch's fill_ checks the conversion, except on one element: its error, in its words
        torch.empty(2, dtype=dtype).fill_(margin)
    if input.shape != target.shape:
        _validation.broadcast_or_raise(target.shape, input.shape)
    plain = (
        red != NONE
        and finite
        and input.shape == target.shape
        and dtype in _NATIVE
        and input.is_cpu
        and not target.is_complex()
        and input.numel() > 0
        and input.is_contiguous()
        and target.is_contiguous()
        and _function.may_precompute()
    )
    if not _function.needs_autograd(input):
        return (
            _fused(input, target, margin, red, False)[0]
            if plain
            else _loss(input, target, margin, red)
        )
    return _function.apply(_HingeEmbedding, input, target, margin, red, int(plain))[0]


class HingeEmbeddingLoss(torch.nn.HingeEmbeddingLoss):
    __doc__ = torch.nn.HingeEmbeddingLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return hinge_embedding_loss(input, target, margin=self.margin, reduction=self.reduction)
