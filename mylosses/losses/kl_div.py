r"""Kullback-Leibler divergence: ``KLDivLoss`` / ``kl_div``.

The input :math:`x` holds log-probabilities; the target :math:`y` holds probabilities (or, with
``log_target=True``, log-probabilities :math:`\tilde y = \log y`). Pointwise, as torch's ATen
composition computes it:

.. math::

    l_n = \begin{cases}
        \operatorname{xlogy}(y_n, y_n) - y_n x_n & \text{log\_target=False} \\
        e^{\tilde y_n} (\tilde y_n - x_n) & \text{log\_target=True}
    \end{cases}

where :math:`\operatorname{xlogy}(a, b) = a \log b`, except 0 where :math:`a = 0` (and NaN where
:math:`a` is NaN): a target entry of exactly 0 contributes 0, not NaN. The reduction is
'none', 'sum', 'mean' (the sum over *all* elements divided by their number; torch warns that
this is not the KL divergence) or 'batchmean' (the sum divided by ``input.size(0)``, the true KL
divergence of a batch of distributions).

Backward, with :math:`g_n` the upstream gradient times the reduction's factor (1 for 'sum',
:math:`1/N` for 'mean', :math:`1/B` for 'batchmean'):

.. math::

    \text{log\_target=False:}\quad
    \frac{\partial \ell}{\partial x_n} = -g_n y_n, \qquad
    \frac{\partial \ell}{\partial y_n} = g_n (\log y_n + 1 - x_n)

    \text{log\_target=True:}\quad
    \frac{\partial \ell}{\partial x_n} = -g_n e^{\tilde y_n}, \qquad
    \frac{\partial \ell}{\partial \tilde y_n} = g_n (\tilde y_n - x_n) e^{\tilde y_n}
        + g_n e^{\tilde y_n}

(the derivative of :math:`y \log y` is :math:`\log y + 1`; of :math:`e^{\tilde y}(\tilde y - x)`
by the product rule). The second derivatives are :math:`\partial^2/\partial x \partial y = -g`
and :math:`\partial^2 / \partial y^2 = g / y` (plain target), and :math:`-g e^{\tilde y}`,
:math:`g e^{\tilde y} (\tilde y - x + 2)` (log target); double backward differentiates the
gradient formulas below, written with differentiable ops.

Surprises in torch (all matched here):

- torch differentiates the composition, so the target's gradient is autograd's of
  ``xlogy(y, y)``: ``g * xlogy(y != 0, y) + g * y / y - g * x``. At :math:`y = 0` the term
  :math:`y / y = 0/0` makes it NaN (the loss itself is 0 there); negative targets give NaN
  losses and gradients (the log), but the second derivative :math:`g/y` at a negative target is
  finite. Our target gradient is ``(log y + y / y - x) g``: the same values, NaN where torch's is;
- the input's gradient :math:`-g y` does not depend on the input at all;
- input and target broadcast against each other freely, without torch's size-mismatch warning
  of the regression losses; 'batchmean' divides by the *input's* first size (no division for a
  0-d input), also after the legacy ``size_average``/``reduce`` arguments chose the reduction
  (``reduce=False, reduction='batchmean'`` divides every element by the batch size);
- complex inputs are rejected first ("kl_div: Complex inputs not supported."), then integer and
  bool ones ("kl_div: Integral inputs not supported."), then shapes that do not broadcast;
  half and mixed float dtypes are fine (the result has the promoted dtype);
- an empty 'mean' or 'batchmean' (batch size 0) is 0/0 = NaN.

Speed: torch's composition runs xlogy, mul, sub and sum forward (three full-size temporaries)
and a chain of nodes backward. When the two tensors have one shape and dtype
(float32/float64), are contiguous and something requires grad, our forward walks them once in
cache-sized blocks: the pointwise loss is summed from a scratch block and each requested
gradient is finished in its own buffer while the block is in cache. Backward only multiplies
those buffers by the upstream gradient (``mylosses/_function.py``). When nothing requires grad
the loss is computed directly, without the Function.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE, SUM

_cast = _function.cast
_sum_to = _function.sum_to_like
_take = _function.take_gradients

__all__ = ["KLDivLoss", "kl_div"]

# Elements per block (as in ``mylosses/_pointwise.py``: the blocks stay in a core's L2).
BLOCK = 1 << 17

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)

# ``precompute`` bits: which gradients forward computes (0: none, the loss only).
_X, _T = 1, 2

_MEAN_WARNING = (
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release."
)


def _work_dtype(x: Tensor, t: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(result dtype, computing dtype): torch's promotion (a 0-d tensor does not promote a
    dimensioned one of its category); half results computed in float32."""
    if (x.dim() == 0) == (t.dim() == 0):
        res = torch.promote_types(x.dtype, t.dtype)
    else:  # two floating dtypes (kl_div rejects others): the dimensioned one's
        res = t.dtype if x.dim() == 0 else x.dtype
    return res, (torch.float32 if res in _HALF else res)


def _pointwise(x: Tensor, t: Tensor, log_target: bool) -> Tensor:
    """The unreduced loss, with torch's ops in torch's order (so the same NaN/inf pattern)."""
    if log_target:
        return torch.exp(t) * (t - x)
    return torch.xlogy(t, t) - t * x


def _finish(total: Tensor, reduction: int, numel: int, divisor: float | None) -> Tensor:
    """'mean' divides the sum by the element count; 'batchmean' then by the batch size."""
    if reduction == MEAN:
        total = total / numel
    if divisor is not None:
        total = total / divisor
    return total


def _loss(x: Tensor, t: Tensor, reduction: int, log_target: bool, divisor: float | None) -> Tensor:
    """The loss alone (evaluation, vmap, compile, and calls the fused path does not serve)."""
    res, work = _work_dtype(x, t)
    x, t = _cast(x, work), _cast(t, work)
    loss = _pointwise(x, t, log_target)
    numel = loss.numel()
    if reduction != NONE:
        loss = loss.sum()
    return _cast(_finish(loss, reduction, numel, divisor), res)


def _scale(reduction: int, numel: int, divisor: float | None) -> float:
    """d(reduced) / d(l_n): 1, 1/N for 'mean', times 1/B for 'batchmean'."""
    if numel == 0:
        return 0.0
    scale = 1.0 / numel if reduction == MEAN else 1.0
    if divisor is not None:
        scale = scale / divisor
    return scale


def _block(
    x: Tensor,
    t: Tensor,
    log_target: bool,
    scale: Tensor | None,
    nscale: Tensor,
    u: Tensor,
    w: Tensor,
    gx: Tensor | None,
    gt: Tensor | None,
    reduce: bool,
) -> Tensor:
    """One flat block of the fused pass: returns the pointwise loss (left in ``u`` or ``w``,
    working space both), or its sum if ``reduce``, and writes the gradients times the
    reduction's factor (``scale``, a 0-d tensor, None for 1; ``nscale`` its negative) into
    ``gx`` and ``gt`` (those not None). ``gx`` is written last: it may be ``w`` itself (with a
    log target, or where the loss is summed)."""
    if log_target:
        torch.exp(t, out=w)  # e = exp(y~)
        torch.sub(t, x, out=u)  # y~ - x
        if gt is not None:  # (s (y~ - x)) e + s e, torch's order of ops
            if scale is None:
                torch.mul(u, w, out=gt)
                gt.add_(w)
            else:
                torch.mul(u, scale, out=gt)
                gt.mul_(w)
                gt.add_(w * scale)
        u.mul_(w)  # e (y~ - x)
        loss = u.sum() if reduce else u
        if gx is not None:
            torch.mul(w, nscale, out=gx)  # -s e
        return loss
    torch.log(t, out=w)
    if gt is not None:  # s (log y + y / y - x): NaN at y = 0 as torch's
        torch.div(t, t, out=gt)
        gt.add_(w).sub_(x)
        if scale is not None:
            gt.mul_(scale)
    # xlogy(y, y) = y log y, and 0 at y = 0: log 0 = -inf raised to the lowest finite number,
    # times 0, is 0 (torch.xlogy itself is not vectorised: 14 times slower than log).
    w.clamp_min_(_LOWEST[w.dtype])
    w.mul_(t)
    w.addcmul_(t, x, value=-1)  # xlogy(y, y) - y x
    loss = w.sum() if reduce else w
    if gx is not None:
        torch.mul(t, nscale, out=gx)  # -s y
    return loss


_LOWEST = {dtype: torch.finfo(dtype).min for dtype in _NATIVE}
# 0-d tensors of the reduction's factors, by (value, dtype): an operand of a 0-d tensor costs
# microseconds less than a Python number, and making one costs as much again.
_SCALARS: dict[tuple[float, torch.dtype], Tensor] = {}


def _scalar(value: float, dtype: torch.dtype) -> Tensor:
    key = (value, dtype)
    found = _SCALARS.get(key)
    if found is None:
        if len(_SCALARS) > 256:
            _SCALARS.clear()
        found = _SCALARS[key] = torch.scalar_tensor(value, dtype=dtype)
    return found


def _fused(
    x: Tensor, t: Tensor, reduction: int, log_target: bool, divisor: float | None, need: int
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The loss and the scaled gradients that ``need`` asks for, in one pass (module
    docstring). Two tensors of one shape and dtype (float32/float64), contiguous, not empty."""
    n = x.numel()
    dtype = x.dtype
    s = _scale(reduction, n, divisor)
    scale = None if s == 1.0 else _scalar(s, dtype)
    nscale = _scalar(-s, dtype)
    gx = torch.empty_like(x) if need & _X else None
    gt = torch.empty_like(x) if need & _T else None
    if reduction == NONE or n <= BLOCK:
        reduce = reduction != NONE
        # Working space: the input's gradient itself where it may be (``_block``).
        w = gx if gx is not None and (reduce or log_target) else torch.empty_like(x)
        u = torch.empty_like(x) if log_target else w  # (the plain target's needs one buffer)
        loss = _block(x, t, log_target, scale, nscale, u, w, gx, gt, reduce)
        if not reduce:
            return (loss if divisor is None else loss.div_(divisor)), gx, gt
        total = loss
    else:
        a, b = x.view(-1), t.view(-1)
        fx = None if gx is None else gx.view(-1)
        ft = None if gt is None else gt.view(-1)
        spare: Tensor | None = None
        if fx is None:
            spare = torch.empty(BLOCK, dtype=dtype, device=x.device)
        scratch = torch.empty(BLOCK, dtype=dtype, device=x.device) if log_target else None
        partials = []
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            sl = slice(start, stop)
            size = stop - start
            bx = None if fx is None else fx[sl]
            bt = None if ft is None else ft[sl]
            bw = bx if bx is not None else spare[:size]  # type: ignore[index]
            bu = bw if scratch is None else scratch[:size]
            partials.append(_block(a[sl], b[sl], log_target, scale, nscale, bu, bw, bx, bt, True))
        total = torch.stack(partials).sum()
    if reduction == MEAN:
        total.div_(n)
    if divisor is not None:
        total.div_(divisor)
    return total, gx, gt


def _gradients(
    x: Tensor,
    t: Tensor,
    reduction: int,
    log_target: bool,
    divisor: float | None,
    grad_loss: Tensor,
    need: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None]:
    """Both gradients from the saved inputs with differentiable ops, as autograd differentiates
    torch's composition (double backward, broadcast, half and mixed-dtype calls)."""
    _, work = _work_dtype(x, t)
    xw, tw = _cast(x, work), _cast(t, work)
    shape = torch.broadcast_shapes(x.shape, t.shape)
    numel = 1
    for size in shape:
        numel *= size
    g = _cast(grad_loss, work)
    if divisor is not None:
        g = g / divisor
    if reduction == MEAN:
        g = g / numel
    g = g.expand(shape) if reduction != NONE else g
    # torch's graph: the target-only factor (exp(y~) or xlogy(y, y)) has the target's shape,
    # so its gradient is summed to that shape before it is multiplied (0 * inf = NaN for an
    # empty broadcast included).
    grad_x = grad_t = None
    if log_target:
        e = torch.exp(tw)
        ge = g * e
        if need[0]:
            grad_x = _sum_to(-ge, x)
        if need[1]:
            grad_t = _sum_to(_sum_to(g * (tw - xw), tw) * e + _sum_to(ge, tw), t)
    else:
        if need[0]:
            grad_x = _sum_to(-g * tw, x)
        if need[1]:
            gs = _sum_to(g, tw)
            nonzero = (tw != 0).to(work)
            grad_t = gs * torch.xlogy(nonzero, tw) + gs * tw / tw + _sum_to(-g * xw, tw)
            grad_t = _sum_to(grad_t, t)
    return grad_x, grad_t


class _KLDiv(torch.autograd.Function):
    """l = xlogy(y, y) - y x (or e^y~ (y~ - x)); gradients w.r.t. the input and the target.

    ``forward(input, target, reduction, log_target, divisor, precompute)`` returns the loss and
    the two stashed gradients (None where not computed). ``reduction`` is NONE, SUM or MEAN;
    ``divisor`` the batch size of 'batchmean' (None: no division). With ``precompute`` (bits
    ``_X``, ``_T``: a call of one shape and float32/float64 dtype, contiguous and not empty, in
    eager mode) forward computes the requested gradients and stashes them for backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        reduction: int,
        log_target: bool,
        divisor: float | None,
        precompute: int,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if precompute:
            return _fused(input, target, reduction, log_target, divisor, precompute)
        return _loss(input, target, reduction, log_target, divisor), None, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, reduction, log_target, divisor, precompute = inputs
        stash = output[1:]
        made = [g for g in stash if g is not None]
        if made:
            ctx.mark_non_differentiable(*made)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target)
        ctx.meta = (reduction, log_target, divisor, precompute)
        ctx.stashed = stash if made else None

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, *_stash: None) -> tuple:
        if grad_loss is None:
            return (None,) * 6
        need = ctx.needs_input_grad[:2]
        reduction, log_target, divisor, precompute = ctx.meta
        stash = _take(ctx)
        if stash is None and precompute and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again.
            x, t = ctx.saved_tensors
            stash = _fused(x, t, reduction, log_target, divisor, precompute)[1:]
        if stash is not None and _function.upstream_is_one(grad_loss):
            grads = tuple(g if wanted else None for g, wanted in zip(stash, need, strict=True))
        elif stash is not None:
            grads = tuple(
                _function.times_upstream(g, grad_loss) if g is not None and wanted else None
                for g, wanted in zip(stash, need, strict=True)
            )
        else:
            x, t = ctx.saved_tensors
            grads = _gradients(x, t, reduction, log_target, divisor, grad_loss, need)
        return (*grads, None, None, None, None)


def _short_kernel(
    x: Tensor, t: Tensor, meta: tuple[int, bool, float | None]
) -> tuple[Tensor, Tensor]:
    """The short path's forward: the fused pass, for the input's gradient alone."""
    loss, grad, _ = _fused(x, t, *meta, _X)
    assert grad is not None
    return loss, grad


def _short_derivative(
    x: Tensor, t: Tensor, meta: tuple[int, bool, float | None], upstream: Tensor
) -> Tensor | None:
    """The short path's double backward: the input's gradient with differentiable ops."""
    return _gradients(x, t, *meta, upstream, (True, False))[0]


# Small calls whose target does not require grad (a distillation or count target): the same
# fused pass through an old-style Function (``_function.short_function``);
# meta = (reduction, log_target, divisor).
_KLDivShort = _function.short_function("_KLDivShort", _short_kernel, _short_derivative)
_SHORT_APPLY = _function.fast_apply(_KLDivShort)
_FAST_APPLY = _function.apply  # (tests replace _function.apply to exercise the regular path)
# Up to this many elements a call takes the short path.
_SHORT = 1 << 12


def _check(input: Tensor, target: Tensor) -> None:
    """torch.kl_div's checks in its order: complex, integral (bool too), then the shapes."""
    if input.is_complex() or target.is_complex():
        raise RuntimeError("kl_div: Complex inputs not supported.")
    if not (input.is_floating_point() and target.is_floating_point()):
        raise RuntimeError("kl_div: Integral inputs not supported.")
    _validation.broadcast_or_raise(target.shape, input.shape)


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """The KL divergence of ``target`` from the distribution whose log-probabilities are
    ``input``; see :class:`torch.nn.KLDivLoss`.

    >>> import torch, mylosses
    >>> x = torch.tensor([[0.5, 0.5]]).log()
    >>> mylosses.functional.kl_div(x, torch.tensor([[1.0, 0.0]]), reduction="batchmean")
    tensor(0.6931)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            kl_div,
            (input, target),
            input,
            target,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
            log_target=log_target,
        )
    if size_average is not None or reduce is not None:
        red = _reduction.get_enum(_reduction.legacy_get_string(size_average, reduce))
    elif reduction == "batchmean":
        red = SUM
    else:
        if reduction == "mean":
            warnings.warn(_MEAN_WARNING, stacklevel=2)
        red = _reduction.get_enum(reduction)
    divisor = None
    if reduction == "batchmean" and input.dim() != 0:
        divisor = float(input.size(0))
    log_target = bool(log_target)
    same = input.shape == target.shape and input.dtype == target.dtype and input.dtype in _NATIVE
    if not same:
        _check(input, target)
    if not _function.needs_autograd(input, target):
        return _loss(input, target, red, log_target, divisor)
    precompute = 0
    if (
        same
        and input.numel() > 0
        and input.is_contiguous()
        and target.is_contiguous()
        and _function.may_precompute()
    ):
        precompute = (_X if input.requires_grad else 0) | (_T if target.requires_grad else 0)
        if precompute == _X and input.numel() <= _SHORT and _function.apply is _FAST_APPLY:
            return _SHORT_APPLY(input, target, (red, log_target, divisor))
    return _function.apply(_KLDiv, input, target, red, log_target, divisor, precompute)[0]


class KLDivLoss(torch.nn.KLDivLoss):
    # torch's docstring; its example's ``F.softmax``/``F.log_softmax`` (not losses, so not in
    # mylosses.functional) spelt as the torch functions they are, so that the example runs.
    __doc__ = (
        (torch.nn.KLDivLoss.__doc__ or "")
        .replace("F.log_softmax(", "torch.log_softmax(")
        .replace("F.softmax(", "torch.softmax(")
    )

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
