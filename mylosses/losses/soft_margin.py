r"""Soft margin loss: ``SoftMarginLoss`` / ``soft_margin_loss``.

A two-class logistic loss for targets :math:`y \in \{-1, 1\}` (any real target is accepted),
with :math:`t_n = x_n y_n` the margin of element :math:`n`:

.. math::

    l_n = \log\left(1 + e^{-x_n y_n}\right) = \log(1 + z_n), \qquad z_n = e^{-t_n},
    \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum_n l_n & \text{'sum'} \\
           \frac{1}{N}\sum_n l_n & \text{'mean'} \end{cases}

Backward: :math:`\partial l / \partial t = -z / (1 + z)` (that is :math:`-\sigma(-t)`) and
:math:`\partial t / \partial x = y`, so with :math:`g_n` the upstream gradient times the
reduction's factor (1 for 'sum', 1/N for 'mean'):

.. math::

    \frac{\partial \ell}{\partial x_n} = -y_n \frac{z_n}{1 + z_n}\, g_n .

The second derivative is :math:`y^2 z / (1 + z)^2`; double backward differentiates the same
formula, written with differentiable ops.

Surprises in torch (all matched here):

- torch's kernel is the naive formula ``log1p(exp(-x * y))``: where :math:`e^{-xy}` overflows
  (:math:`xy < -88.7` in float32, :math:`< -709.8` in float64) the loss is ``inf`` although the
  truth is :math:`-xy`, and the gradient is ``inf / inf = nan`` although the truth is
  :math:`-y`. float64 results are compared with torch's float64 ones directly, so we compute the
  same formula (in float16 torch overflows at :math:`xy < -11.1`: 30.6 comes out as inf).
- float16 and bfloat16 are computed in float32 with the stable form
  :math:`\max(-t, 0) + \log(1 + e^{-|t|})`, and are inf (nan for the gradient) only where the
  float64 formula overflows, which is the truth the harness judges half results against.
- the result has the *input's* dtype and shape: the target must broadcast to the input's shape
  (a larger target is an error, not a broadcast), an integer target is fine, a bool one too
  until backward (which negates it, and raises as ``-bool_tensor`` does), an integer
  input is not ("result type Float can't be cast to the desired output type Long"), and a
  complex input gives a complex loss (without autograd).
- the target gets no gradient: a target that requires grad is an error, even without an input
  that does.
- there is no size-mismatch warning (unlike MSE's).

Speed: torch runs ``exp`` twice (forward and backward), ``log1p``, a division, and keeps two
full-size buffers. When the input requires grad we walk the input in cache-sized blocks once:
:math:`t = xy`, :math:`z = e^{-t}`, :math:`1 + z` into a small scratch block, the gradient
:math:`-y z / (1 + z)` (times 1/N) into the one full-size buffer, and :math:`\log(1 + z)` added
to the loss from the scratch (the ``1 + z`` is there already; it differs from
:math:`\mathrm{log1p}(z)` by at most half an ulp of 1, far inside the tolerance). Backward
multiplies that buffer by the upstream gradient (``mylosses/_function.py``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._math import softplus
from mylosses._reduction import MEAN, NONE

_cast = _function.cast

__all__ = ["SoftMarginLoss", "soft_margin_loss"]

# Elements per block (as in ``mylosses/_pointwise.py``: a block and its scratch stay in L2).
BLOCK = 1 << 17
# exp(t) overflows float64 above this: where torch's float64 formula gives inf (and nan).
LOG_MAX64 = math.log(sys.float_info.max)

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)


def work_dtype(input: Tensor, target: Tensor) -> tuple[torch.dtype, bool]:
    """The dtype the loss is computed in, and whether it is the stable half-precision form
    (float16/bfloat16 results, computed in float32; see the module docstring)."""
    promoted = torch.promote_types(input.dtype, target.dtype)
    if input.dtype in _HALF and promoted != torch.float64 and not promoted.is_complex:
        return torch.float32, True
    return promoted, False


def _elementwise(input: Tensor, target: Tensor, work: torch.dtype, stable: bool) -> Tensor:
    """l = log(1 + exp(-x y)), broadcast, in ``work`` (torch's formula, or the stable half one)."""
    t = _cast(input, work) * _cast(target, work)
    if stable:
        loss = softplus(-t)
        return loss.masked_fill(t < -LOG_MAX64, math.inf)
    return t.neg_().exp_().log1p_()  # t is a fresh tensor of ours (forward runs without grad)


def _derivative(
    input: Tensor, target: Tensor, work: torch.dtype, stable: bool, n: float = 1.0
) -> Tensor:
    """dl/dx = -y z / (1 + z) with z = exp(-x y), differentiable (double backward). ``n``: the
    mean's N, which the gradient flowing into its double backward carries as 1/N, and which
    torch applies last there (see ``_TorchDerivative``)."""
    x, y = _cast(input, work), _cast(target, work)
    t = x * y
    if stable:
        d = -y * torch.sigmoid(-t)
        return d.masked_fill(t < -LOG_MAX64, math.nan)
    return _function.apply(_TorchDerivative, x, y, n)


class _TorchDerivative(torch.autograd.Function):
    """dl/dx = -y z / (1 + z), z = exp(-x y), as torch writes it, with torch's second
    derivative y^2 z / ((1 + z)(1 + z)). (Left to autograd, the first derivative's form would
    give y^2 z / (1 + z) - y^2 z^2 / (1 + z)^2: two overflowing terms, -inf or nan where x y is
    below -355 in float64, although the truth and torch's value are 0 there.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, y: Tensor, n: float) -> Tensor:
        z = torch.exp(-x * y)
        return -y * z / (1 + z)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(*inputs[:2])
        ctx.n = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x, y = ctx.saved_tensors  # (the target never requires grad: torch forbids it)
        z = torch.exp(-x * y)
        zp1 = 1 + z
        n = ctx.n
        if n == 1.0:
            return grad * (y * y) * z / (zp1 * zp1), None, None
        # torch's order, so that it overflows where torch's does: the mean's 1/N last
        return grad * n * (y * y) * z / (zp1 * zp1) / n, None, None


def _loss(input: Tensor, target: Tensor, reduction: int) -> Tensor:
    """The loss alone (evaluation, vmap, compile, and calls the fused path does not serve)."""
    work, stable = work_dtype(input, target)
    loss = _elementwise(input, target, work, stable)
    return _cast(_reduction.apply_reduction(loss, reduction), input.dtype)


def _fused(input: Tensor, target: Tensor, reduction: int) -> tuple[Tensor, Tensor]:
    """The reduced loss, and the scaled gradient -scale y z / (1 + z) in one fresh buffer,
    computed block by block (module docstring). Input and target of one shape and float32 or
    float64 dtype, contiguous, not empty; a reduction."""
    n = input.numel()
    if n <= BLOCK:
        # One block (small inputs, where every op's overhead counts: each Python scalar costs
        # a microsecond or two, so 'mean' is ``mean()`` and the 'sum' negates with ``neg_``).
        grad = torch.mul(input, target).neg_().exp_()  # z = exp(-x y)
        s = torch.add(grad, _ONES[grad.dtype])  # 1 + z
        grad.mul_(target)
        # torch's order, so that y z overflows where torch's does: (y z) (-scale) / (1 + z)
        grad = grad.mul_(-1.0 / n) if reduction == MEAN else grad.neg_()
        grad.div_(s)  # inf / inf = nan where z overflows, as torch's
        return (s.log_().mean() if reduction == MEAN else s.log_().sum()), grad
    scale = _reduction.reduction_scale(reduction, n)
    x, y = input.view(-1), target.view(-1)
    grad = torch.empty_like(x)
    scratch = torch.empty(BLOCK, dtype=x.dtype, device=x.device)
    partials = []
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        g, yb, s = grad[start:stop], y[start:stop], scratch[: stop - start]
        torch.mul(x[start:stop], yb, out=g)
        g.neg_().exp_()  # z = exp(-x y)
        torch.add(g, 1, out=s)  # 1 + z
        g.mul_(yb).mul_(-scale).div_(s)  # (y z)(-scale) / (1 + z), in torch's order
        partials.append(s.log_().sum())
    total = torch.stack(partials).sum()
    return (total * scale if scale != 1.0 else total), grad.view_as(input)


# 0-d constants: adding one costs a microsecond less than adding the Python number 1.
_ONES = {dtype: torch.ones((), dtype=dtype) for dtype in _NATIVE}


class _SoftMargin(torch.autograd.Function):
    """l = log(1 + exp(-x y)); the gradient w.r.t. the input only (torch gives the target none).

    ``forward(input, target, reduction, precompute)`` returns ``(loss, gradient or None)``:
    with ``precompute`` (a reduced call of one shape and float32/float64 dtype, contiguous
    and not empty, in eager mode) the gradient is computed in forward
    and stashed for backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor, target: Tensor, reduction: int, precompute: int
    ) -> tuple[Tensor, Tensor | None]:
        if precompute:
            return _fused(input, target, reduction)
        return _loss(input, target, reduction), None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, reduction, precompute = inputs
        _, grad = output
        if grad is not None:
            ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target)
        ctx.meta = (reduction, bool(precompute))
        _function.stash_gradient(ctx, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad = _function.take_gradient(ctx)
        if grad is not None:  # forward's gradient, in the input's dtype: the common case
            return _function.times_upstream(grad, grad_loss), None, None, None
        reduction, fused = ctx.meta
        input, target = ctx.saved_tensors
        if target.dtype == torch.bool:
            raise _validation.negate_bool_error()  # torch's backward negates the target
        if fused and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again.
            grad = _function.times_upstream(_fused(input, target, reduction)[1], grad_loss)
        else:
            # Double backward, or a call the fused path does not serve: differentiable ops.
            work, stable = work_dtype(input, target)
            n = float(input.numel()) if reduction == MEAN and input.numel() else 1.0
            d = _derivative(input, target, work, stable, n)
            if d.shape != input.shape:
                d = d.expand(input.shape)
            grad = d * _reduction.expand_grad(grad_loss, reduction, d.shape)
        return _cast(grad, input.dtype), None, None, None


def _check(input: Tensor, target: Tensor) -> None:
    """torch's checks after the target's requires_grad, in torch's order: a bool input, the
    shapes (the target must broadcast to the input's shape), then the dtypes."""
    if input.dtype == torch.bool:
        raise _validation.negate_bool_error()
    shape = _validation.broadcast_or_raise(input.shape, target.shape)
    if shape != input.shape:
        raise RuntimeError(
            f"output with shape {list(input.shape)} doesn't match the broadcast shape {list(shape)}"
        )
    promoted = torch.promote_types(input.dtype, target.dtype)
    if not (promoted.is_floating_point or promoted.is_complex):
        promoted = torch.float32  # exp of an integer tensor is float
    if (promoted.is_complex and not input.is_complex()) or not (
        input.is_floating_point() or input.is_complex()
    ):
        raise RuntimeError(
            f"result type {_validation.scalar_type_name(promoted)} can't be cast to the "
            f"desired output type {_validation.scalar_type_name(input.dtype)}"
        )
    if input.is_complex() and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "soft_margin_loss does not support automatic differentiation for outputs with "
            "complex dtype."
        )


def soft_margin_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The two-class logistic loss log(1 + exp(-input * target)); see
    :class:`torch.nn.SoftMarginLoss`.

    >>> import torch, mylosses
    >>> mylosses.functional.soft_margin_loss(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0]))
    tensor(0.7201)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            soft_margin_loss,
            (input, target),
            input,
            target,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    if target.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "The function 'soft_margin_loss' is not differentiable with respect to argument "
            "'target'. This input cannot have requires_grad True."
        )
    dtype = input.dtype
    same = dtype == target.dtype and dtype in _NATIVE and input.shape == target.shape
    if not same:
        _check(input, target)
    if not _function.needs_autograd(input):
        return _loss(input, target, red)
    plain = (
        same
        and red != NONE
        and input.is_contiguous()
        and target.is_contiguous()
        and input.numel() > 0
        and _function.may_precompute()
    )
    return _function.apply(_SoftMargin, input, target, red, int(plain))[0]


class SoftMarginLoss(torch.nn.SoftMarginLoss):
    __doc__ = torch.nn.SoftMarginLoss.__doc__

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_margin_loss(input, target, reduction=self.reduction)
