"""Reductions: the names torch accepts, the legacy arguments, and the reduction with its gradient.

Every loss ends the same way: an elementwise (or per-sample) loss ``l`` is reduced to

.. math::

    \\ell = \\begin{cases} l & \\text{'none'} \\\\ \\sum_n l_n & \\text{'sum'} \\\\
            \\frac{1}{Z} \\sum_n l_n & \\text{'mean'} \\end{cases}

where the normaliser ``Z`` is the number of elements for a plain mean, and something else for a
weighted mean (the sum of the weights), for KL's ``'batchmean'`` (the batch size) and so on: the
caller passes it in. The gradient of the reduction is then ``g`` (per element) for 'none', and the
scalar ``g`` broadcast (times ``1/Z`` for 'mean') otherwise.

torch keeps the three names as integers (``torch.nn._reduction.get_enum``), and so do we:
a Function's ``forward`` receives the integer, which is cheap to compare and to pass.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch

Reduction = Literal["none", "mean", "sum"]

NONE = 0
MEAN = 1
SUM = 2


def get_enum(reduction: str) -> int:
    """The integer of a reduction name, exactly as ``torch.nn._reduction.get_enum``.

    'elementwise_mean' is torch's deprecated spelling of 'mean' (it warns); anything else that is
    not 'none', 'mean' or 'sum' raises ValueError.
    """
    if reduction == "none":
        return NONE
    if reduction == "mean":
        return MEAN
    if reduction == "sum":
        return SUM
    if reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.",
            stacklevel=3,
        )
        return MEAN
    raise ValueError(f"{reduction} is not a valid value for reduction")


def get_weighted_enum(reduction: str) -> int:
    """The integer of a reduction name on torch's Python weighted paths (l1/mse/huber ``weight=``).

    Those paths compare the name themselves, so they accept exactly 'none', 'mean' and 'sum'
    (not 'elementwise_mean') and say so in a different message.
    """
    if reduction in ("none", "mean", "sum"):
        return {"none": NONE, "mean": MEAN, "sum": SUM}[reduction]
    raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")


def legacy_get_string(
    size_average: bool | None, reduce: bool | None, emit_warning: bool = True, stacklevel: int = 3
) -> str:
    """Map the deprecated ``size_average``/``reduce`` pair to a reduction name; warns as torch.

    ``reduce=False`` wins over everything ('none'); otherwise ``size_average=False`` means 'sum';
    an argument left as None counts as True.
    """
    if size_average is None:
        size_average = True
    if reduce is None:
        reduce = True
    if size_average and reduce:
        ret = "mean"
    elif reduce:
        ret = "sum"
    else:
        ret = "none"
    if emit_warning:
        warnings.warn(
            "size_average and reduce args will be deprecated, please use "
            f"reduction='{ret}' instead.",
            stacklevel=stacklevel,
        )
    return ret


def resolve(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """The reduction a functional call asks for: the legacy pair wins when either is given."""
    if size_average is not None or reduce is not None:
        return legacy_get_string(size_average, reduce)
    return reduction


def reduction_enum(size_average: bool | None, reduce: bool | None, reduction: str) -> int:
    """The enum of the reduction a functional call asks for: the legacy pair wins when either
    is given (its warning points at the functional's caller), else ``get_enum(reduction)``."""
    if size_average is not None or reduce is not None:
        return get_enum(legacy_get_string(size_average, reduce, stacklevel=4))
    return get_enum(reduction)


def apply_reduction(
    loss: torch.Tensor, reduction: int, normalizer: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Reduce an unreduced loss. 'mean' divides the sum by ``normalizer`` (default: numel).

    An empty 'mean' is 0/0 = nan, as in torch.
    """
    if reduction == NONE:
        return loss
    total = loss.sum()
    if reduction == SUM:
        return total
    if normalizer is None:
        normalizer = loss.numel()
    return total / normalizer


def reduction_scale(reduction: int, numel: int) -> float:
    """The factor d(reduced)/d(l_n) of an unweighted reduction: 1, or 1/numel for 'mean'.

    An empty 'mean' has no element to scale, so any finite number will do; 0 avoids 1/0.
    """
    if reduction == MEAN:
        return 1.0 / numel if numel else 0.0
    return 1.0


def expand_grad(
    grad: torch.Tensor,
    reduction: int,
    shape: torch.Size,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The gradient of the reduction, ``d reduced / d l`` times the upstream ``grad``, as ``shape``.

    For 'none' the upstream gradient already has the loss's shape. For 'sum'/'mean' it is a
    scalar, broadcast back over the elements (as a view, no copy) and, for 'mean', divided by the
    normaliser. Written with differentiable ops, so it serves double backward too.
    """
    if reduction == NONE:
        return grad
    if reduction == MEAN:
        if normalizer is None:
            n = 1
            for s in shape:
                n *= s
            grad = grad * reduction_scale(MEAN, n)
        else:
            grad = grad / normalizer
    return grad.expand(shape)
