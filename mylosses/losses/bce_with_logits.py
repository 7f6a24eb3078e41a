r"""Binary cross entropy on logits: ``BCEWithLogitsLoss`` / ``binary_cross_entropy_with_logits``.

Forward, for a logit :math:`x`, a target :math:`y \in [0, 1]`, an optional weight :math:`w` and
an optional ``pos_weight`` :math:`p` (both broadcast to the input), with
:math:`\log\sigma(x) = -\log(1 + e^{-x})`:

.. math::

    l_n = w_n \left[ (1 - y_n)\, x_n - \lambda_n \log\sigma(x_n) \right], \qquad
    \lambda_n = 1 + (p_n - 1)\, y_n,

which is :math:`-w [p\, y \log\sigma(x) + (1 - y) \log(1 - \sigma(x))]`, because
:math:`\log(1 - \sigma(x)) = \log\sigma(x) - x`. It is computed in that form, never through
:math:`\sigma(x)`: :math:`\log\sigma(x) = \min(x, 0) - \log(1 + e^{-|x|})` exponentiates only
non-positive numbers, so logits of :math:`\pm 10^4` give exact losses (:math:`10^4 (1 - y)` and
:math:`10^4 p y`) where :math:`\log\sigma(x)` by way of :math:`\sigma(x)` would give
:math:`\log 0 = -\infty`. The reduction is 'none', 'sum' or 'mean' (divided by the number of
elements, whatever the weights).

Backward, with :math:`\frac{d}{dx}\log\sigma(x) = \sigma(-x) = 1 - \sigma(x)` and :math:`g_n` the
upstream gradient times the reduction's factor:

.. math::

    \frac{\partial \ell}{\partial x_n} = g_n w_n \left[\lambda_n \sigma(x_n) - p_n y_n\right]
    \quad (= g_n w_n (\sigma(x_n) - y_n) \text{ without } p), \qquad
    \frac{\partial \ell}{\partial y_n} = g_n w_n \left[\log\sigma(-x_n) - p_n \log\sigma(x_n)
    \right] \quad (= -g_n w_n x_n \text{ without } p).

The second derivatives follow from :math:`\sigma'(x) = \sigma(x)\sigma(-x)`; double backward
differentiates the formulas above, written with differentiable ops (a small Function gives
:math:`\log\sigma` its exact derivative :math:`\sigma(-x)`, also at :math:`x = 0` where the
:math:`|x|` of the stable form has a kink).

Surprises in torch:

- the result has the *target's* dtype (torch computes ``(1 - target).mul_(input)`` in place):
  a float64 input with a float32 target gives float32, and an integer target is rejected
  ("result type Float can't be cast to the desired output type Long");
- ``pos_weight`` and ``weight`` broadcast with any shape that does not grow the input (a
  ``(C,)`` pos_weight over ``(N, C)`` is the documented use; ``(N, 1)`` or ``(1, C)`` work too),
  and neither may require grad: torch has no derivative for them and raises when grad mode is on;
- the target is not checked to lie in [0, 1], and it gets a gradient;
- ``inf`` logits give ``nan`` where :math:`0 \cdot \infty` appears (``x = +\infty`` with
  ``y = 1``, and ``x = -\infty`` always), exactly as the formula above says.

Speed: torch runs log-sigmoid, the pos_weight product and three in-place ops in forward, then
another six full passes in backward. Here forward walks the input in cache-sized blocks
(``mylosses/_binary.py``) computing the loss and the input's gradient at once, leaving the
gradient in the one full-size buffer for backward to scale (``mylosses/_function.py``), or
return as it is for an upstream gradient of exactly 1. A reduced, unweighted input of up to a
block takes a short path (``_small``) of a dozen whole-tensor ops, as the fixed cost of each
op (a few µs) is the time there: :math:`-\log\sigma(x)` is one ``logaddexp(-x, 0)``, which
torch evaluates in the stable form above.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _binary, _function, _math, _reduction, _validation
from mylosses._pointwise import compute_dtype
from mylosses._reduction import MEAN, NONE

_cast = _function.cast

__all__ = ["BCEWithLogitsLoss", "binary_cross_entropy_with_logits"]

_NATIVE = (torch.float32, torch.float64)

# The Function's ``mode`` argument, a bit set: EAGER, forward may use its fused kernel (no
# functorch transform, no compile); INPUT/TARGET, it also leaves that gradient for backward.
# SMALL: forward takes ``_small``.
EAGER, INPUT, TARGET, SMALL = 1, 2, 4, 8


def _flat(t: Tensor) -> Tensor:
    return t.view(-1)


# -- the fused kernel (eager) ------------------------------------------------------------------


def _fused_block(
    x: Tensor,
    t: Tensor,
    c: float | Tensor,
    lw0: Tensor | None,
    pm1: Tensor | None,
    pw: Tensor | None,
    out: Tensor | None,
    g: Tensor | None,
    tg: Tensor | None,
    s: Tensor,
    s2: Tensor | None,
    s3: Tensor | None,
) -> Tensor | None:
    """One block: the loss (summed, or elementwise into ``out``) and the gradients into ``g``
    (input) and ``tg`` (target), all already multiplied by ``c``.

    ``x``, ``t`` and every buffer are contiguous and of one shape; ``c`` is the reduction's
    factor (a float) or that times the weight (a tensor, broadcast). With a pos_weight, ``lw0``
    is the constant of :math:`\\lambda` (1, or ``c`` when ``c`` is a float: then ``pm1`` and
    ``pw``, broadcast, carry the factor too, so that no pass is spent on it).
    """
    weighted = isinstance(c, Tensor)
    torch.abs(x, out=s).neg_().exp_().log1p_()  # s = log(1 + e^-|x|)
    ls = g if g is not None else s2  # log sigma(x) = min(x, 0) - s
    assert ls is not None
    torch.clamp(x, max=0, out=ls).sub_(s)
    if tg is not None:
        if pw is None:
            torch.mul(x, -c if not weighted else -1.0, out=tg)  # -x
            if weighted:
                tg.mul_(c)
        else:
            # log sigma(-x) - p log sigma(x), with log sigma(-x) = min(-x, 0) - s
            torch.neg(x, out=tg).clamp_(max=0).sub_(s)
            if not weighted:
                if c != 1.0:
                    tg.mul_(c)
                tg.addcmul_(ls, pw, value=-1)
            else:
                tg.addcmul_(ls, pw, value=-1).mul_(c)
    lw = None
    if pm1 is not None and lw0 is not None:
        lw = torch.addcmul(lw0, t, pm1, out=s)  # lambda = 1 + (p - 1) y (times c)
    total = None
    if out is not None or weighted:
        # The elementwise loss, (1 - y) x - lambda log sigma(x) (times c).
        e = out if out is not None else s3
        assert e is not None
        torch.neg(t, out=e).add_(1).mul_(x)
        if lw is not None:
            e.addcmul_(lw, ls, value=-1)
        else:
            e.sub_(ls)
        if weighted:
            e.mul_(c)
        if out is None:
            total = e.sum()
    else:
        # The elementwise loss summed, not sum((1 - y) x) - sum(lambda log sigma(x)): for logits
        # of 1e3 those two sums cancel and float32 would keep only a few digits of the rest.
        assert s3 is not None
        e = torch.neg(t, out=s3).add_(1).mul_(x)  # 1 - y: exact, 0 * inf stays nan as in torch
        if lw is not None:  # lambda carries c already
            if c != 1.0:
                e.mul_(c)
            total = e.addcmul_(lw, ls, value=-1).sum()
        else:
            total = e.sub_(ls).sum()
            if c != 1.0:
                total = total * c
    if g is not None:
        g.exp_()  # sigma(x) = exp(log sigma(x))
        if lw is not None and pw is not None and lw0 is not None:
            # (p y + 1 - y) sigma(x) - p y: torch's form of lambda here, which is nan (not
            # +-inf) for an infinite target; lw0 and pw carry c when it is a float.
            lw = torch.addcmul(lw0, t, pw, out=s)
            lw.sub_(t) if isinstance(c, Tensor) else lw.sub_(t, alpha=c)
            g.mul_(lw).addcmul_(t, pw, value=-1)
            if weighted:
                g.mul_(c)
        else:
            g.sub_(t)
            if weighted or c != 1.0:
                g.mul_(c)
    return total


def _small(
    x: Tensor,
    t: Tensor,
    pos_weight: Tensor | None,
    reduction: int,
    need_input: bool,
    need_target: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
    r"""``_fused`` for a small, unweighted, reduced call of one native dtype (a batch of a few
    rows), where every op's fixed cost counts: the same arithmetic in the fewest ops, with
    cached 0-d constants instead of Python numbers (``mylosses/_binary.py``) and broadcasting
    instead of blocks.

    One liberty, checked: the input's gradient reuses forward's :math:`\lambda = 1 + (p - 1) y`
    where torch computes :math:`p y + 1 - y`. The two differ beyond rounding only where one is
    not finite (an infinite target or pos_weight), and then the sum is not finite either: such
    a call returns None, for ``_fused`` to compute in torch's form."""
    one = _binary.ONE
    # -log sigma(x) = log(1 + e^-x) = logaddexp(-x, 0), which torch evaluates in the stable
    # form max(-x, 0) + log1p(e^-|x|) in one op
    nls = torch.logaddexp(x.neg(), _binary.ZERO)
    e = one.sub(t).mul_(x)  # (1 - y) x
    lam = None
    if pos_weight is None:
        total = e.add_(nls).sum()
    else:
        lam = torch.addcmul(one, t, pos_weight.sub(one))  # 1 + (p - 1) y
        total = e.addcmul_(lam, nls).sum()
    v = float(total)
    if v - v != 0:  # not finite (v - v is nan)
        return None
    mean = reduction == MEAN
    sc = _binary.scale_tensor(x.numel(), x.dtype) if mean else None
    if sc is not None:
        total.mul_(sc)
    g = tg = None
    if need_target:
        # log sigma(-x) - p log sigma(x) = -logaddexp(x, 0) + p nls; -x without a pos_weight
        if pos_weight is None:
            tg = x.neg()
        else:
            tg = torch.logaddexp(x, _binary.ZERO).neg_().addcmul_(nls, pos_weight)
        if sc is not None:
            tg.mul_(sc)
    if need_input:
        g = x.sigmoid()
        if lam is None or pos_weight is None:
            g.sub_(t)
        else:
            g.mul_(lam).addcmul_(t, pos_weight, value=-1)  # lambda sigma(x) - p y
        if sc is not None:
            g.mul_(sc)
    return total, g, tg


def _is_small(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: int,
) -> bool:
    """Whether ``_small`` may compute this call (the caller has checked the shapes)."""
    return (
        weight is None
        and reduction != NONE
        and input.dtype in _NATIVE
        and target.dtype == input.dtype
        and 0 < input.numel() <= _binary.SMALL
        and input.is_contiguous()
        and target.is_contiguous()
        and (pos_weight is None or pos_weight.dtype == input.dtype)
    )


def _fused(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: int,
    need_input: bool,
    need_target: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The loss (in the work dtype) and the wanted gradients times the reduction's factor
    (in the work dtype, before the upstream gradient), by blocks where the layout allows."""
    if _is_small(input, target, weight, pos_weight, reduction):
        short = _small(input, target, pos_weight, reduction, need_input, need_target)
        if short is not None:
            return short
    shape = input.shape
    n = input.numel()
    work = compute_dtype(torch.promote_types(input.dtype, target.dtype))
    scale = _reduction.reduction_scale(reduction, n)
    inner: int | None = 1
    for w in (weight, pos_weight):
        if w is not None and inner is not None:
            span = _binary.suffix_span(w, shape)
            inner = None if span is None else max(inner, span)
    blocked = (
        n > _binary.BLOCK
        and inner is not None
        and input.dtype == work
        and target.dtype == work
        and input.is_contiguous()
        and target.is_contiguous()
    )
    if blocked:
        assert inner is not None
        x, t = input, target
        rows = n // inner
        weight_v = None if weight is None else _binary.periodic_vector(weight, shape, inner, work)
        pos_v = (
            None if pos_weight is None else _binary.periodic_vector(pos_weight, shape, inner, work)
        )
    else:
        x = _cast(input, work).contiguous()
        t = _cast(target, work).contiguous()
        weight_v = None if weight is None else _cast(weight, work)
        pos_v = None if pos_weight is None else _cast(pos_weight, work)
    c: float | Tensor = scale if weight_v is None else weight_v * scale
    lw0 = pm1 = pw = None
    if pos_v is not None:
        pm1 = pos_v - 1
        pw = pos_v
        if weight_v is None:
            pm1, pw = pm1 * scale, pw * scale
            lw0 = torch.full((), scale, dtype=work, device=input.device)
        else:
            lw0 = torch.ones((), dtype=work, device=input.device)
    new = input.new_empty
    out = new(shape, dtype=work) if reduction == NONE else None
    g = new(shape, dtype=work) if need_input else None
    tg = new(shape, dtype=work) if need_target else None
    if not blocked:
        s = new(shape, dtype=work)
        s2 = None if g is not None else new(shape, dtype=work)
        s3 = None if out is not None else new(shape, dtype=work)
        total = _fused_block(x, t, c, lw0, pm1, pw, out, g, tg, s, s2, s3)
    else:
        assert inner is not None
        blocks = _binary.spans(n, inner)
        size = max((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in blocks)
        scratch = new((3 if g is None else 2, size), dtype=work)
        partials = []

        def cut(buf: Tensor | None, r0: int, r1: int, c0: int, c1: int) -> Tensor | None:
            return None if buf is None else buf.view(rows, inner)[r0:r1, c0:c1]

        for r0, r1, c0, c1 in blocks:
            k = (r1 - r0) * (c1 - c0)
            bshape = (r1 - r0, c1 - c0)
            rest = [scratch[i, :k].view(bshape) for i in range(scratch.shape[0])]
            s = rest[0]
            s2 = rest[1] if g is None else None
            s3 = rest[-1] if out is None else None
            cb = c if not isinstance(c, Tensor) else c[c0:c1]
            part = _fused_block(
                cut(x, r0, r1, c0, c1),  # type: ignore[arg-type]
                cut(t, r0, r1, c0, c1),  # type: ignore[arg-type]
                cb,
                lw0,
                None if pm1 is None else pm1[c0:c1],
                None if pw is None else pw[c0:c1],
                cut(out, r0, r1, c0, c1),
                cut(g, r0, r1, c0, c1),
                cut(tg, r0, r1, c0, c1),
                s,
                s2,
                s3,
            )
            if part is not None:
                partials.append(part)
        total = torch.stack(partials).sum() if partials else None
    if out is not None:
        return out, g, tg
    assert total is not None
    if n == 0 and reduction == MEAN:
        total = total * float("nan")  # the mean of nothing is 0/0, as in torch
    return total, g, tg


# -- the differentiable formulas (compile, vmap, double backward) ------------------------------


def _target_is_finer(input: Tensor, target: Tensor) -> bool:
    """A target of a more precise dtype than the input's (float32 input, float64 target):
    torch computes the log-sigmoids in the input's dtype and the rest in the target's, and we
    do the same, because the result, of the target's dtype, is compared at its precision."""
    return target.dtype != input.dtype and target.dtype == torch.promote_types(
        input.dtype, target.dtype
    )


def _log_sigmoid_of(input: Tensor, sign: float, work: torch.dtype, fn: Any) -> Tensor:
    """``fn(sign * input)`` (a log-sigmoid) in the work dtype; computed in the input's own
    precision and rounded to it first where torch does that (``_target_is_finer``)."""
    own = compute_dtype(input.dtype)
    if own == work:
        return fn(sign * _cast(input, work))
    return _cast(_cast(fn(sign * _cast(input, own)), input.dtype), work)


def _plain_log_sigmoid(x: Tensor) -> Tensor:
    return x.clamp(max=0) - (-x.abs()).exp().log1p()


def _loss_formula(
    input: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None, reduction: int
) -> Tensor:
    """The loss with plain out-of-place ops, in torch's form."""
    work = compute_dtype(torch.promote_types(input.dtype, target.dtype))
    x, t = _cast(input, work), _cast(target, work)
    if work.is_complex:  # a complex target: torch's formula on the real input's log-sigmoid
        log_sig = _cast(_plain_log_sigmoid(_cast(input, compute_dtype(input.dtype))), work)
    elif _target_is_finer(input, target):
        log_sig = _log_sigmoid_of(input, 1.0, work, _plain_log_sigmoid)
    else:
        log_sig = _plain_log_sigmoid(x)
    if pos_weight is not None:
        log_sig = log_sig * ((_cast(pos_weight, work) - 1) * t + 1)
    loss = (1 - t) * x - log_sig
    if weight is not None:
        loss = loss * _cast(weight, work)
    return _reduction.apply_reduction(loss, reduction)


def _grad_formulas(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    grad_loss: Tensor,
    reduction: int,
    need_input: bool,
    need_target: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Both gradients with differentiable ops (module docstring), in the work dtype."""
    work = compute_dtype(torch.promote_types(input.dtype, target.dtype))
    x, t = _cast(input, work), _cast(target, work)
    c = _reduction.expand_grad(_cast(grad_loss, work), reduction, x.shape)
    if weight is not None:
        c = c * _cast(weight, work)
    p = None if pos_weight is None else _cast(pos_weight, work)
    grad_input = grad_target = None
    if need_input:
        sig = torch.sigmoid(x)
        d = sig - t if p is None else (p * t + 1 - t) * sig - p * t
        grad_input = d * c
    if need_target:
        if p is None:
            d = -x
        else:
            if _target_is_finer(input, target):
                d = _log_sigmoid_of(input, -1.0, work, _math.log_sigmoid) - p * _log_sigmoid_of(
                    input, 1.0, work, _math.log_sigmoid
                )
            else:
                d = _math.log_sigmoid(-x) - p * _math.log_sigmoid(x)
        grad_target = d * c
    return grad_input, grad_target


# -- the Function ------------------------------------------------------------------------------


class _BCEWithLogits(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        weight: Tensor | None,
        pos_weight: Tensor | None,
        reduction: int,
        mode: int,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if mode & SMALL:
            out = _small(
                input, target, pos_weight, reduction, bool(mode & INPUT), bool(mode & TARGET)
            )
            if out is not None:
                return out
        out_dtype = target.dtype
        if not mode & EAGER:
            return (
                _cast(_loss_formula(input, target, weight, pos_weight, reduction), out_dtype),
                None,
                None,
            )
        loss, g, tg = _fused(
            input, target, weight, pos_weight, reduction, bool(mode & INPUT), bool(mode & TARGET)
        )
        return _cast(loss, out_dtype), g, tg

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, weight, pos_weight, reduction, mode = inputs
        _, g, tg = output
        if g is not None:
            ctx.mark_non_differentiable(g)
        if tg is not None:
            ctx.mark_non_differentiable(tg)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, weight, pos_weight)
        ctx.meta = (reduction, mode)
        ctx.stash = (g, tg) if g is not None or tg is not None else None

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _g: None, _tg: None) -> tuple:
        if grad_loss is None:
            return None, None, None, None, None, None
        need_input, need_target = ctx.needs_input_grad[:2]
        stash = ctx.stash
        if stash is not None and not torch.is_grad_enabled():
            # The usual case, first: forward left every wanted gradient (the saved tensors are
            # not even unpacked).
            g, tg = stash
            if (g is not None or not need_input) and (tg is not None or not need_target):
                ctx.stash = None
                if not _function.upstream_is_one(grad_loss):
                    g = _function.times_upstream(g, grad_loss) if need_input else None
                    tg = _function.times_upstream(tg, grad_loss) if need_target else None
                return (
                    g if need_input else None,
                    tg if need_target else None,
                    None,
                    None,
                    None,
                    None,
                )
        input, target, weight, pos_weight = ctx.saved_tensors
        reduction, mode = ctx.meta
        stash, ctx.stash = ctx.stash, None
        g = tg = None
        if not torch.is_grad_enabled():
            if stash is not None:
                g, tg = stash
            if (
                ((need_input and g is None) or (need_target and tg is None))
                and mode & EAGER
                and _function.may_precompute()
            ):
                # A second backward through a retained graph: forward's kernel again.
                _, g, tg = _fused(
                    input, target, weight, pos_weight, reduction, need_input, need_target
                )
        if (need_input and g is None) or (need_target and tg is None):
            g, tg = _grad_formulas(
                input, target, weight, pos_weight, grad_loss, reduction, need_input, need_target
            )
        else:
            g = None if g is None or not need_input else _function.times_upstream(g, grad_loss)
            tg = None if tg is None or not need_target else _function.times_upstream(tg, grad_loss)
        grad_input = _cast(g, input.dtype) if need_input and g is not None else None
        grad_target = _cast(tg, target.dtype) if need_target and tg is not None else None
        return grad_input, grad_target, None, None, None, None


_apply_logits = super(torch.autograd.Function, _BCEWithLogits).apply


def _suffix_of(a: torch.Size, b: torch.Size) -> bool:
    """Whether shape ``a`` is a trailing part of shape ``b`` (the usual pos_weight ``(C,)``):
    then it broadcasts to ``b`` without growing it, and needs no further check."""
    k = len(a)
    return k <= len(b) and a == b[len(b) - k :]


# -- the functional and the module -------------------------------------------------------------


def _not_differentiable(weight: Tensor | None, pos_weight: Tensor | None) -> None:
    for name, w in (("weight", weight), ("pos_weight", pos_weight)):
        if w is not None and w.requires_grad:
            raise RuntimeError(
                "The function 'binary_cross_entropy_with_logits' is not differentiable with "
                f"respect to argument '{name}'. This input cannot have requires_grad True."
            )


def _check_dtypes(input: Tensor, target: Tensor, pos_weight: Tensor | None) -> None:
    """torch's errors, in its order: log-sigmoid of the input, ``pos_weight - 1``, ``1 - target``
    and the in-place product into the target's dtype."""
    if not input.dtype.is_floating_point:
        name = _validation.scalar_type_name(input.dtype)
        raise NotImplementedError(
            f"\"log_sigmoid_{input.device.type}\" not implemented for '{name}'"
        )
    if pos_weight is not None and pos_weight.dtype == torch.bool:
        raise RuntimeError(
            "Subtraction, the `-` operator, with a bool tensor is not supported. "
            "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead."
        )
    if target.dtype == torch.bool:
        raise RuntimeError(
            "Subtraction, the `-` operator, with two bool tensors is not supported. "
            "Use the `^` or `logical_xor()` operator instead."
        )
    if not (target.dtype.is_floating_point or target.dtype.is_complex):
        promoted = torch.promote_types(input.dtype, target.dtype)
        raise RuntimeError(
            f"result type {_validation.scalar_type_name(promoted)} can't be cast to the "
            f"desired output type {_validation.scalar_type_name(target.dtype)}"
        )


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Binary cross entropy between logits and targets; see :class:`torch.nn.BCEWithLogitsLoss`.

    >>> import torch, mylosses
    >>> x = torch.tensor([0.0, 1e4, -1e4])
    >>> mylosses.functional.binary_cross_entropy_with_logits(x, torch.tensor([1.0, 1.0, 1.0]))
    tensor(3333.5645)
    """
    if has_torch_function_variadic(input, target, weight, pos_weight):
        return handle_torch_function(
            binary_cross_entropy_with_logits,
            (input, target, weight, pos_weight),
            input,
            target,
            weight=weight,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
            pos_weight=pos_weight,
        )
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    if target.shape != input.shape:
        raise ValueError(
            f"Target size ({target.size()}) must be the same as input size ({input.size()})"
        )
    if (
        _is_small(input, target, weight, pos_weight, red)
        and _function.may_precompute()
        and (pos_weight is None or _suffix_of(pos_weight.shape, input.shape))
    ):
        # A batch of a few rows: the shortest path (the eager short kernel, as below).
        if not _function.needs_autograd(input, target, pos_weight):
            out = _small(input, target, pos_weight, red, False, False)
            if out is not None:
                return out[0]
        elif pos_weight is None or not pos_weight.requires_grad:
            mode = EAGER | SMALL | (INPUT if input.requires_grad else 0)
            if target.requires_grad:
                mode |= TARGET
            # may_precompute(): no transform, no compile, so the plain apply (_function.apply)
            return _apply_logits(input, target, None, pos_weight, red, mode)[0]
    grad_on = _function.needs_autograd(input, target, weight, pos_weight)
    if grad_on:
        _not_differentiable(weight, pos_weight)
    if not (input.dtype in _NATIVE and target.dtype == input.dtype):
        _check_dtypes(input, target, pos_weight)
    if pos_weight is not None:
        _binary.broadcast_into(pos_weight.shape, target.shape, input.shape)
    if weight is not None:
        if weight.is_complex():
            raise RuntimeError(
                f"result type {_validation.scalar_type_name(weight.dtype)} can't be cast to "
                f"the desired output type {_validation.scalar_type_name(target.dtype)}"
            )
        _binary.broadcast_into(input.shape, weight.shape, input.shape)
    if target.is_complex() and grad_on:
        raise RuntimeError(
            "binary_cross_entropy_with_logits does not support automatic differentiation for "
            "outputs with complex dtype."
        )
    fused = _function.may_precompute() and not (
        target.dtype != input.dtype and _target_is_finer(input, target)
    )
    if not grad_on:
        if fused:
            loss = _fused(input, target, weight, pos_weight, red, False, False)[0]
        else:
            loss = _loss_formula(input, target, weight, pos_weight, red)
        return _cast(loss, target.dtype)
    mode = 0
    if fused:
        mode = (
            EAGER | (INPUT if input.requires_grad else 0) | (TARGET if target.requires_grad else 0)
        )
    return _function.apply(_BCEWithLogits, input, target, weight, pos_weight, red, mode)[0]


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    __doc__ = torch.nn.BCEWithLogitsLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )
