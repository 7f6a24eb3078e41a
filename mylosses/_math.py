r"""Numerically stable building blocks shared by several losses, each with its gradient.

All are written with differentiable tensor ops, so a backward that calls them can itself be
differentiated (double backward).

- ``log_sum_exp(x, dim)``: :math:`\log \sum_j e^{x_j} = m + \log \sum_j e^{x_j - m}` with
  :math:`m = \max_j x_j`, so no exponential overflows; its gradient is the softmax
  :math:`e^{x_j - \mathrm{lse}}`. Rows whose maximum is infinite are handled as torch does
  (``+inf`` anywhere gives ``+inf``; a row of ``-inf`` gives ``-inf``).
- ``softplus(x)``: :math:`\log(1 + e^{x}) = \max(x, 0) + \log(1 + e^{-|x|})`, exact for
  :math:`|x|` of 1e4 where the naive form overflows; its derivative is the sigmoid
  :math:`\sigma(x) = 1 / (1 + e^{-x})`.
- ``log_sigmoid(x)``: :math:`\log \sigma(x) = -\mathrm{softplus}(-x)`, derivative
  :math:`\sigma(-x) = 1 - \sigma(x)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mylosses import _function

__all__ = ["log_sigmoid", "log_sum_exp", "softmax_from_lse", "softplus"]


def log_sum_exp(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """:math:`\\log \\sum_j e^{x_j}` along ``dim``, shifted by the row maximum."""
    m = x.amax(dim, keepdim=True)
    # An infinite maximum would make x - m nan (inf - inf); shift by 0 there instead.
    m = torch.where(m.isinf(), torch.zeros_like(m), m)
    out = (x - m).exp().sum(dim, keepdim=True).log() + m
    return out if keepdim else out.squeeze(dim)


def softmax_from_lse(x: Tensor, lse: Tensor) -> Tensor:
    """The softmax :math:`e^{x - \\mathrm{lse}}`, the gradient of ``log_sum_exp``, given the
    log-sum-exp ``lse`` broadcastable to ``x`` (keepdim)."""
    return (x - lse).exp()


class _LogSigmoid(torch.autograd.Function):
    """:math:`\\log \\sigma(x)` in the stable form, with the exact derivative
    :math:`\\sigma(-x)`. (Left to autograd, the stable form's ``|x|`` would give a slope of 1
    at ``x = 0`` instead of 1/2, and a second derivative of 0 there instead of -1/4.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.clamp(max=0) - (-x.abs()).exp().log1p()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(-x)  # differentiable: double backward works


def log_sigmoid(x: Tensor) -> Tensor:
    """:math:`\\log \\sigma(x) = \\min(x, 0) - \\log(1 + e^{-|x|})`, stable for any
    finite ``x``, derivative :math:`\\sigma(-x)`."""
    return _function.apply(_LogSigmoid, x)


def softplus(x: Tensor) -> Tensor:
    """:math:`\\log(1 + e^x) = -\\log \\sigma(-x)`, derivative :math:`\\sigma(x)`."""
    return -_function.apply(_LogSigmoid, -x)
