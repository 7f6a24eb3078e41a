r"""Multi-label soft margin loss: ``MultiLabelSoftMarginLoss`` / ``multilabel_soft_margin_loss``.

One logistic (binary cross-entropy with logits) loss per class, for multi-hot targets
:math:`y_{nc} \in \{0, 1\}` (any real target is accepted), optionally weighted per class, averaged
over the C classes, then reduced over the samples:

.. math::

    l_{nc} = -\left[y_{nc} \log\sigma(x_{nc}) + (1 - y_{nc}) \log\sigma(-x_{nc})\right], \qquad
    L_n = \frac{1}{C} \sum_c w_c\, l_{nc}, \qquad
    \ell = \begin{cases} L & \text{'none'} \\ \sum_n L_n & \text{'sum'} \\
           \frac{1}{N}\sum_n L_n & \text{'mean'} \end{cases}

Since :math:`\log\sigma(-x) = \log\sigma(x) - x`, :math:`l = \mathrm{softplus}(x) - y x`,
computed stably as :math:`(1 - y)\max(x, 0) - y \min(x, 0) + \log(1 + e^{-|x|})` (this
arrangement also gives nan and inf exactly where torch's does: at :math:`x = \pm\infty` with
:math:`y = 1` or :math:`0`, at infinite targets).

Backward, with :math:`g_{nc} = w_c\, g_n / C` (:math:`g_n` the upstream gradient, divided by N
for 'mean'), using :math:`(\log\sigma)'(x) = \sigma(-x)`:

.. math::

    \frac{\partial \ell}{\partial x_{nc}} = g_{nc}\left[(1 - y)\sigma(x) - y\,\sigma(-x)\right]
    = g_{nc}\,(\sigma(x_{nc}) - y_{nc}), \qquad
    \frac{\partial \ell}{\partial y_{nc}} = g_{nc}\left[\log\sigma(-x) - \log\sigma(x)\right]
    = -g_{nc}\, x_{nc}, \qquad
    \frac{\partial \ell}{\partial w_c} = \sum_n \frac{g_n}{C} l_{nc}.

Surprises in torch (all matched here): it is a composition in Python, so

- the "class dimension" is ``input.dim() - 1`` counted from the front *of the broadcast loss*:
  a 1-d input is one sample (the 'none' result is 0-d), a 3-d input averages over its last dim
  and keeps two, and a target or weight with more dims than the input moves the summed dim;
  ``C = input.size(-1)``; a 0-d input raises IndexError (after everything else is checked);
- input, target and weight broadcast freely (no size warning); the result dtype is the three
  promoted (an integer target or weight is fine, a bool target fails at ``1 - target``);
- target and weight get gradients; an invalid reduction raises ValueError only after the loss is
  computed ("foo is not valid", also for 'elementwise_mean');
- ``C == 0`` gives 0/0 = nan per sample; float16/bfloat16 are rounded after every one of its ten
  ops in torch; we compute in float32 and round once.

Speed: torch runs ten autograd nodes that each write a full-size tensor and keep it. When the
input requires grad (CPU, eager, input and target of one shape and float dtype, no weight or a
per-class one), we walk the rows in cache-sized blocks once: the elementwise loss into a
scratch block (summed per row or in total), and :math:`(\sigma(x) - y)\, w / C` (times 1/N for
'mean') into the one full-size gradient buffer, which backward scales by the upstream gradient.
The short form :math:`\sigma(x) - y` differs from torch's only in nan/inf cases; there the loss
is not finite, and we then recompute everything in torch's form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._math import log_sigmoid
from mylosses._reduction import MEAN, NONE, SUM

_cast = _function.cast
_sum_to = _function.sum_to_like

__all__ = ["MultiLabelSoftMarginLoss", "multilabel_soft_margin_loss"]

# Elements per block of rows (a block and its scratch stay in L2).
BLOCK = 1 << 17

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def _work(input: Tensor, target: Tensor, weight: Tensor | None) -> torch.dtype:
    """The dtype gradients are computed in: torch's result dtype (0-d arguments promote as
    Python numbers do), float32 for float16/bfloat16."""
    dtype = _result_type(input, target)
    if weight is not None:
        dtype = torch.promote_types(dtype, weight.dtype) if weight.dim() else dtype
    return torch.float32 if dtype in _HALF else _REAL.get(dtype, dtype)


def _category(dtype: torch.dtype) -> int:
    return 3 if dtype.is_complex else 2 if dtype.is_floating_point else int(dtype != torch.bool)


def _result_type(a: Tensor, b: Tensor) -> torch.dtype:
    """``torch.result_type(a, b)`` (which dynamo cannot trace): a 0-d tensor beside a
    dimensioned one counts only where its category (bool, integer, float, complex) is higher."""
    if (a.dim() == 0) == (b.dim() == 0) or a.dtype == b.dtype:
        return torch.promote_types(a.dtype, b.dtype)
    dims, zero = (a.dtype, b.dtype) if b.dim() == 0 else (b.dtype, a.dtype)
    return torch.promote_types(dims, zero) if _category(zero) > _category(dims) else dims


def _log_sigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x) in x's dtype (half types computed in float32 and rounded, as torch's)."""
    if x.dtype in _HALF:
        return log_sigmoid(x.float()).to(x.dtype)
    return log_sigmoid(x)


def _log_sigmoids(input: Tensor, work: torch.dtype, literal: bool) -> tuple[Tensor, Tensor]:
    """log sigmoid(x) and log sigmoid(-x) in ``work``: rounded to the input's dtype first where
    ``literal`` (a float32/float64 gradient is compared with torch's directly, and torch's
    log-sigmoids of a half input are rounded), else exact (a half gradient is judged against
    the float64 truth)."""
    if literal:
        return _cast(_log_sigmoid(input), work), _cast(_log_sigmoid(-input), work)
    x = _cast(input, work)
    return log_sigmoid(x), log_sigmoid(-x)


def _unweighted(input: Tensor, target: Tensor) -> Tensor:
    """torch's composition, op for op in torch's dtypes (so its roundings, result dtype and
    nan/inf are torch's): -(y log sigmoid(x) + (1 - y) log sigmoid(-x))."""
    return -(target * _log_sigmoid(input) + (1 - target) * _log_sigmoid(-input))


def _input_derivative(x: Tensor, y: Tensor) -> Tensor:
    """dl/dx in torch's form, (1 - y) sigma(x) - y sigma(-x) (its nan/inf pattern too).
    sigma(+-x) is exp(log sigma(+-x)), as in torch's log-sigmoid backward: for x of -93 in
    float32 it is 3e-41 (subnormal), where ``sigmoid(x)``, 1 / (1 + exp(-x)), underflows to 0
    and an infinite target would make inf * 0 = nan."""
    return (1 - y) * log_sigmoid(x).exp() - y * log_sigmoid(-x).exp()


def _loss(input: Tensor, target: Tensor, weight: Tensor | None, reduction: int) -> Tensor:
    """The loss alone, as torch composes it (evaluation, transforms, and every call the fused
    path does not serve)."""
    loss = _unweighted(input, target)
    if weight is not None:
        loss = loss * weight
    per = loss.sum(input.dim() - 1) / input.shape[-1]
    if reduction == MEAN:
        return per.mean()
    if reduction == SUM:
        return per.sum()
    return per


def _fusable(input: Tensor, target: Tensor, weight: Tensor | None, reduction: int) -> bool:
    """A call the fused path serves: CPU, eager, input and target of one shape and float32 or
    float64 dtype, contiguous, not empty; no weight, or a constant per-class (C,) one."""
    dtype = input.dtype
    if not (
        dtype in _NATIVE
        and target.dtype == dtype
        and input.shape == target.shape
        and input.dim() > 0
        and input.numel() > 0
        and input.device.type == "cpu"
        and input.is_contiguous()
        and target.is_contiguous()
    ):
        return False
    if weight is not None and not (
        weight.dtype == dtype
        and weight.shape == input.shape[-1:]
        and not weight.requires_grad
        and weight.device == input.device
    ):
        return False
    return _function.may_precompute()


def _fused(
    input: Tensor, target: Tensor, weight: Tensor | None, reduction: int
) -> tuple[Tensor, Tensor | None]:
    """The loss and (sigma(x) - y) w / C (times 1/N for 'mean') in one buffer, block by block;
    (general loss, None) where the loss is not finite (the short form's nan/inf differ)."""
    c = input.shape[-1]
    rows = input.numel() // c
    x, y = input.view(rows, c), target.view(rows, c)
    scale = 1.0 / (c * rows) if reduction == MEAN else 1.0 / c
    w = weight.contiguous() if weight is not None else None
    factor: Tensor | float = w * scale if w is not None else scale
    grad = torch.empty_like(x)
    step = max(1, BLOCK // c)
    scratch = torch.empty(min(rows, step), c, dtype=x.dtype)
    per = torch.empty(rows, dtype=x.dtype) if reduction == NONE else None
    partials = []
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        xb, yb, g, s = x[start:stop], y[start:stop], grad[start:stop], scratch[: stop - start]
        torch.abs(xb, out=s)
        s.neg_().exp_().log1p_()  # log(1 + exp(-|x|))
        torch.clamp(xb, min=0, out=g)
        g.addcmul_(yb, xb, value=-1)  # max(x, 0) - y x, exact for y = 1 and x > 0
        s.add_(g)  # l
        if w is not None:
            s.mul_(w)
        if per is not None:
            torch.sum(s, 1, out=per[start:stop])
        else:
            partials.append(s.sum())
        torch.sigmoid(xb, out=g)
        g.sub_(yb).mul_(factor)
    if per is not None:
        loss = per.div_(c).view(input.shape[:-1])
        total = per.sum()
    else:
        total = partials[0] if len(partials) == 1 else torch.stack(partials).sum()
        loss = total * scale
    if not math.isfinite(total.item()):  # the CPU only: no sync
        return _loss(input, target, weight, reduction), None
    return loss, grad.view_as(input)


class _MultiLabelSoftMargin(torch.autograd.Function):
    """The loss of the module docstring; gradients for input, target and weight.

    ``forward(input, target, weight, reduction, precompute)`` returns ``(loss, gradient or
    None)``: with ``precompute`` (``_fusable``) forward also leaves the input's gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor, target: Tensor, weight: Tensor | None, reduction: int, precompute: int
    ) -> tuple[Tensor, Tensor | None]:
        if precompute:
            return _fused(input, target, weight, reduction)
        return _loss(input, target, weight, reduction), None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, weight, reduction, _ = inputs
        _, grad = output
        if grad is not None:
            ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, weight)
        ctx.meta = (reduction, grad is not None)
        _function.stash_gradient(ctx, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        if grad_loss is None:
            return None, None, None, None, None
        need_input, need_target, need_weight = ctx.needs_input_grad[:3]
        reduction, fused = ctx.meta
        grad = _function.take_gradient(ctx)
        if grad is not None and not (need_target or need_weight):
            up = grad_loss.unsqueeze(-1) if reduction == NONE else grad_loss
            return _function.times_upstream(grad, up), None, None, None, None
        input, target, weight = ctx.saved_tensors
        if grad is None and fused and need_input and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again, so the
            # same bits as the first backward (gradcheck checks that backward is reentrant).
            grad = _fused(input, target, weight, reduction)[1]
        work = _work(input, target, weight)
        x, y = _cast(input, work), _cast(target, work)
        w = _cast(weight, work) if weight is not None else None
        full = _validation.broadcast_or_raise(x.shape, y.shape)
        if w is not None:
            full = _validation.broadcast_or_raise(full, w.shape)
        dim, c = input.dim() - 1, input.shape[-1]
        per_shape = full[:dim] + full[dim + 1 :]
        g = _cast(grad_loss, work)
        if reduction == MEAN:
            g = g / math.prod(per_shape)
        g = (g / c).expand(per_shape).unsqueeze(dim).expand(full)  # d loss / d l_nc, unweighted
        gw = g * w if w is not None else g
        grad_input = grad_target = grad_weight = None
        if need_input:
            if grad is not None:
                up = grad_loss.unsqueeze(-1) if reduction == NONE else grad_loss
                grad_input = _function.times_upstream(grad, up)
            else:
                grad_input = _sum_to(_input_derivative(x, y) * gw, input)
        if need_target:
            # log sigmoid(-x) - log sigmoid(x) (= -x)
            ls, nls = _log_sigmoids(input, work, literal=target.dtype not in _HALF)
            grad_target = _sum_to((nls - ls) * gw, target)
        if need_weight and w is not None:
            if weight.dtype in _HALF:  # judged against the truth: exact
                ls, nls = _log_sigmoids(input, work, literal=False)
                loss = -(y * ls + (1 - y) * nls)
                grad_weight = _sum_to(loss * g, weight)
            else:  # compared with torch's directly: torch's roundings, in torch's dtype
                loss = _unweighted(input, target)
                dtype = _result_type(loss, weight)  # half, for a 0-d weight
                up = _cast(grad_loss, dtype)
                if reduction == MEAN:
                    up = up / math.prod(per_shape)
                up = (up / c).expand(per_shape).unsqueeze(dim).expand(full)
                grad_weight = _sum_to(_cast(loss, dtype) * up, weight)
        return grad_input, grad_target, grad_weight, None, None


def _check(input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    """torch's errors in torch's order: log_sigmoid's dtype, target * logsigmoid(input)'s
    broadcast, ``1 - target`` of a bool target, the weight's broadcast, ``input.size(-1)``."""
    if not input.dtype.is_floating_point:
        raise NotImplementedError(
            f'"log_sigmoid_{input.device.type}" not implemented for '
            f"'{_validation.scalar_type_name(input.dtype)}'"
        )
    shape = _validation.broadcast_or_raise(target.shape, input.shape)
    if target.dtype == torch.bool:
        _validation.check_subtractable(input, target)
    if weight is not None:
        _validation.broadcast_or_raise(shape, weight.shape)
    if input.dim() == 0:
        raise IndexError("Dimension specified as -1 but tensor has no dimensions")


def multilabel_soft_margin_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The per-class logistic loss averaged over classes; see
    :class:`torch.nn.MultiLabelSoftMarginLoss`.

    >>> import torch, mylosses
    >>> x, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    >>> mylosses.functional.multilabel_soft_margin_loss(x, y)
    tensor(0.2201)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            multilabel_soft_margin_loss,
            (input, target, weight),
            input,
            target,
            weight=weight,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    _check(input, target, weight)
    if reduction == "mean":
        red = MEAN
    elif reduction == "none":
        red = NONE
    elif reduction == "sum":
        red = SUM
    else:
        raise ValueError(f"{reduction} is not valid")
    if not _function.needs_autograd(input, target, weight):
        return _loss(input, target, weight, red)
    precompute = int(input.requires_grad and _fusable(input, target, weight, red))
    return _function.apply(_MultiLabelSoftMargin, input, target, weight, red, precompute)[0]


class MultiLabelSoftMarginLoss(torch.nn.MultiLabelSoftMarginLoss):
    __doc__ = torch.nn.MultiLabelSoftMarginLoss.__doc__

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return multilabel_soft_margin_loss(
            input, target, weight=self.weight, reduction=self.reduction
        )
