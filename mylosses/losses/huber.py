r"""Huber loss: ``HuberLoss`` / ``huber_loss``.

Quadratic near zero, linear far from it, with the threshold :math:`\delta > 0` (``delta``) and
:math:`d = x - y`:

.. math::

    l_n = w_n \begin{cases} \tfrac12 d_n^2 & |d_n| < \delta \\
          \delta\,(|d_n| - \tfrac12\delta) & \text{otherwise} \end{cases}

reduced by 'none', 'sum' or 'mean'. The weighted 'mean' (torch 2.13's functional ``weight=``)
is the plain mean of :math:`w_n \phi(d_n)`: it divides by N, not by the weights' sum as
``mse_loss`` and ``l1_loss`` do.

Backward: both branches meet with slope :math:`\pm\delta` at :math:`|d| = \delta`, and

.. math::

    \phi'(d) = \begin{cases} d & |d| < \delta \\ \delta \operatorname{sign}(d) & \text{otherwise}
    \end{cases} = \operatorname{clamp}(d, -\delta, \delta),

so :math:`\partial\ell/\partial x_n = -\partial\ell/\partial y_n = \operatorname{clamp}(d_n,
-\delta, \delta)\, w_n g_n`. The second derivative is 1 inside the band and 0 outside.

Surprises in torch: the result has the *input's* dtype, not the promoted one (a float32 input
with a float64 target gives float32; an integer input with a float target is an error), and
torch's own backward fails on that mixed-dtype case ("Found dtype Double but expected Float");
ours returns each gradient in its input's dtype. ``HuberLoss`` takes no legacy
``size_average``/``reduce``. ``delta <= 0`` is a RuntimeError.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _reduction, _validation
from mylosses._pointwise import PointwiseRule, pointwise_loss, setup_context

__all__ = ["HuberLoss", "huber_loss"]


class _HuberRule(PointwiseRule):
    kernel = "huber"
    weighted_mean_by_weight_sum = False

    @staticmethod
    def value(d: torch.Tensor, param: float) -> torch.Tensor:
        # With c = clamp(d, -delta, delta), huber(d) = c (d - c/2): inside the band c = d and
        # this is d^2/2; outside c = delta sign(d) and it is delta |d| - delta^2/2. One formula,
        # no branch and no mask (torch's comparison and where kernels are slow on CPU).
        c = d.clamp(-param, param)
        return c * (d - 0.5 * c)

    @staticmethod
    def derivative(d: torch.Tensor, param: float) -> torch.Tensor:
        # phi'(d) = clamp(d, -delta, delta), written so that its own derivative (double backward)
        # is torch's: 1 strictly inside the band, 0 at |d| == delta (clamp's would be 1 there).
        # The outer branch is the constant +-delta (detached: its derivative is 0), and NaN
        # stays NaN as in torch.
        return torch.where(d.abs() < param, d, d.clamp(-param, param).detach())

    @staticmethod
    def derivative_(d: torch.Tensor, param: float, scale: float) -> torch.Tensor:
        return d.clamp_(-param, param).mul_(scale)

    @classmethod
    def fused_block_(
        cls, d: torch.Tensor, param: float, scale: float, scratch: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return huber_block_(d, param, scale, scratch)

    @classmethod
    def result_dtype(
        cls, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.dtype:
        dtype = input.dtype  # torch writes into a tensor of the input's dtype
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
        return dtype


class _Huber(torch.autograd.Function):
    """l = huber_delta(x - y): the rule above, run by ``mylosses/_pointwise.py``."""

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
        return _HuberRule.forward(input, target, weight, reduction, param, precompute)

    setup_context = staticmethod(setup_context)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        return _HuberRule.backward(ctx, grad_loss)


def huber_block_(
    d: torch.Tensor, delta: float, scale: float, scratch: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale * sum(huber_delta(d)), scale * clamp(d, -delta, delta))`` of a block.

    The sum of ``_HuberRule.value``'s c (d - c/2) is the dot product of c with d - c/2; with c
    scaled first, that dot product is already the scaled sum, and c the scaled derivative.
    Four or five passes over the block, no allocation with a ``scratch`` (``smooth_l1.py``
    shares it, with scale / beta).
    """
    c = torch.clamp(d, -delta, delta, out=scratch)
    rest = d.add_(c, alpha=-0.5)
    if scratch is None:  # a single small block: c becomes the gradient buffer
        if scale != 1.0:
            c.mul_(scale)
        return torch.dot(c, rest), c
    # In the block loop the derivative must land in d: scale c on its way back (one pass).
    total = torch.dot(c, rest)
    torch.mul(c, scale, out=d)
    return total * scale, d


def huber_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Huber loss between ``input`` and ``target``; see :class:`torch.nn.HuberLoss`.

    >>> import torch, mylosses
    >>> mylosses.functional.huber_loss(torch.tensor([0.5, 3.0]), torch.tensor([0.0, 0.0]))
    tensor(1.3125)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            huber_loss,
            (input, target, weight),
            input,
            target,
            reduction=reduction,
            delta=delta,
            weight=weight,
        )
    _validation.warn_if_size_mismatch(input, target)
    _validation.broadcast_shape(input, target)
    delta = _validation.float_argument("huber_loss", "delta", 4, delta)
    if weight is None:
        red = _reduction.get_enum(reduction)
        _check(input, target, delta)
    else:
        _validation.check_weight_matches_input(weight, input)
        _check(input, target, delta)  # torch computes the unreduced loss before this check
        red = _reduction.get_weighted_enum(reduction)
    return pointwise_loss(_Huber, _HuberRule, input, target, weight, red, delta)


def _check(input: torch.Tensor, target: torch.Tensor, delta: float) -> None:
    if not delta > 0:  # (written so that nan fails too)
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    _validation.check_castable(input, target)


class HuberLoss(torch.nn.HuberLoss):
    __doc__ = torch.nn.HuberLoss.__doc__

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return huber_loss(input, target, reduction=self.reduction, delta=self.delta)
