r"""Smooth L1 loss: ``SmoothL1Loss`` / ``smooth_l1_loss``.

Huber's loss divided by its threshold, :math:`\beta \ge 0` (``beta``), with :math:`d = x - y`:

.. math::

    l_n = \begin{cases} \tfrac12 d_n^2 / \beta & |d_n| < \beta \\
          |d_n| - \tfrac12\beta & \text{otherwise} \end{cases}
    \;=\; \operatorname{huber}_\beta(d_n) / \beta,

reduced by 'none', 'sum' or 'mean'. Its linear part has slope 1 whatever :math:`\beta`, so
:math:`\beta \to 0` is the L1 loss, and torch computes ``beta == 0`` as exactly that (we do too).

Backward:

.. math::

    \phi'(d) = \begin{cases} d/\beta & |d| < \beta \\ \operatorname{sign}(d) & \text{otherwise}
    \end{cases} = \operatorname{clamp}(d/\beta, -1, 1),

so :math:`\partial\ell/\partial x_n = -\partial\ell/\partial y_n = \phi'(d_n)\, g_n`.

Surprises in torch: unlike ``huber_loss`` it promotes input and target to a common dtype and
accepts the legacy ``size_average``/``reduce``; it has no ``weight=``; a negative ``beta`` is a
RuntimeError.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _reduction, _validation
from mylosses._pointwise import PointwiseRule, pointwise_loss, setup_context
from mylosses.losses.huber import huber_block_
from mylosses.losses.l1 import l1_core

__all__ = ["SmoothL1Loss", "smooth_l1_loss"]


class _SmoothL1Rule(PointwiseRule):
    kernel = "smooth_l1"

    @staticmethod
    def value(d: torch.Tensor, param: float) -> torch.Tensor:
        # huber_beta(d) / beta, in huber.py's branch-free form c (d - c/2) / beta
        c = d.clamp(-param, param)
        return c * (d - 0.5 * c) / param

    @staticmethod
    def derivative(d: torch.Tensor, param: float) -> torch.Tensor:
        # phi'(d) = clamp(d / beta, -1, 1), written so that its own derivative (double backward)
        # is torch's: 1/beta strictly inside the band, 0 at |d| == beta.
        # The outer branch is the constant +-1 (detached: its derivative is 0); NaN stays NaN.
        return torch.where(d.abs() < param, d / param, (d / param).clamp(-1.0, 1.0).detach())

    @staticmethod
    def derivative_(d: torch.Tensor, param: float, scale: float) -> torch.Tensor:
        return d.clamp_(-param, param).mul_(scale / param)

    @classmethod
    def fused_block_(
        cls, d: torch.Tensor, param: float, scale: float, scratch: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return huber_block_(d, param, scale / param, scratch)  # huber_beta / beta


class _SmoothL1(torch.autograd.Function):
    """l = huber_beta(x - y) / beta: the rule above, run by ``mylosses/_pointwise.py``."""

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
        return _SmoothL1Rule.forward(input, target, weight, reduction, param, precompute)

    setup_context = staticmethod(setup_context)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        return _SmoothL1Rule.backward(ctx, grad_loss)


def smooth_l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> torch.Tensor:
    """The smooth L1 loss between ``input`` and ``target``; see :class:`torch.nn.SmoothL1Loss`.

    >>> import torch, mylosses
    >>> mylosses.functional.smooth_l1_loss(torch.tensor([0.5, 3.0]), torch.tensor([0.0, 0.0]))
    tensor(1.3125)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            smooth_l1_loss,
            (input, target),
            input,
            target,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
            beta=beta,
        )
    _validation.warn_if_size_mismatch(input, target)
    reduction = _reduction.resolve(size_average, reduce, reduction)
    _validation.broadcast_shape(input, target)
    beta = _validation.float_argument("smooth_l1_loss", "beta", 4, beta)
    red = _reduction.get_enum(reduction)
    if beta == 0.0:
        return l1_core(input, target, None, red)
    if not beta >= 0:  # (written so that nan fails too)
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    return pointwise_loss(_SmoothL1, _SmoothL1Rule, input, target, None, red, beta)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    __doc__ = torch.nn.SmoothL1Loss.__doc__

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)
