r"""Negative log-likelihood of log-probabilities: ``NLLLoss`` / ``nll_loss``.

Forward. The input holds log-probabilities :math:`x_{n,c}` (class dimension 1, or 0 of an
unbatched ``(C,)`` input), the target class indices :math:`t_n`; with class weights :math:`w`
(default 1) and positions equal to ``ignore_index`` contributing nothing,

.. math::

    l_n = -\omega_n\, x_{n, t_n}, \qquad \omega_n = w_{t_n}\ (0 \text{ where ignored}),
    \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum_n l_n & \text{'sum'} \\
           \sum_n l_n \big/ \sum_n \omega_n & \text{'mean'} \end{cases}

The loss picks one entry per position: no softmax, no sum over classes.

Backward. :math:`l_n` is linear in the one entry it picks, so the gradient is zero everywhere
except there:

.. math::

    \frac{\partial \ell}{\partial x_{n,c}} = -\,[c = t_n]\; \omega_n\, g_n, \qquad
    g_n = g \text{ ('sum')},\ g / \textstyle\sum_m \omega_m \text{ ('mean')},\ g_n \text{ ('none')}.

The second derivative w.r.t. the input is zero, and the gradient is linear in the upstream
gradient, so double backward is exact. It is written like torch's: a zero buffer of the input's
shape with the picked entries scattered in, the one full-size buffer there has to be.

Surprises in torch: 'mean' with every target ignored is 0/0 = nan (the gradient is 0); an
ignored position contributes 0 even where its log-probability is -inf (no 0 * inf); the weight
must have the input's dtype and never gets a gradient (one that requires grad is an error);
int32 targets are rejected (uint8 accepted, except by the K-dimensional kernel); an unbatched
``(C,)`` input takes a 0-d target or one of shape ``(1,)``, and gives a 0-d 'none' loss either
way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _classification as _cls
from mylosses import _function, _reduction
from mylosses._reduction import MEAN, NONE

__all__ = ["NLLLoss", "nll_loss"]

_HALF = (torch.float16, torch.bfloat16)


def _views(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The input with a batch dimension (``(C,)`` -> ``(1, C)``) and the target as an index of
    one entry along dimension 1: ``(N, 1, d...)``."""
    if input.dim() == 1:
        return input.unsqueeze(0), target.reshape(1, 1)
    return input, target.unsqueeze(1)


def _factors(
    target: Tensor, weight: Tensor | None, ignore_index: int, any_ignored: bool | None, dtype
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(safe index, omega or None for all ones, valid mask or None), see _classification."""
    return _cls.position_weights(target, weight, ignore_index, any_ignored, dtype)


def _loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    ignore_index: int,
    any_ignored: bool | None,
) -> tuple[Tensor, Any]:
    """The reduced loss and the mean's normaliser."""
    work = torch.float32 if input.dtype in _HALF else input.dtype
    x, t = _views(input, target)
    safe, omega, valid = _factors(t, weight, ignore_index, any_ignored, work)
    picked = x.gather(1, safe)
    if picked.dtype != work:
        picked = picked.to(work)
    loss = -picked if omega is None else picked * -omega
    if valid is not None:  # an ignored -inf gives 0, not 0 * inf
        loss = torch.where(valid == 0, torch.zeros_like(loss), loss)
    total: Any = None
    if reduction == NONE:
        out = loss.reshape(target.shape if input.dim() > 1 else ())
    else:
        out = loss.sum()
        if reduction == MEAN:
            total = loss.numel() if omega is None else omega.sum()
            out = out / total
    return (out if out.dtype == input.dtype else out.to(input.dtype)), total


class _NLL(torch.autograd.Function):
    """l_n = -w_{t_n} x_{n, t_n} and its gradient (module docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        weight: Tensor | None,
        reduction: int,
        ignore_index: int,
        any_ignored: bool | None,
        small: bool,
    ) -> Tensor:
        if small:
            return _small(input, target, reduction)
        return _loss(input, target, weight, reduction, ignore_index, any_ignored)[0]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, target, weight, reduction, ignore_index, any_ignored, small = inputs
        ctx.save_for_backward(target, weight)
        if small:
            ctx.small = (input.shape, input.dtype, reduction)
            return
        ctx.small = None
        ctx.meta = (input.shape, input.dtype, reduction, ignore_index, any_ignored)
        ctx.strided_2d = input.dim() == 4 and not input.is_contiguous() and _dense(input)
        ctx.unbatched_1 = input.dim() == 1 and target.dim() == 1 and input.shape[0] != 1

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        if ctx.small is not None and not _function.transforms_active():
            # (the short path's call: (N, C), no weight, nothing ignored, reduced)
            shape, dtype, reduction = ctx.small
            (target,) = ctx.saved_tensors[:1]
            g = grad * (-1.0 / shape[0]) if reduction == MEAN else -grad
            out = torch.zeros(shape, dtype=dtype, device=grad.device)
            return out.scatter_(1, target.unsqueeze(1), g.expand(shape[0], 1)), *_NONE6
        if not ctx.needs_input_grad[0]:
            return None, *_NONE6
        if ctx.strided_2d:
            # torch's 2-d kernel allocates its gradient like the input and then insists on a
            # contiguous one: a dense, non-contiguous 4-d input (channels-last, permuted)
            # cannot be differentiated there. Same error here, so code behaves the same.
            raise RuntimeError("grad_input must be contiguous")
        if ctx.unbatched_1:  # torch's backward rejects the (C,) input with a (1,) target
            raise RuntimeError(f"size mismatch (got input: [{ctx.meta[0][0]}], target: [1])")
        target, weight = ctx.saved_tensors
        shape, dtype, reduction, ignore_index, any_ignored = ctx.meta
        work = torch.float32 if dtype in _HALF else dtype
        t = target.reshape(1, 1) if len(shape) == 1 else target.unsqueeze(1)
        safe, omega, valid = _factors(t, weight, ignore_index, any_ignored, work)
        g = grad.to(work) if grad.dtype != work else grad
        if reduction == NONE:
            g = g.reshape(safe.shape)
        elif reduction == MEAN:
            total = safe.numel() if omega is None else omega.sum()
            g = g / total if isinstance(total, Tensor) or total else g * 0.0
        values = -g if omega is None else omega * -g
        if valid is not None:
            # torch skips ignored positions: 0 there even when the total weight is 0 (where
            # the others get its 0/0 = nan, and every target ignored gives a zero gradient)
            values = torch.where(valid == 0, torch.zeros_like(values), values)
        values = values.expand(safe.shape)
        grad_shape = (1, shape[0]) if len(shape) == 1 else shape
        out = torch.zeros(grad_shape, dtype=work, device=grad.device)
        # In place into the fresh zeros (one buffer), except under a vmap, where the upstream
        # gradient carries a batch dimension the zeros lack (and under compile, which traces).
        transformed = _function._is_compiling() or _function.batched(grad)
        out = out.scatter(1, safe, values) if transformed else out.scatter_(1, safe, values)
        if len(shape) == 1:
            out = out.view(shape)
        if out.dtype != dtype:
            out = out.to(dtype)
        return out, *_NONE6


_NONE6 = (None,) * 6


def _small(x: Tensor, target: Tensor, reduction: int) -> Tensor:
    """The short path of a common small call (see ``nll_loss``): -mean or -sum of the picked
    log-probabilities."""
    total = x.gather(1, target.unsqueeze(1)).sum()
    return total * (-1.0 / x.shape[0]) if reduction == MEAN else total.neg()


def _dense(t: Tensor) -> bool:
    """Whether ``t`` covers its memory without gaps or overlaps (in some order of its dims):
    then ``zeros_like`` copies its strides."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The negative log-likelihood of class indices ``target`` under log-probabilities
    ``input``; see :class:`torch.nn.NLLLoss`.

    >>> import torch, mylosses
    >>> mylosses.functional.nll_loss(torch.tensor([[-1.0, -2.0]]), torch.tensor([1]))
    tensor(2.)
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            nll_loss,
            (input, target, weight),
            input,
            target,
            weight=weight,
            size_average=size_average,
            ignore_index=ignore_index,
            reduce=reduce,
            reduction=reduction,
        )
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    red = _reduction.get_enum(reduction)
    if (
        red != NONE
        and weight is None
        and type(ignore_index) is int
        and ignore_index < 0  # hit only by a target gather rejects (then: the general path)
        and type(input) is Tensor
        and type(target) is Tensor
        and input.dim() == 2
        and target.dim() == 1
        and target.dtype == torch.int64
        and (input.dtype == torch.float32 or input.dtype == torch.float64)
        and input.shape[0] == target.shape[0]
        and input.shape[0] > 0
        and input.device.type == "cpu"
        and not _function.transforms_active()
        and not _function._is_compiling()
    ):
        try:
            if not _function.needs_autograd(input):
                return _small(input, target, red)
            return _function.apply(_NLL, input, target, None, red, ignore_index, False, True)
        except RuntimeError:
            pass  # an out-of-range or ignored target: the general path says which
    _check_types(input, target, weight, ignore_index)
    ignore_index = int(ignore_index)
    _cls.check_class_target(input, target, weight)
    n_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    any_ignored = _cls.check_range(target, n_classes, ignore_index)
    if not _function.needs_autograd(input):
        return _loss(input, target, weight, red, ignore_index, any_ignored)[0]
    return _function.apply(_NLL, input, target, weight, red, ignore_index, any_ignored, False)


def _check_types(input: Any, target: Any, weight: Any, ignore_index: Any) -> None:
    """torch's argument parser: tensors where tensors belong, an int ``ignore_index``."""
    for name, pos, value in (("input", 1, input), ("target", 2, target)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"nll_loss_nd(): argument '{name}' (position {pos}) must be Tensor, "
                f"not {type(value).__name__}"
            )
    if weight is not None and not isinstance(weight, Tensor):
        raise TypeError(
            "nll_loss_nd(): argument 'weight' (position 3) must be Tensor, "
            f"not {type(weight).__name__}"
        )
    if type(ignore_index) is int:
        return
    if isinstance(ignore_index, Tensor):
        if ignore_index.numel() == 1 and not ignore_index.dtype.is_floating_point:
            return
    elif isinstance(ignore_index, int) and not isinstance(ignore_index, bool):
        return
    raise TypeError(
        "nll_loss_nd(): argument 'ignore_index' (position 5) must be int, "
        f"not {type(ignore_index).__name__}"
    )


class NLLLoss(torch.nn.NLLLoss):
    __doc__ = torch.nn.NLLLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return nll_loss(input, target, self.weight, None, self.ignore_index, None, self.reduction)
