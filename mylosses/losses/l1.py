r"""Mean absolute error: ``L1Loss`` / ``l1_loss``.

Forward, with :math:`d = x - y` (input minus target, broadcast):

.. math::

    l_n = w_n |d_n|, \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum_n l_n & \text{'sum'} \\
           \frac{1}{N}\sum_n l_n \ \ (\text{weighted: } \sum_n l_n / \sum_n w_n) & \text{'mean'}
           \end{cases}

Backward: :math:`\partial |d| / \partial d = \operatorname{sgn}(d)`, so

.. math::

    \frac{\partial \ell}{\partial x_n} = -\frac{\partial \ell}{\partial y_n}
    = \operatorname{sgn}(d_n)\, w_n\, g_n \quad (g_n = g \text{ or } g/N \text{ for 'sum'/'mean'}).

At :math:`d = 0` the subgradient is 0, as in torch. For a complex difference
:math:`|d| = \sqrt{a^2 + b^2}` is real and torch's (conjugate Wirtinger) gradient is
:math:`\operatorname{sgn}(d) = d / |d|`; ``torch.sgn`` is exactly that, and ``sign`` for real
numbers, so one formula serves both.

Surprises in torch: L1 is a composition in torch (subtract, abs, mean: three autograd nodes
that each keep a full-size tensor), and it accepts integer inputs for 'sum' and 'none' (the
result is an integer; 'mean' of integers raises torch.mean's RuntimeError). A NaN difference gets
a zero gradient (``sgn(nan) = 0``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _reduction, _validation
from mylosses._pointwise import PointwiseRule, check_call, pointwise_loss, setup_context

__all__ = ["L1Loss", "l1_loss"]


class _AbsoluteError(PointwiseRule):
    kernel = "l1"
    complex_ok = True

    @staticmethod
    def value(d: torch.Tensor, param: float) -> torch.Tensor:
        return d.abs()  # phi(d) = |d|

    @staticmethod
    def derivative(d: torch.Tensor, param: float) -> torch.Tensor:
        return torch.sgn(d)  # phi'(d) = sgn(d), 0 at 0

    @staticmethod
    def derivative_(d: torch.Tensor, param: float, scale: float) -> torch.Tensor:
        return d.sgn_().mul_(scale)

    @classmethod
    def fused_block_(
        cls, d: torch.Tensor, param: float, scale: float, scratch: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if d.is_complex():
            return super().fused_block_(d, param, scale, scratch)
        # d sgn(d) = |d| exactly, so the loss is a dot product with the (scaled) derivative.
        s = torch.sgn(d, out=scratch)
        if scale != 1.0:
            s.mul_(scale)
        total = torch.dot(d, s)
        if scratch is None:
            return total, s
        return total, d.copy_(s)


class _L1(torch.autograd.Function):
    """l = |x - y|: the rule above, run by ``mylosses/_pointwise.py``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        weight: Tensor | None,
        reduction: int,
        param: float,
        precompute: int,
    ) -> tuple[Tensor, Tensor | None]:
        return _AbsoluteError.forward(input, target, weight, reduction, param, precompute)

    setup_context = staticmethod(setup_context)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        return _AbsoluteError.backward(ctx, grad_loss)


def l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean absolute error between ``input`` and ``target``; see :class:`torch.nn.L1Loss`.

    >>> import torch, mylosses
    >>> mylosses.functional.l1_loss(torch.tensor([1.0, -3.0]), torch.tensor([0.0, 0.0]))
    tensor(2.)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            l1_loss,
            (input, target, weight),
            input,
            target,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
            weight=weight,
        )
    red = check_call(input, target, size_average, reduce, reduction, weight)
    return l1_core(input, target, weight, red)


def l1_core(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: int
) -> torch.Tensor:
    """The L1 loss of checked arguments (``smooth_l1_loss`` with ``beta=0`` lands here too)."""
    _validation.check_subtractable(input, target)  # torch's l1 is a composite: input - target
    dtype = torch.promote_types(input.dtype, target.dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        return _integer_l1(input, target, weight, reduction)
    return pointwise_loss(_L1, _AbsoluteError, input, target, weight, reduction, 0.0)


def _integer_l1(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: int
) -> torch.Tensor:
    """torch's composite on integers: exact integer sums, and mean() rejecting integers.

    Nothing here can require grad (integer tensors cannot), so no Function is needed.
    """
    loss = (input - target).abs()  # bool - bool raises torch's RuntimeError here
    if weight is not None:
        loss = loss * weight
    if reduction == _reduction.NONE:
        return loss
    if reduction == _reduction.SUM:
        return loss.sum()
    return loss.sum() / weight.sum() if weight is not None else loss.mean()


class L1Loss(torch.nn.L1Loss):
    __doc__ = torch.nn.L1Loss.__doc__

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return l1_loss(input, target, reduction=self.reduction)
