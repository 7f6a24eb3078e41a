r"""Triplet margin loss with a distance of your choice: ``TripletMarginWithDistanceLoss`` /
``triplet_margin_with_distance_loss``.

With any distance function :math:`d` (a callable of two tensors),

.. math::

    d^- = \begin{cases} \min\{d(a, n),\, d(p, n)\} & \text{swap} \\ d(a, n) & \text{else}
          \end{cases}, \qquad
    l = \max\{(m + d(a, p)) - d^-,\ 0\}, \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum l & \text{'sum'} \\
           \frac{1}{N} \sum l & \text{'mean'} \end{cases}

Backward. The hinge and the reduction are written by hand: with :math:`g` the upstream
gradient times the reduction's factor and :math:`c = g\,[z \ge 0]` (:math:`z` the argument of
the max; torch's clamp passes the gradient at exactly 0),

.. math::

    \frac{\partial \ell}{\partial d(a, p)} = c, \qquad
    \frac{\partial \ell}{\partial d(a, n)} = -w_{an}, \qquad
    \frac{\partial \ell}{\partial d(p, n)} = -w_{pn},

where :math:`w_{an} + w_{pn} = c` goes all to the smaller of the two distances, half each on
a tie (``torch.minimum``'s rule). Those gradients flow into the distances: a user-supplied
``distance_function`` is differentiated by autograd (the one place in mylosses where autograd
produces a gradient: the function is the user's, not ours). Without one, the distance is
torch's default ``pairwise_distance`` (p = 2, eps = 1e-6), and the whole loss is
``TripletMarginLoss``'s fused hand-written pass (``mylosses/losses/triplet_margin.py``); the
module's default, a ``PairwiseDistance`` module, is recognised and computed the same way with
its p and eps.

Surprises in torch (all matched here):

- an invalid reduction is a ValueError, 'elementwise_mean' included (this functional checks
  the name itself), and there are no legacy ``size_average``/``reduce`` arguments;
- the margin must be > 0 (ValueError, with a different message in the module's constructor);
- the dimension check (same number of dimensions) runs before the distance function; the
  result's dtype and shape are whatever ``margin + d(a, p) - d^-`` gives (a distance of
  integers gives a float loss through the float margin; the reduction of an integer hinge,
  with an integer margin, is torch's ``mean`` error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction
from mylosses._math import sum_to
from mylosses._reduction import MEAN, NONE, SUM
from mylosses.losses import triplet_margin as _triplet

__all__ = ["TripletMarginWithDistanceLoss", "triplet_margin_with_distance_loss"]


def _hinge(d_ap: Tensor, d_neg: Tensor, margin: Any) -> Tensor:
    return torch.clamp_min(margin + d_ap - d_neg, 0)


def _reduce(loss: Tensor, reduction: int) -> Tensor:
    if reduction == SUM:
        return torch.sum(loss)
    if reduction == MEAN:
        return torch.mean(loss)
    return loss


class _TripletHinge(torch.autograd.Function):
    """:math:`\\max\\{(m + d_{ap}) - \\min(d_{an}, d_{pn}), 0\\}`, reduced, of given distances.

    ``forward(d_ap, d_an, d_pn, margin, reduction)``; ``d_pn`` is None without swap. The
    backward is linear in the upstream gradient with constant masks, so its own derivative
    w.r.t. the distances is zero and double backward runs through the distance function.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        d_ap: Tensor, d_an: Tensor, d_pn: Tensor | None, margin: float, reduction: int
    ) -> Tensor:
        d_neg = d_an if d_pn is None else torch.minimum(d_an, d_pn)
        return _reduce(_hinge(d_ap, d_neg, margin), reduction)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        d_ap, d_an, d_pn, margin, reduction = inputs
        d_neg = d_an if d_pn is None else torch.minimum(d_an, d_pn)
        z = margin + d_ap - d_neg
        ctx.shapes = (d_ap.shape, d_an.shape, None if d_pn is None else d_pn.shape)
        ctx.dtypes = (d_ap.dtype, d_an.dtype, None if d_pn is None else d_pn.dtype)
        ctx.reduction = reduction
        active = z >= 0
        if d_pn is None:
            ctx.save_for_backward(active)
        else:
            ctx.save_for_backward(active, d_an.detach(), d_pn.detach())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        active, *pair = ctx.saved_tensors
        g = _reduction.expand_grad(grad, ctx.reduction, active.shape)
        c = torch.where(active, g, 0)  # clamp_min's backward
        g_neg = -c
        s_ap, s_an, s_pn = ctx.shapes
        t_ap, t_an, t_pn = ctx.dtypes
        need_ap, need_an, need_pn = ctx.needs_input_grad[:3]
        grad_ap = sum_to(c, s_ap).to(t_ap) if need_ap else None
        grad_an = grad_pn = None
        if not pair:
            if need_an:
                grad_an = sum_to(g_neg, s_an).to(t_an)
        else:
            d_an, d_pn = pair
            tie, half = d_an == d_pn, g_neg / 2
            if need_an:
                w = torch.where(tie, half, g_neg).masked_fill(d_an > d_pn, 0)
                grad_an = sum_to(w, s_an).to(t_an)
            if need_pn:
                w = torch.where(tie, half, g_neg).masked_fill(d_pn > d_an, 0)
                grad_pn = sum_to(w, s_pn).to(t_pn)
        return grad_ap, grad_an, grad_pn, None, None


def _is_torch_pairwise(fn: object) -> bool:
    """torch's ``PairwiseDistance`` module without keepdim (the module's default distance):
    its distance is ours, computed by the fused pass."""
    cls = type(fn)
    return (
        cls.__name__ == "PairwiseDistance"
        and cls.__module__ == "torch.nn.modules.distance"
        and not getattr(fn, "keepdim", True)
        and not getattr(fn, "_forward_hooks", None)
        and not getattr(fn, "_forward_pre_hooks", None)
    )


def _euclidean_eps(fn: object) -> float | None:
    """The eps of torch's ``PairwiseDistance`` module with p = 2 (see ``_is_torch_pairwise``),
    else None."""
    if _is_torch_pairwise(fn):
        pnorm, eps = fn.norm, fn.eps  # type: ignore[attr-defined]
        if (type(pnorm) is float or type(pnorm) is int) and pnorm == 2 and type(eps) is float:
            return eps
    return None


def _with_distance(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    distance_function: Callable[[Tensor, Tensor], Tensor] | None,
    margin: float,
    swap: bool,
    reduction: str,
) -> Tensor:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    _triplet.check_dims(anchor, positive, negative)
    red = NONE if reduction == "none" else SUM if reduction == "sum" else MEAN
    if distance_function is None:
        return _triplet.triplet(anchor, positive, negative, margin, 2.0, 1e-6, swap, red)
    if _is_torch_pairwise(distance_function):
        pnorm = float(distance_function.norm)  # type: ignore[attr-defined]
        eps = float(distance_function.eps)  # type: ignore[attr-defined]
        return _triplet.triplet(anchor, positive, negative, margin, pnorm, eps, swap, red)
    d_ap = distance_function(anchor, positive)
    d_an = distance_function(anchor, negative)
    d_pn = distance_function(positive, negative) if swap else None
    tensors = (d_ap, d_an) if d_pn is None else (d_ap, d_an, d_pn)
    if not all(isinstance(t, Tensor) for t in tensors) or not isinstance(margin, (int, float)):
        # Not tensors (or a tensor margin): torch's expression, and its errors, as they are.
        d_neg = d_an if d_pn is None else torch.minimum(d_an, d_pn)
        return _reduce(_hinge(d_ap, d_neg, margin), red)
    if not _function.needs_autograd(*tensors):
        return _TripletHinge.forward(d_ap, d_an, d_pn, margin, red)
    return _function.apply(_TripletHinge, d_ap, d_an, d_pn, margin, red)


def triplet_margin_with_distance_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    distance_function: Callable[[Tensor, Tensor], Tensor] | None = None,
    margin: float = 1.0,
    swap: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """The triplet loss max(d(a, p) - d(a, n) + margin, 0) with any distance function; see
    :class:`torch.nn.TripletMarginWithDistanceLoss`.

    >>> import torch, mylosses
    >>> a, p, n = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    >>> linf = lambda x, y: (x - y).abs().amax(-1)
    >>> mylosses.functional.triplet_margin_with_distance_loss(a, p, n, distance_function=linf)
    tensor(4.)
    """
    if has_torch_function_variadic(anchor, positive, negative):
        return handle_torch_function(
            triplet_margin_with_distance_loss,
            (anchor, positive, negative),
            anchor,
            positive,
            negative,
            distance_function=distance_function,
            margin=margin,
            swap=swap,
            reduction=reduction,
        )
    # The short path of TripletMarginLoss (see triplet_margin._TripletShort): torch's default
    # distance (or the module's, with p = 2), plain valid arguments, no swap, 'mean' or 'sum'.
    if (
        swap is False
        and (reduction == "mean" or reduction == "sum")
        and type(margin) is float
        and margin > 0.0
    ):
        eps = 1e-6 if distance_function is None else _euclidean_eps(distance_function)
        if eps is not None:
            red = MEAN if reduction == "mean" else SUM
            loss = _triplet.short(anchor, positive, negative, margin, eps, red)
            if loss is not None:
                return loss
    return _with_distance(anchor, positive, negative, distance_function, margin, swap, reduction)


class TripletMarginWithDistanceLoss(torch.nn.TripletMarginWithDistanceLoss):
    """torch's :class:`torch.nn.TripletMarginWithDistanceLoss` (same constructor, attributes
    and default ``PairwiseDistance``), computed by mylosses (module docstring). (torch's own
    docstring is not copied: its examples do not run as doctests.)"""

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_margin_with_distance_loss(
            anchor,
            positive,
            negative,
            distance_function=self.distance_function,
            margin=self.margin,
            swap=self.swap,
            reduction=self.reduction,
        )
