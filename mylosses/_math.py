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
- ``pairwise_distance(x1, x2, p, eps)``: :math:`\lVert x_1 - x_2 + \epsilon \rVert_p` over the
  last dimension (torch's ``pairwise_distance``: the eps is added to every component of the
  difference, not to the norm), with the norm's gradient ``norm_backward`` in torch's
  conventions (see there).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from mylosses import _function

__all__ = [
    "log_sigmoid",
    "log_sum_exp",
    "norm_backward",
    "pairwise_distance",
    "softmax_from_lse",
    "softplus",
    "sum_to",
    "vector_norm",
]


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


# -- pairwise distance ------------------------------------------------------------------------
#
# ``pairwise_distance(x1, x2, p, eps)`` is torch's ``norm(x1 - x2 + eps, p, dim=-1)``: eps is
# added to each component of the difference. The p-"norm" of a vector d over its last dimension:
#
#     p = 0: the number of nonzero components (no gradient: torch returns none at all);
#     p = ±inf: max (min) |d_i|;   other p (fractional and negative too): (sum |d_i|^p)^(1/p).
#
# Its gradient, for r = ||d||_p > 0, is
#
#     p = 1:     sgn(d)
#     p = 2:     d / r
#     p = ±inf:  sgn(d_i) [|d_i| = r] / #{j : |d_j| = r}   (ties share the gradient equally)
#     other p:   sgn(d) |d|^(p-1) / r^(p-1)
#
# with torch's subgradient conventions where that is undefined: 0 where r = 0 (p >= 1), 0 for
# the components d_i = 0 when p < 1 (where |d_i|^(p-1) is infinite). ``norm_backward`` is
# torch's formula op for op (``torch/csrc/autograd/FunctionsManual.cpp``), so that its own
# derivative, which autograd takes in double backward, is torch's too, at the singular points
# included.


def vector_norm(d: Tensor, p: float) -> Tensor:
    """:math:`\\lVert d \\rVert_p` over the last dimension (a 0-d ``d`` is one component).

    The reduction itself is ``torch.linalg.vector_norm`` (a reduction primitive like ``sum``,
    and the one kernel that reads ``d`` once: a hand-rolled ``(d * d).sum(-1)`` costs a
    full-size temporary and six times the time); the dimension is named as torch's
    ``pairwise_distance`` names it, so that an empty dimension's error (the inf, -inf and
    negative norms have no identity) reads as torch's.
    """
    return torch.linalg.vector_norm(d, p, dim=max(d.dim() - 1, 0) if d.dim() else None)


def norm_backward(grad: Tensor, d: Tensor, p: float, r: Tensor) -> Tensor | None:
    """The gradient of :math:`r = \\lVert d \\rVert_p` (last dimension) times ``grad``:
    ``grad`` and ``r`` have ``d``'s shape with the last dimension kept as 1. None for p = 0.
    Written with differentiable ops in torch's order (module comment above)."""
    if p == 0.0:
        return None
    if p == 1.0:
        return d.sgn() * grad
    if p == 2.0:
        return grad * (d / r).masked_fill(r == 0, 0)
    if p in (math.inf, -math.inf):  # (dynamo cannot trace math.isinf of an argument)
        da = d.abs()
        mask = (da == r).logical_or(da.isnan())
        return d.sgn() * ((grad / mask.sum(-1, keepdim=True)) * mask)
    if p < 1.0:
        scaled = d.sgn() * d.abs().pow(p - 1).masked_fill(d == 0, 0)
        return scaled * grad * r.pow(1 - p)
    if p < 2.0:
        scaled = d.sgn() * d.abs().pow(p - 1)
    else:
        scaled = d * d.abs().pow(p - 2)
    return scaled * (grad / r.pow(p - 1)).masked_fill(r == 0, 0)


def sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """A broadcast gradient summed back to an input's ``shape`` (as autograd does)."""
    return grad if grad.shape == shape else grad.sum_to_size(shape)


def grad_for(grad: Tensor, like: Tensor) -> Tensor:
    """A gradient in the dtype of the input ``like`` (the real part for a real input, as
    autograd does for a complex gradient of a real input)."""
    if grad.is_complex() and not like.is_complex():
        grad = grad.real
    return grad if grad.dtype == like.dtype else grad.to(like.dtype)


class _PairwiseDistance(torch.autograd.Function):
    """:math:`r = \\lVert x_1 - x_2 + \\epsilon \\rVert_p` over the last dimension, with
    :math:`\\partial r / \\partial x_1 = -\\partial r / \\partial x_2` the norm's gradient at
    :math:`d = x_1 - x_2 + \\epsilon` (``norm_backward``), summed back over broadcast
    dimensions. The output is saved, so that in double backward the norm in the gradient is
    differentiated through this Function again."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x1: Tensor, x2: Tensor, p: float, eps: float) -> Tensor:
        return vector_norm(x1 - x2 + eps, p)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x1, x2, p, eps = inputs
        ctx.save_for_backward(x1, x2, output)
        ctx.p, ctx.eps = p, eps

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        x1, x2, r = ctx.saved_tensors
        d = x1 - x2 + ctx.eps
        if d.dim():
            grad, r = grad.unsqueeze(-1), r.unsqueeze(-1)
        gd = norm_backward(grad, d, ctx.p, r)
        if gd is None:
            return None, None, None, None
        g1 = grad_for(sum_to(gd, x1.shape), x1) if ctx.needs_input_grad[0] else None
        g2 = grad_for(sum_to(-gd, x2.shape), x2) if ctx.needs_input_grad[1] else None
        return g1, g2, None, None


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    """:math:`\\lVert x_1 - x_2 + \\epsilon \\rVert_p` over the last dimension (broadcast), as
    torch's ``pairwise_distance``; differentiable to any order."""
    return _function.apply(_PairwiseDistance, x1, x2, p, eps)
