r"""Mean squared error: ``MSELoss`` / ``mse_loss``.

Forward, with :math:`d = x - y` (input minus target, broadcast):

.. math::

    l_n = w_n d_n^2, \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum_n l_n & \text{'sum'} \\
           \frac{1}{N}\sum_n l_n \ \ (\text{weighted: } \sum_n l_n / \sum_n w_n) & \text{'mean'}
           \end{cases}

(:math:`w_n = 1` without the functional's ``weight=``, new in torch 2.13).

Backward: :math:`\partial d_n^2 / \partial d_n = 2 d_n`, and :math:`\partial d / \partial x = 1`,
:math:`\partial d / \partial y = -1`, so with :math:`g` the upstream gradient

.. math::

    \frac{\partial \ell}{\partial x_n} = -\frac{\partial \ell}{\partial y_n} = 2 d_n w_n
    \cdot \begin{cases} g_n & \text{'none'} \\ g & \text{'sum'} \\ g / N & \text{'mean'}
    \end{cases}

The second derivative is the constant 2 (times the weight), so double backward is exact.

Surprises in torch: the weighted 'mean' divides by the weights' sum (``huber_loss`` divides by N);
a weight must have the input's exact size, even where the target broadcasts the loss to a larger
shape; integer and complex inputs are rejected by the kernel (an integer input with a float
target is promoted and fine).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses._pointwise import PointwiseRule, check_call, pointwise_loss, setup_context

__all__ = ["MSELoss", "mse_loss"]


class _SquaredError(PointwiseRule):
    kernel = "mse"
    scratch = False

    @staticmethod
    def value(d: torch.Tensor, param: float) -> torch.Tensor:
        return d * d  # phi(d) = d^2

    @staticmethod
    def derivative(d: torch.Tensor, param: float) -> torch.Tensor:
        return 2 * d  # phi'(d) = 2 d

    @staticmethod
    def derivative_(d: torch.Tensor, param: float, scale: float) -> torch.Tensor:
        return d.mul_(2 * scale)

    @classmethod
    def fused_block_(
        cls, d: torch.Tensor, param: float, scale: float, scratch: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.dot(d, d)  # sum(d^2) in one read, no temporary
        if scale == 1.0:
            return total, d.add_(d)  # 2 d, without a Python-scalar op
        return total * scale, d.mul_(2 * scale)


class _MSE(torch.autograd.Function):
    """l = (x - y)^2: the rule above, run by ``mylosses/_pointwise.py``."""

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
        return _SquaredError.forward(input, target, weight, reduction, param, precompute)

    setup_context = staticmethod(setup_context)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        return _SquaredError.backward(ctx, grad_loss)


def mse_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean squared error between ``input`` and ``target``; see :class:`torch.nn.MSELoss`.

    >>> import torch, mylosses
    >>> mylosses.functional.mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    tensor(2.5000)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            mse_loss,
            (input, target, weight),
            input,
            target,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
            weight=weight,
        )
    red = check_call(input, target, size_average, reduce, reduction, weight)
    return pointwise_loss(_MSE, _SquaredError, input, target, weight, red, 0.0)


class MSELoss(torch.nn.MSELoss):
    __doc__ = torch.nn.MSELoss.__doc__

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse_loss(input, target, reduction=self.reduction)
