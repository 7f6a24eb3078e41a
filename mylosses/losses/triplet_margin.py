r"""Triplet margin loss: ``TripletMarginLoss`` / ``triplet_margin_loss``.

An anchor :math:`a` should be closer to a positive example :math:`p` than to a negative one
:math:`n`, by a margin. With the distance of torch's ``pairwise_distance`` over the last
dimension (:math:`\epsilon` is added to every component of the difference),

.. math::

    d(x, y) = \lVert x - y + \epsilon \rVert_p, \qquad
    d^- = \begin{cases} \min\{d(a, n),\, d(p, n)\} & \text{swap} \\ d(a, n) & \text{else}
          \end{cases}

.. math::

    l = \max\{(m + d(a, p)) - d^-,\ 0\}, \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum l & \text{'sum'} \\
           \frac{1}{N} \sum l & \text{'mean'} \end{cases}

Backward. Write :math:`u_{xy} = \partial d(x, y) / \partial x = -\partial d(x, y) / \partial y`
for the norm's gradient at :math:`\delta = x - y + \epsilon` (``mylosses/_math.py``: for
:math:`p = 2` it is :math:`\delta / d`), :math:`c = g\,[z \ge 0]` with :math:`z` the argument
of the max and :math:`g` the upstream gradient times the reduction's factor, and split
:math:`c` between the two candidates of the swap: :math:`w_{an} + w_{pn} = c`, all of it to the
smaller distance, half each on a tie. Then

.. math::

    \nabla_a \ell = c\,u_{ap} - w_{an} u_{an}, \qquad
    \nabla_p \ell = -c\,u_{ap} - w_{pn} u_{pn}, \qquad
    \nabla_n \ell = w_{an} u_{an} + w_{pn} u_{pn},

which sum to zero (shifting all three inputs together changes no distance), so
:math:`\nabla_a = -(\nabla_p + \nabla_n)`.

Surprises in torch (all matched here):

- the clamp's slope at exactly :math:`z = 0` (a tie at the margin) is 1, not 0; at a tie
  :math:`d(a, n) = d(p, n)` each distance gets half the gradient (``torch.minimum``'s rule);
- torch's norm conventions where the gradient is undefined: 0 where the distance is 0
  (:math:`a - p = -\epsilon` exactly), 0 for zero components when :math:`p < 1`, the gradient
  shared equally among tied maxima for :math:`p = \infty`; :math:`p = 0` (a count) gives no
  gradient at all (None, not zeros); negative and fractional :math:`p` are accepted, and an
  empty last dimension is an error for :math:`p < 0` and :math:`p = \pm\infty`;
- 0-d inputs are one-component vectors; inputs broadcast (size-1 dimensions), but must have
  the same number of dimensions; integer inputs give a float32 loss (the ``+ eps`` promotes,
  after the subtraction, which wraps around in uint8 as torch's does); bool inputs raise at the
  subtraction; complex inputs give a real loss with complex gradients; the result has the
  promoted dtype of the two distances, each computed in its pair's dtype.

Speed: torch runs ``sub``, ``add``, ``norm`` for each pair, then ``add``, ``sub``, ``clamp_min``
and the reduction, and in backward a chain of full-size temporaries per pair. For a reduced
loss of equally shaped contiguous float32/float64 inputs with :math:`p \in \{1, 2\}` our forward
computes each difference once into the buffer that becomes a gradient: :math:`\delta_{ap}` (into
what becomes :math:`\nabla_p`), :math:`\delta_{an}` (:math:`\nabla_n`), their norms, the hinge,
per-row coefficients, then scales the buffers in place and forms :math:`\nabla_a` from them:
three full-size buffers, the three gradients (four with swap). Backward multiplies them by the
upstream gradient (or does nothing when it is 1). Small calls (a batch of a few rows, p = 2, no
swap, 'mean' or 'sum') take a short path with as few Python-level ops as it can (``_short``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._math import grad_for, norm_backward, pairwise_distance, sum_to, vector_norm
from mylosses._reduction import MEAN, NONE, SUM

_cast = _function.cast

__all__ = ["TripletMarginLoss", "triplet_margin_loss"]

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)


def _pair_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    """The dtype of ``x - y + eps``: the promoted one, float32 (the default) for integers."""
    dtype = torch.promote_types(x.dtype, y.dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        return torch.get_default_dtype()
    return dtype


def _real(dtype: torch.dtype) -> torch.dtype:
    return dtype.to_real() if dtype.is_complex else dtype


def pair_work(x: Tensor, y: Tensor) -> torch.dtype:
    """The dtype one distance is computed in: its pair's (torch computes each distance in its
    own pair's dtype and promotes afterwards), float32 for the half dtypes (rounded once at
    the end)."""
    work = _pair_dtype(x, y)
    if work in _HALF:
        return torch.float32
    return torch.complex64 if work == torch.complex32 else work


def result_dtype(a: Tensor, p: Tensor, n: Tensor, swap: bool) -> torch.dtype:
    """The promoted dtype of the (real) distances."""
    result = torch.promote_types(_real(_pair_dtype(a, p)), _real(_pair_dtype(a, n)))
    if swap:
        result = torch.promote_types(result, _real(_pair_dtype(p, n)))
    return result


def _difference(x: Tensor, y: Tensor, eps: float, work: torch.dtype) -> Tensor:
    """``x - y + eps`` in ``work``; integers are subtracted in their own dtype first (as torch
    does: uint8 wraps around), bools raise torch's error."""
    if x.dtype == torch.bool or y.dtype == torch.bool:
        _validation.check_subtractable(x, y)
    if not (x.is_floating_point() or x.is_complex() or y.is_floating_point() or y.is_complex()):
        return (x - y).to(work) + eps
    return _cast(x, work) - _cast(y, work) + eps


def _minimum_split(c: Tensor, r_an: Tensor, r_pn: Tensor) -> tuple[Tensor, Tensor]:
    """torch.minimum's gradient rule: all of ``c`` to the smaller, half each on a tie."""
    tie = r_an == r_pn
    half = c / 2
    w_an = torch.where(tie, half, c).masked_fill(r_an > r_pn, 0)
    w_pn = torch.where(tie, half, c).masked_fill(r_pn > r_an, 0)
    return w_an, w_pn


# -- the loss alone ------------------------------------------------------------------------------


def hinge_rows(
    a: Tensor, p: Tensor, n: Tensor, margin: float, pnorm: float, eps: float, swap: bool
) -> Tensor:
    """:math:`z = (m + d(a, p)) - d^-` per row, in the work dtype."""
    r_ap = vector_norm(_difference(a, p, eps, pair_work(a, p)), pnorm)
    r_neg = vector_norm(_difference(a, n, eps, pair_work(a, n)), pnorm)
    if swap:
        r_pn = vector_norm(_difference(p, n, eps, pair_work(p, n)), pnorm)
        r_neg = torch.minimum(r_neg, r_pn)
    return (margin + r_ap) - r_neg


def _loss(
    a: Tensor,
    p: Tensor,
    n: Tensor,
    margin: float,
    pnorm: float,
    eps: float,
    swap: bool,
    reduction: int,
) -> Tensor:
    """The loss without autograd (evaluation, and the forward of the unfused calls)."""
    result = result_dtype(a, p, n, swap)
    loss = hinge_rows(a, p, n, margin, pnorm, eps, swap).clamp_min(0)
    return _cast(_reduction.apply_reduction(loss, reduction), result)


# -- the fused pass --------------------------------------------------------------------------------


def _fused(
    a: Tensor,
    p: Tensor,
    n: Tensor,
    margin: float,
    pnorm: float,
    eps: float,
    swap: bool,
    weight: float | Tensor,
    needs: int,
) -> tuple[Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """z per row, and the gradients of the inputs in ``needs`` (bits 1, 2, 4: a, p, n) for the
    per-row weight ``weight`` (the reduction's factor, or the upstream gradient of 'none'),
    each written into one fresh buffer (module docstring). Inputs of one shape, contiguous,
    one float32/float64 dtype, at least 1-d; ``pnorm`` is 1 or 2."""
    shape = a.shape
    width = shape[-1]
    a2, p2, n2 = a.view(-1, width), p.view(-1, width), n.view(-1, width)
    x = torch.sub(a2, p2).add_(eps)  # delta_ap, becomes -grad_p
    r_ap = vector_norm(x, pnorm)
    y = torch.sub(a2, n2).add_(eps)  # delta_an, becomes grad_n
    r_an = vector_norm(y, pnorm)
    s = r_pn = None
    r_neg = r_an
    if swap:
        s = torch.sub(p2, n2).add_(eps)  # delta_pn
        r_pn = vector_norm(s, pnorm)
        r_neg = torch.minimum(r_an, r_pn)
    z = (margin + r_ap) - r_neg
    if isinstance(weight, Tensor):
        c = torch.where(z >= 0, _cast(weight.reshape(-1), z.dtype), 0.0)
    else:
        c = (z >= 0).to(z.dtype)
        if weight != 1.0:
            c.mul_(weight)
    w_an, w_pn = _minimum_split(c, r_an, r_pn) if r_pn is not None else (c, None)

    def scale_(d: Tensor, w: Tensor, r: Tensor) -> Tensor:
        if pnorm == 1.0:
            return d.sgn_().mul_(w.unsqueeze(-1))
        return d.mul_((w / r).masked_fill_(r == 0, 0).unsqueeze(-1))

    x = scale_(x, c, r_ap)  # c u_ap
    y = scale_(y, w_an, r_an)  # w_an u_an
    grad_a = torch.sub(x, y).view(shape) if needs & 1 else None
    if s is not None and w_pn is not None and r_pn is not None:
        s = scale_(s, w_pn, r_pn)  # w_pn u_pn
        x.add_(s)
        y.add_(s)
    grad_p = x.neg_().view(shape) if needs & 2 else None
    grad_n = y.view(shape) if needs & 4 else None
    return z.view(shape[:-1]), (grad_a, grad_p, grad_n)


def _fusable(a: Tensor, p: Tensor, n: Tensor, pnorm: float) -> bool:
    return (
        (pnorm == 2.0 or pnorm == 1.0)
        and a.dtype in _NATIVE
        and a.dtype == p.dtype == n.dtype
        and a.dim() > 0
        and a.shape == p.shape == n.shape
        and a.numel() > 0
        and a.is_contiguous()
        and p.is_contiguous()
        and n.is_contiguous()
    )


# -- gradients with differentiable ops -----------------------------------------------------------


def _gradients(
    a: Tensor,
    p: Tensor,
    n: Tensor,
    margin: float,
    pnorm: float,
    eps: float,
    swap: bool,
    reduction: int,
    grad: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients of any call, written with differentiable ops in torch's order (double
    backward), broadcasting and dtypes included. The distances in the gradient come from
    ``pairwise_distance``, whose own backward makes the second derivative torch's."""
    if pnorm == 0.0:
        return None, None, None  # torch: the p = 0 norm has no gradient
    differentiable = torch.is_grad_enabled()

    def distance(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        work = pair_work(x, y)
        x, y = _cast(x, work), _cast(y, work)
        d = x - y + eps
        r = pairwise_distance(x, y, pnorm, eps) if differentiable else vector_norm(d, pnorm)
        return d, r

    d_ap, r_ap = distance(a, p)
    d_an, r_an = distance(a, n)
    r_neg = r_an
    d_pn = r_pn = None
    if swap:
        d_pn, r_pn = distance(p, n)
        r_neg = torch.minimum(r_an, r_pn)
    with torch.no_grad():
        z = (margin + r_ap) - r_neg
        active = z >= 0
    g = _reduction.expand_grad(_cast(grad, z.dtype), reduction, active.shape)
    c = torch.where(active, g, 0.0)  # clamp_min's backward
    g_neg = -c
    if r_pn is not None:
        g_an, g_pn = _minimum_split(g_neg, r_an.detach(), r_pn.detach())
    else:
        g_an, g_pn = g_neg, None

    def through(g_r: Tensor, d: Tensor, r: Tensor) -> Tensor:
        g_r = _cast(sum_to(g_r, r.shape), r.dtype)
        if d.dim():
            g_r, r = g_r.unsqueeze(-1), r.unsqueeze(-1)
        out = norm_backward(g_r, d, pnorm, r)
        assert out is not None
        return out

    gd_ap = through(c, d_ap, r_ap)
    gd_an = through(g_an, d_an, r_an)
    gd_pn = None
    if g_pn is not None and d_pn is not None and r_pn is not None:
        gd_pn = through(g_pn, d_pn, r_pn)
    grad_a = grad_p = grad_n = None
    if needs[0]:
        grad_a = grad_for(sum_to(gd_ap, a.shape) + sum_to(gd_an, a.shape), a)
    if needs[1]:
        gp = -sum_to(gd_ap, p.shape)
        if gd_pn is not None:
            gp = gp + sum_to(gd_pn, p.shape)
        grad_p = grad_for(gp, p)
    if needs[2]:
        gn = -sum_to(gd_an, n.shape)
        if gd_pn is not None:
            gn = gn - sum_to(gd_pn, n.shape)
        grad_n = grad_for(gn, n)
    return grad_a, grad_p, grad_n


# -- the Function --------------------------------------------------------------------------------


class _TripletMargin(torch.autograd.Function):
    """The triplet margin loss and its gradients w.r.t. anchor, positive and negative.

    ``forward(a, p, n, margin, pnorm, eps, swap, reduction, precompute)`` returns
    ``(loss, grad_a, grad_p, grad_n)``: ``precompute`` is a bit mask: 8 where the fused pass
    may serve (a fusable call in eager mode), and 1, 2, 4 for the inputs (a, p, n) that require
    grad in a reduced call: their gradients are computed in forward and stashed for backward;
    else they are None.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        a: Tensor,
        p: Tensor,
        n: Tensor,
        margin: float,
        pnorm: float,
        eps: float,
        swap: bool,
        reduction: int,
        precompute: int,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        if precompute & 7:
            rows = a.numel() // a.shape[-1]
            scale = _reduction.reduction_scale(reduction, rows)
            z, grads = _fused(a, p, n, margin, pnorm, eps, swap, scale, precompute & 7)
            loss = z.clamp_min_(0)
            loss = loss.mean() if reduction == MEAN else loss.sum()
            return (loss, *grads)
        return _loss(a, p, n, margin, pnorm, eps, swap, reduction), None, None, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        a, p, n, margin, pnorm, eps, swap, reduction, precompute = inputs
        grads = output[1:]
        stashed = [g for g in grads if g is not None]
        if stashed:
            ctx.mark_non_differentiable(*stashed)
            ctx.stashed_gradients = grads
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a, p, n)
        ctx.options = (margin, pnorm, eps, swap, reduction, bool(precompute & 8))

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, *_stashed: None) -> tuple:
        nothing = (None,) * 6
        needs = ctx.needs_input_grad[:3]
        if grad_loss is None or not any(needs):
            return (None, None, None, *nothing)
        stashed = getattr(ctx, "stashed_gradients", None)
        ctx.stashed_gradients = None
        if stashed is not None and not torch.is_grad_enabled():
            # forward's gradients (used once): times the upstream gradient, in place
            return (
                *(
                    _function.times_upstream(g, grad_loss) if g is not None and need else None
                    for g, need in zip(stashed, needs, strict=True)
                ),
                *nothing,
            )
        a, p, n = ctx.saved_tensors
        margin, pnorm, eps, swap, reduction, fusable = ctx.options
        if (
            fusable  # (eager mode only)
            and not torch.is_grad_enabled()
            and not _function.batched(grad_loss)
            and (reduction == NONE or grad_loss.dim() == 0)
        ):
            # A retained graph's second backward, or a 'none' reduction: the fused pass.
            mask = needs[0] | needs[1] << 1 | needs[2] << 2
            rows = a.numel() // a.shape[-1]
            if reduction == NONE:
                weight: float | Tensor = grad_loss
            else:
                weight = grad_loss * _reduction.reduction_scale(reduction, rows)
                weight = weight.expand(rows)
            grads = _fused(a, p, n, margin, pnorm, eps, swap, weight, mask)[1]
            return (*grads, *nothing)
        grads = _gradients(a, p, n, margin, pnorm, eps, swap, reduction, grad_loss, needs)
        return (*grads, *nothing)


# -- the short path -------------------------------------------------------------------------------
#
# The common small call: p = 2, no swap, 'mean' or 'sum', three plain CPU tensors of one shape
# (at least 1-d, at most _SHORT elements) and one float32/float64 dtype, in eager mode. At a
# batch of 8 every op and every Python check costs microseconds, about what torch's whole
# kernel takes, so this path is a Function of its own that does the least. A *plan* per call
# signature (shapes, dtypes, reduction, margin, eps), made once, holds the constants as
# tensors (a Python number would be wrapped into one on every call); looking it up replaces
# the checks of later calls. Both differences are formed at once, :math:`D = a - [p; n] +
# \epsilon` (shape (2, ..., D)), with one norm :math:`r = (r_{ap}, r_{an})`; with
# :math:`k = (-s, s)` (s the reduction's factor) the gradients are
#
#     G = D * (k [z >= 0] / r)  (0 where r = 0, torch's order: d * (g / r)),
#     grad_p = G[0],  grad_n = G[1],  grad_a = -(G[0] + G[1]).
#
# Backward hands them out, times the upstream gradient unless that is exactly 1 (reading a CPU
# scalar costs less than three multiplications); a second backward through a retained graph
# reruns the kernel, and a double backward recomputes with differentiable ops (``_gradients``).
# _TripletShort is in the old style (forward takes ctx), so that forward hands the gradients it
# made to ctx directly: the functional never applies it under a functorch transform or
# torch.compile.

_SHORT = 1 << 14  # elements per input: above, the fused pass's fewer buffers win


class _Plan:
    __slots__ = ("eps", "eps_t", "k", "margin", "margin_t", "n", "reduction", "zero")

    def __init__(
        self, shape: torch.Size, dtype: torch.dtype, reduction: int, margin: float, eps: float
    ) -> None:
        rows = math.prod(shape[:-1])
        s = 1.0 / rows if reduction == MEAN else 1.0
        self.reduction = reduction
        self.margin, self.eps = margin, eps  # (for _gradients)
        self.margin_t = torch.tensor(margin, dtype=dtype)
        self.eps_t = torch.tensor(eps, dtype=dtype)
        self.k = torch.tensor([-s, s], dtype=dtype).view((2,) + (1,) * len(shape))
        self.n = torch.tensor(float(rows), dtype=dtype) if reduction == MEAN else None
        self.zero = torch.zeros((), dtype=dtype)


_PLANS: dict[tuple, _Plan | None] = {}
_UNSEEN = _Plan(torch.Size([1]), torch.float32, MEAN, 1.0, 0.0)  # (a sentinel)


def _plan(
    key: tuple, a: Tensor, p: Tensor, n: Tensor, reduction: int, margin: float, eps: float
) -> _Plan | None:
    """The plan of a call signature (see above), or None where it does not qualify."""
    plan = None
    if (
        a.dtype in _NATIVE
        and a.dtype == p.dtype == n.dtype
        and a.dim() > 0
        and a.shape == p.shape == n.shape
        and 0 < a.numel() <= _SHORT
    ):
        plan = _Plan(a.shape, a.dtype, reduction, margin, eps)
    if len(_PLANS) >= 32:  # (a training loop has one or two signatures)
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _short(
    a: Tensor, p: Tensor, n: Tensor, plan: _Plan, need_grad: bool
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """(loss, (grad_a, grad_p, grad_n) before the upstream factor, or None), see above."""
    zero = plan.zero
    D = torch.sub(a, torch.stack((p, n))).add_(plan.eps_t)
    r = _vector_norm(D, 2, -1, True)
    r_ap, r_an = r
    z = (plan.margin_t + r_ap) - r_an
    loss = z.clamp_min(0).sum()
    if plan.n is not None:
        loss = loss.div_(plan.n)
    if not need_grad:
        return loss, None
    G = D.mul_(plan.k.mul(z >= zero).div_(r).masked_fill_(r == zero, 0))
    grad_p, grad_n = G
    return loss, (torch.sum(G, 0).neg_(), grad_p, grad_n)


class _TripletShort(torch.autograd.Function):
    """The short path's loss and gradients (see above)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, p: Tensor, n: Tensor, plan: _Plan) -> Tensor:
        # saved so that autograd notices an in-place change of an input before a second
        # backward (the gradients depend on their values)
        ctx.save_for_backward(a, p, n)
        ctx.plan = plan
        loss, ctx.stashed_gradients = _short(a, p, n, plan, True)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        grads = _function.short_backward(ctx, grad, _short_again, _short_derivative)
        return (
            *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:3], strict=True)),
            None,
        )


def _short_again(ctx: Any) -> tuple[Tensor, Tensor, Tensor]:
    """A retained graph's second backward: forward's kernel again (the same bits)."""
    a, p, n = ctx.saved_tensors
    grads = _short(a, p, n, ctx.plan, True)[1]
    assert grads is not None  # (asked for)
    return grads


def _short_derivative(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    """Double backward: the gradients with differentiable ops."""
    a, p, n = ctx.saved_tensors
    plan, needs = ctx.plan, ctx.needs_input_grad[:3]
    return _gradients(a, p, n, plan.margin, 2.0, plan.eps, False, plan.reduction, grad, needs)


_vector_norm = torch.linalg.vector_norm
_grad_enabled = torch.is_grad_enabled
_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
_transforms_active = _function.transforms_active
_is_compiling = _function._is_compiling
_SHORT_APPLY = super(torch.autograd.Function, _TripletShort).apply  # (see _function.apply)
_FAST_APPLY = _function.apply


def short(
    a: Tensor, p: Tensor, n: Tensor, margin: float, eps: float, reduction: int
) -> Tensor | None:
    """The loss of a valid call with p = 2 and no swap by the short path (see above), or None
    where the tensors do not qualify."""
    if (
        not (
            type(a) is Tensor
            and type(p) is Tensor
            and type(n) is Tensor
            and a.is_cpu
            and p.is_cpu
            and n.is_cpu
        )
        or _transforms_active()
        or _is_compiling()
    ):
        return None
    key = (a.shape, p.shape, n.shape, a.dtype, p.dtype, n.dtype, reduction, margin, eps)
    plan = _PLANS.get(key, _UNSEEN)
    if plan is _UNSEEN:
        plan = _plan(key, a, p, n, reduction, margin, eps)
    if plan is None:
        return None
    if not (_grad_enabled() and (a.requires_grad or p.requires_grad or n.requires_grad)):
        return _short(a, p, n, plan, False)[0]
    if _function.apply is _FAST_APPLY:
        return _SHORT_APPLY(a, p, n, plan)
    return _function.apply(_TripletShort, a, p, n, plan)


# -- checks and the functional -------------------------------------------------------------------


def check_dims(a: Tensor, p: Tensor, n: Tensor) -> None:
    """torch's check: the three inputs have the same number of dimensions (they broadcast)."""
    if not (a.dim() == p.dim() == n.dim()):
        raise RuntimeError(
            "The anchor, positive, and negative tensors are expected to have the same number "
            f"of dimensions, but got: anchor {a.dim()}D, positive {p.dim()}D, and negative "
            f"{n.dim()}D inputs"
        )


def triplet(
    a: Tensor,
    p: Tensor,
    n: Tensor,
    margin: float,
    pnorm: float,
    eps: float,
    swap: bool,
    reduction: int,
) -> Tensor:
    """The loss after the argument checks (shared with ``triplet_margin_with_distance_loss``
    without a distance function, which is this with p = 2, eps = 1e-6)."""
    check_dims(a, p, n)
    if not _function.needs_autograd(a, p, n):
        return _loss(a, p, n, margin, pnorm, eps, swap, reduction)
    precompute = 0  # bit 8: the fused pass may serve backward; bits 1, 2, 4: forward's grads
    if _fusable(a, p, n, pnorm) and _function.may_precompute():
        precompute = 8
        if reduction != NONE:
            precompute |= a.requires_grad | p.requires_grad << 1 | n.requires_grad << 2
    return _function.apply(
        _TripletMargin, a, p, n, margin, pnorm, eps, swap, reduction, precompute
    )[0]


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2,
    eps: float = 1e-06,
    swap: bool = False,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The triplet loss max(d(a, p) - d(a, n) + margin, 0) with the p-norm distance; see
    :class:`torch.nn.TripletMarginLoss`.

    >>> import torch, mylosses
    >>> a, p, n = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    >>> mylosses.functional.triplet_margin_loss(a, p, n, eps=0.0)
    tensor(5.)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(anchor, positive, negative):
        return handle_torch_function(
            triplet_margin_loss,
            (anchor, positive, negative),
            anchor,
            positive,
            negative,
            margin=margin,
            p=p,
            eps=eps,
            swap=swap,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    # The short path (see _TripletShort): plain valid arguments, p = 2, no swap, 'mean' or 'sum'.
    if (
        swap is False
        and size_average is None
        and reduce is None
        and (reduction == "mean" or reduction == "sum")
        and type(margin) is float
        and margin > 0.0
        and (type(p) is int or type(p) is float)
        and p == 2
        and type(eps) is float
    ):
        loss = short(anchor, positive, negative, margin, eps, MEAN if reduction == "mean" else SUM)
        if loss is not None:
            return loss
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    name = "triplet_margin_loss"
    margin = _validation.float_argument(name, "margin", 4, margin)
    pnorm = _validation.float_argument(name, "p", 5, p)
    eps = _validation.float_argument(name, "eps", 6, eps)
    if type(swap) is not bool:
        raise TypeError(
            f"{name}(): argument 'swap' (position 7) must be bool, not {type(swap).__name__}"
        )
    return triplet(anchor, positive, negative, margin, pnorm, eps, swap, red)


class TripletMarginLoss(torch.nn.TripletMarginLoss):
    __doc__ = torch.nn.TripletMarginLoss.__doc__

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_margin_loss(
            anchor,
            positive,
            negative,
            margin=self.margin,
            p=self.p,
            eps=self.eps,
            swap=self.swap,
            reduction=self.reduction,
        )
