r"""Multi-label margin (hinge) loss: ``MultiLabelMarginLoss`` / ``multilabel_margin_loss``.

Each row of the target lists the sample's classes, padded with ``-1``: the first ``-1`` ends the
list (anything after it is ignored, though still range-checked). With :math:`T_n` the list of
row :math:`n` (a class listed twice counts twice) and :math:`\bar T_n` the classes *not* in it,
every (target, non-target) pair costs a unit-margin hinge:

.. math::

    z_{njk} = (1 - x_{nj}) + x_{nk}, \qquad
    L_n = \frac{1}{C} \sum_{j \in T_n} \sum_{k \in \bar T_n} [z_{njk} > 0]\, z_{njk}, \qquad
    \ell = \begin{cases} L & \text{'none'} \\ \sum_n L_n & \text{'sum'} \\
           \frac{1}{N}\sum_n L_n & \text{'mean'} \end{cases}

Backward: the loss is piecewise linear, and each active pair (:math:`z > 0`) moves its
non-target score up and its target score down by the same amount. With :math:`s_n = g_n / C`
(:math:`g_n` the upstream gradient, divided by N for 'mean'),

.. math::

    \frac{\partial \ell}{\partial x_{nk}} = s_n \sum_{j \in T_n} [z_{njk} > 0] \quad
    (k \in \bar T_n), \qquad
    \frac{\partial \ell}{\partial x_{nj}} = -s_n\, m_{nj} \sum_{k \in \bar T_n} [z_{njk} > 0]
    \quad (j \in T_n),

with :math:`m_{nj}` the number of times :math:`j` is listed. The target gets no gradient (it
holds indices). The second derivative is 0 away from the kinks :math:`z = 0`.

**Beyond torch**: torch has no double backward here ("derivative for
aten::multilabel_margin_loss_backward is not implemented"); ours returns the gradient above as a
constant pattern times the upstream gradient, with differentiable ops (gradgradcheck passes:
the derivative w.r.t. the upstream gradient is the pattern, w.r.t. the input 0).

Surprises in torch's CPU kernel (all matched here):

- the indicator is ``z > 0``: a tie costs nothing and has gradient 0, and a NaN ``z`` (a NaN
  score, :math:`\infty - \infty`) is skipped. We take ``fmax(z, 0)``, which drops NaN alike;
- inputs are (N, C), (C,) or 0-d (one class), the target has the input's shape (a 0-d input
  takes a 0-d or one-element target); 'none' gives (N,) for a 2-d target, else a 0-d loss;
  float32/float64 only, an int64 target; values below -1 or from C up anywhere in the target
  raise ("argument #2 'target' is out of range"); checks run in that order;
- an empty batch with 'mean' or 'sum' returns torch's uninitialised memory; we return nan
  (0/0) and 0.

Speed: torch's kernel is a serial loop over rows, targets and classes, about 9 ns per
(target, class) pair forward and as much again backward. We find each row's list with one
``min`` over the target (a row's first -1 is its first minimum), enumerate the listed
(row, target) pairs, and for blocks of them compute the whole row of :math:`z` at once: the
row's scores plus :math:`1 - x_{nj}`, clamped at 0, the row's listed classes zeroed (a scatter
of the pair's row's list: no masked copy of the scores), the pair's loss as its sum, and (when
the input requires grad) ``sign`` of it, added, times the scale, to the row's gradient with
``index_add_`` and, counted, subtracted at the target. With finite scores no :math:`z` is NaN
and ``clamp`` (vectorised) does; otherwise ``fmax`` (30 times slower on the CPU) drops NaN.
Forward leaves that gradient for backward. A small batch with grad takes a short path with
the fewest ops: one dense (N, S, C) block, S the longest list, NaN dropped by ``nansum``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE

__all__ = ["MultiLabelMarginLoss", "multilabel_margin_loss"]

# Elements of z computed at once (pairs per block times C).
BLOCK = 1 << 17

_NATIVE = (torch.float32, torch.float64)
_ZEROS = {dtype: torch.zeros((), dtype=dtype) for dtype in _NATIVE}


def _zero(dtype: torch.dtype) -> Tensor:
    z = _ZEROS.get(dtype)
    return z if z is not None else torch.zeros((), dtype=dtype)


def _scale(reduction: int, n: int, c: int) -> float:
    return 1.0 / (n * c) if reduction == MEAN and n else 1.0 / c


def _lists(t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """For an (N, C) target: the listed slots (before the first negative entry), the target
    with negative entries replaced by 0 (a safe index), and whether each class is listed."""
    valid = (t < 0).cumsum(1) == 0
    safe = t.clamp(min=0)
    counts = torch.zeros(t.shape, dtype=dtype, device=t.device).scatter_add(
        1, safe, valid.to(dtype)
    )
    return valid, safe, counts > 0


def _reduce(per: Tensor, reduction: int, out_shape: torch.Size) -> Tensor:
    if reduction == NONE:
        return per.reshape(out_shape)
    total = per.sum()
    return total / per.shape[0] if reduction == MEAN else total


def _dense(
    x: Tensor, t: Tensor, reduction: int, out_shape: torch.Size, want_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """The loss (and d loss / d x for an upstream gradient of 1) over every (row, slot, class)
    at once, blocks of rows at a time, out of place: transforms, compile, double backward."""
    n, c = x.shape
    valid, safe, listed = _lists(t, x.dtype)
    minus_inf = torch.full((), -math.inf, dtype=x.dtype, device=x.device)
    a = torch.where(valid, 1 - x.gather(1, safe), minus_inf)  # 1 - x_j, -inf past the list
    vx = torch.where(listed, minus_inf, x)  # x_k, -inf at listed classes
    zero = _zero(x.dtype).to(x.device)
    step = max(1, BLOCK // (c * c))
    pers, grads = [], []
    for start in range(0, n, step):
        z = a[start : start + step].unsqueeze(2) + vx[start : start + step].unsqueeze(1)
        pers.append(torch.fmax(z, zero).sum((1, 2)))
        if want_grad:
            active = (z > 0).to(x.dtype)
            d = active.sum(1).scatter_add(1, safe[start : start + step], -active.sum(2))
            grads.append(d)
    per = (pers[0] if len(pers) == 1 else torch.cat(pers)) if pers else x.new_zeros(0)
    loss = _reduce(per / c, reduction, out_shape)
    if not want_grad:
        return loss, None
    d = (grads[0] if len(grads) == 1 else torch.cat(grads)) if grads else torch.zeros_like(x)
    return loss, d * _scale(reduction, n, c)


def _pairs(t: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """The listed (row, target) pairs of an (N, C) target, row-major: each pair's row, its
    listed class, and per row its listed classes padded (with the row's first) to the longest
    list. None when no row lists a class."""
    n, c = t.shape
    low, first = t.min(1)  # the first -1 of a row is its first minimum
    count = torch.where(low < 0, first, c)
    most = int(count.max()) if n else 0
    if not most:
        return None
    listed = t[:, :most]
    ok = torch.arange(most).unsqueeze(0) < count.unsqueeze(1)
    return (
        torch.repeat_interleave(count),
        listed[ok],
        torch.where(ok, listed, listed[:, :1].clamp(min=0)),
    )


def _walk(
    x: Tensor, t: Tensor, reduction: int, out_shape: torch.Size, want_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """The loss (and its gradient for an upstream gradient of 1, in one fresh buffer) over the
    listed (row, target) pairs, a block of pairs at a time (module docstring). Eager CPU."""
    n, c = x.shape
    scale = _scale(reduction, n, c)
    grad = torch.zeros((n, c), dtype=x.dtype) if want_grad else None
    found = _pairs(t)
    if found is None:
        per = torch.zeros(n, dtype=x.dtype)
        return _reduce(per, reduction, out_shape), grad
    rows, tj, lists = found
    xc = x if x.is_contiguous() else x.contiguous()
    flat = torch.add(tj, rows, alpha=c)  # n c + j per pair
    a = torch.rsub(xc.view(-1).index_select(0, flat), 1.0)  # 1 - x_j per pair
    # With finite scores z is never NaN (at worst an infinite sum), and clamp drops z <= 0 at a
    # fraction of fmax's cost; else fmax drops NaN z as torch's z > 0 does.
    finite = math.isfinite(float(xc.sum()))
    zero = _zero(x.dtype)
    pairs = rows.numel()
    step = max(1, BLOCK // c)
    pair_loss = torch.empty(pairs, dtype=x.dtype)
    z = torch.empty((min(pairs, step), c), dtype=x.dtype)
    for start in range(0, pairs, step):
        stop = min(start + step, pairs)
        r = rows[start:stop]
        zb = z[: stop - start]
        torch.index_select(xc, 0, r, out=zb)
        zb.add_(a[start:stop].unsqueeze(1))  # (1 - x_j) + x_k
        if finite:
            zb.clamp_min_(0)
        else:
            torch.fmax(zb, zero, out=zb)
        zb.scatter_(1, lists.index_select(0, r), 0.0)  # no pair with a listed class
        torch.sum(zb, 1, out=pair_loss[start:stop])
        if grad is not None:
            zb.sign_()
            grad.index_add_(0, r, zb, alpha=scale)
            grad.view(-1).index_add_(0, flat[start:stop], zb.sum(1), alpha=-scale)
    per = torch.zeros(n, dtype=x.dtype).index_add_(0, rows, pair_loss)
    return _reduce(per.div_(c), reduction, out_shape), grad


def _as_rows(t: Tensor) -> Tensor:
    return t if t.dim() == 2 else t.reshape(1, -1)


class _MultiLabelMargin(torch.autograd.Function):
    """The loss of the module docstring; the gradient w.r.t. the input (the target holds
    indices). ``forward(input, target, reduction, precompute)`` returns ``(loss, gradient or
    None)``: with ``precompute`` forward also leaves the input's gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor, target: Tensor, reduction: int, precompute: int
    ) -> tuple[Tensor, Tensor | None]:
        out_shape = _out_shape(target, reduction)
        x, t = _as_rows(input), _as_rows(target)
        if precompute:
            loss, grad = _walk(x, t, reduction, out_shape, True)
            return loss, grad.view(input.shape) if grad is not None else None
        return _dense(x, t, reduction, out_shape, False)[0], None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, reduction, precompute = inputs
        _, grad = output
        if grad is not None:
            ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target)
        ctx.meta = (reduction, bool(precompute))
        _function.stash_gradient(ctx, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return None, None, None, None
        reduction, fused = ctx.meta
        grad = _function.take_gradient(ctx)
        input, target = ctx.saved_tensors
        if grad is None:
            x, t = _as_rows(input), _as_rows(target)
            out_shape = _out_shape(target, reduction)
            if fused and _function.may_precompute():
                # A second backward through a retained graph, or a double backward: forward's
                # computation again (the pattern is a constant; only the upstream gradient
                # below is differentiated).
                with torch.no_grad():
                    grad = _walk(x, t, reduction, out_shape, True)[1]
            else:
                with torch.no_grad():
                    grad = _dense(x, t, reduction, out_shape, True)[1]
            assert grad is not None
            grad = grad.view(input.shape)
            if (
                torch.is_grad_enabled()
                or not _function.may_precompute()
                or _function.batched(grad_loss)
            ):
                return grad * _upstream(grad_loss, input), None, None, None
        return _function.times_upstream(grad, _upstream(grad_loss, input)), None, None, None


# -- the short path ----------------------------------------------------------------------------
# A few rows in eager mode with grad (a training step on a small batch): every op's fixed cost
# counts, so one dense (N, C, C) block with the fewest ops, its NaN handled by nansum instead of
# fmax/comparisons: the listed classes' scores are made -inf by adding -inf (a listed +inf or
# NaN score becomes NaN, dropped like every NaN z), slots past the list get 1 - x_j = -inf.
# The gradient is made in forward and handed to backward (old-style Function: forward has ctx).

SHORT = 1 << 15  # N C C at most


class _Plan:
    __slots__ = ("minus_inf", "minus_scale", "one", "scale", "zero")

    def __init__(self, n: int, c: int, dtype: torch.dtype, reduction: int) -> None:
        scale = _scale(reduction, n, c)
        self.scale = torch.tensor(scale, dtype=dtype)
        self.minus_scale = torch.tensor(-scale, dtype=dtype)
        self.minus_inf = torch.tensor(-math.inf, dtype=dtype)
        self.zero = torch.zeros((), dtype=dtype)
        self.one = torch.ones((), dtype=dtype)


_PLANS: dict[tuple, _Plan] = {}


def _short_plan(input: Tensor, target: Tensor, reduction: int) -> _Plan | None:
    """The plan of a call the short path takes: eager, CPU, a 2-d input with few rows that
    requires grad, 'mean' or 'sum'. None otherwise."""
    shape = input.shape
    if len(shape) != 2 or reduction == NONE or input.device.type != "cpu":
        return None
    key = (shape, input.dtype, reduction)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    n, c = shape
    if not (0 < n * c * c <= SHORT and input.dtype in _NATIVE and target.dim() == 2):
        return None
    if len(_PLANS) >= 32:
        _PLANS.clear()
    plan = _PLANS[key] = _Plan(n, c, input.dtype, reduction)
    return plan


def _short(x: Tensor, t: Tensor, plan: _Plan) -> tuple[Tensor, Tensor]:
    """(loss, gradient for an upstream gradient of 1) over the dense block."""
    listed = t.cummin(1)[0] >= 0  # slots before the first -1
    most = int(listed.sum(1).max())  # the longest list: the block's width
    listed, t = listed[:, :most], t[:, :most]
    safe = t.clamp(min=0)
    a = torch.where(listed, plan.one - x.gather(1, safe), plan.minus_inf)  # 1 - x_j
    vx = x.scatter_add(1, safe, torch.where(listed, plan.minus_inf, plan.zero))  # listed: -inf
    z = a.unsqueeze(2) + vx.unsqueeze(1)
    z.clamp_min_(0)
    loss = z.nansum().mul_(plan.scale)
    z.sign_()
    grad = z.nansum(1).mul_(plan.scale)
    return loss, grad.scatter_add_(1, safe, z.nansum(2).mul_(plan.minus_scale))


def _short_derivative(input: Tensor, target: Tensor, meta: tuple, grad_loss: Tensor) -> Tensor:
    """Double backward: the constant pattern (piecewise linear loss) times the upstream."""
    with torch.no_grad():
        grad = _dense(input, target, meta[1], torch.Size(), True)[1]
    assert grad is not None
    return grad * grad_loss


# The short path's Function (see above): ``apply(input, target, (plan, reduction))``; backward
# uses the gradient forward made.
_Short = _function.short_function(
    "_Short", lambda x, t, meta: _short(x, t, meta[0]), _short_derivative
)


def _upstream(grad_loss: Tensor, input: Tensor) -> Tensor:
    """The upstream gradient, shaped to multiply the input's gradient: (N, 1) for per-row
    losses of a 2-d input, else the one value."""
    if grad_loss.dim() and input.dim() == 2:
        return grad_loss.unsqueeze(-1)
    if grad_loss.dim():
        return grad_loss.reshape(())
    return grad_loss


def _out_shape(target: Tensor, reduction: int) -> torch.Size:
    """'none' gives one loss per row for a 2-d target, a 0-d loss otherwise."""
    if reduction == NONE and target.dim() > 1:
        return target.shape[:1]
    return torch.Size()


def _check(input: Tensor, target: Tensor) -> None:
    """torch's checks in torch's order: shapes; then, for a non-empty input, the target's range,
    the input's dtype, the target's dtype."""
    ndim = input.dim()
    if not (
        (ndim == 2 and input.shape[1] != 0) or (ndim == 1 and input.shape[0] != 0) or ndim == 0
    ):
        raise RuntimeError(
            "Expected non-empty vector or matrix with optional 0-dim batch size, but got: "
            + str(list(input.shape))
        )
    c = input.shape[-1] if ndim else 1
    if ndim <= 1:
        ok = target.dim() <= 1 and target.numel() == c
    else:
        ok = target.dim() == 2 and target.shape == input.shape
    if not ok:
        raise RuntimeError(
            f"inconsistent target size: {list(target.shape)} for input of size: {list(input.shape)}"
        )
    if input.numel() == 0:
        return
    if target.device.type == "cpu" and not (
        _function.transforms_active() or _function._is_compiling()
    ):
        if target.dtype == torch.int64:
            lo, hi = (int(v) for v in torch.aminmax(target))
        else:
            lo, hi = int(target.min()), int(target.max())
        if lo < -1 or hi >= c:
            raise RuntimeError("argument #2 'target' is out of range")
    if input.dtype not in _NATIVE:
        raise NotImplementedError(
            '"multilabel_margin_loss_forward_out_frame" not implemented for '
            f"'{_validation.scalar_type_name(input.dtype)}'"
        )
    if target.dtype != torch.int64:
        raise RuntimeError(
            f"expected scalar type Long but found {_validation.scalar_type_name(target.dtype)}"
        )


def multilabel_margin_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The multi-label hinge loss over (target, non-target) pairs; see
    :class:`torch.nn.MultiLabelMarginLoss`.

    >>> import torch, mylosses
    >>> x = torch.tensor([[0.1, 0.2, 0.4, 0.8]])
    >>> y = torch.tensor([[3, 0, -1, 1]])
    >>> mylosses.functional.multilabel_margin_loss(x, y)
    tensor(0.8500)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            multilabel_margin_loss,
            (input, target),
            input,
            target,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    _check(input, target)
    if input.numel() == 0 and not input.is_floating_point():
        # torch returns before its dtype checks: an empty result of the input's dtype
        return input.new_zeros(_out_shape(target, red))
    eager = input.device.type == "cpu" and _function.may_precompute()
    if eager and torch.is_grad_enabled() and input.requires_grad:
        plan = _short_plan(input, target, red)
        if plan is not None:
            return _function.apply(_Short, input, target, (plan, red))
    if not _function.needs_autograd(input):
        x, t = _as_rows(input), _as_rows(target)
        if eager:
            return _walk(x, t, red, _out_shape(target, red), False)[0]
        return _dense(x, t, red, _out_shape(target, red), False)[0]
    return _function.apply(_MultiLabelMargin, input, target, red, int(eager))[0]


class MultiLabelMarginLoss(torch.nn.MultiLabelMarginLoss):
    __doc__ = torch.nn.MultiLabelMarginLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return multilabel_margin_loss(input, target, reduction=self.reduction)
