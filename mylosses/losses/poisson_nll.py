r"""Poisson negative log likelihood: ``PoissonNLLLoss`` / ``poisson_nll_loss``.

A target count :math:`y \sim \mathrm{Poisson}(\lambda)` has
:math:`-\log p(y) = \lambda - y \log \lambda + \log y!`. The input :math:`x` is either
:math:`\log \lambda` (``log_input=True``, the default) or :math:`\lambda` itself:

.. math::

    l_n = \begin{cases} e^{x_n} - y_n x_n & \text{log\_input} \\
          x_n - y_n \log(x_n + \varepsilon) & \text{otherwise} \end{cases}
          \; + \; [\text{full}]\,[y_n > 1]\, S(y_n), \qquad
    S(y) = y \log y - y + \tfrac12 \log(2 \pi y),

where :math:`S` is Stirling's approximation of :math:`\log y!` (a constant for the input),
added only where the target exceeds 1 (:math:`\log 0! = \log 1! = 0`), and the result is
reduced ('none', 'sum' or 'mean' over all elements).

Backward, with :math:`g_n` the upstream gradient times the reduction's factor (1 or 1/N):

.. math::

    \frac{\partial \ell}{\partial x_n} = \begin{cases} (e^{x_n} - y_n)\, g_n \\
        \left(1 - \frac{y_n}{x_n + \varepsilon}\right) g_n \end{cases}, \qquad
    \frac{\partial \ell}{\partial y_n} = \begin{cases} -x_n\, g_n \\ -\log(x_n + \varepsilon)\, g_n
        \end{cases} \; + \; [\text{full}]\,[y_n > 1] \left(\log y_n + \frac{1}{2 y_n}\right) g_n,

since :math:`S'(y) = \log y + 1 - 1 + \frac{1}{2y}`. The second derivatives follow by
differentiating again (:math:`e^{x}`, :math:`y/(x+\varepsilon)^2`, :math:`-1/(x + \varepsilon)`
and :math:`1/y - 1/(2y^2)`); double backward differentiates the same formulas, written with
differentiable ops.

Surprises in torch (all matched here):

- it is an autograd composition (``exp(input) - target * input`` and so on), so input and
  target broadcast freely against each other, and the *target* gets a gradient;
- the Stirling term is computed everywhere and masked afterwards (``masked_fill(target <= 1,
  0)``): the forward is clean, but autograd still multiplies the masked zero by
  :math:`\log y` and divides it by :math:`y`, so a target :math:`\le 0` gets a NaN gradient
  with ``full=True`` (and :math:`y = \infty` gets NaN where :math:`\infty/\infty` appears);
  our backward follows torch's chain of nodes exactly there;
- integer and bool inputs are promoted by ``exp`` (or by ``+ eps``) to float32, an integer
  target by the product; the result is float32 (float64 with a float64 target). A bool input
  with ``log_input=False`` fails at the subtraction, with torch's message;
- an invalid reduction name ('elementwise_mean' included) is a ValueError before anything
  else; ``exp`` overflows to inf for inputs above ~88 (float32), with inf gradients.

Speed: torch's composition runs four full-size ops forward and five backward, keeping the
exponential and a product alive. When the input (and/or the target) requires grad and both
are float32/float64 of one shape, contiguous, our forward walks them once in cache-sized
blocks: the exponential (or ``x + eps``) is written straight into the input gradient's buffer,
the loss block is one ``addcmul`` summed at once, and the gradient is finished in place while
the block is in cache. Backward only multiplies by the upstream gradient. Half inputs are
computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE, SUM

_cast = _function.cast
_take = _function.take_gradients

__all__ = ["PoissonNLLLoss", "poisson_nll_loss"]

# Elements per block (as in ``mylosses/_pointwise.py``: the blocks stay in a core's L2).
BLOCK = 1 << 17

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)
_TWO_PI = 2 * math.pi

# ``precompute`` bits: which gradients forward computes (0: none, the loss only).
_X, _Y = 1, 2


def _result_dtype(x: Tensor, t: Tensor, log_input: bool) -> torch.dtype:
    """torch's result dtype: that of its composition (``full`` adds in place, so it changes
    nothing). ``exp`` (or ``+ eps``) makes an integer input the default float, the target joins
    by the product, and a 0-d tensor does not lift a same-category dimensioned one (a 0-d
    float64 target with a float32 input gives float32): run the composition's promotions on
    empty stand-ins of the same 0-d-ness."""
    if x.dtype == t.dtype and x.dtype.is_floating_point:
        return x.dtype
    a = torch.empty((0,) if x.dim() else (), dtype=x.dtype)
    b = torch.empty((0,) if t.dim() else (), dtype=t.dtype)
    return (torch.exp(a) - b * a if log_input else a - b * torch.log(a + 1.0)).dtype


def _up(t: Tensor) -> Tensor:
    """Half tensors in float32 (computed there, rounded once at the end)."""
    return t.float() if t.dtype in _HALF else t


def _stirling(t: Tensor) -> Tensor:
    """torch's masked Stirling term: y log y - y + 0.5 log(2 pi y) where y > 1, else 0."""
    term = t * torch.log(t) - t + 0.5 * torch.log(_TWO_PI * t)
    return torch.where(t <= 1, 0, term)  # masked_fill(t <= 1, 0): a NaN target stays NaN


def _elementwise(x: Tensor, t: Tensor, log_input: bool, full: bool, eps: float) -> Tensor:
    """The unreduced loss in torch's order of ops (so errors, promotion and NaN/inf patterns
    are torch's), half tensors computed in float32."""
    x, t = _up(x), _up(t)
    loss = torch.exp(x) - t * x if log_input else x - t * torch.log(x + eps)
    if full:
        loss = loss + _stirling(t)
    return loss


def _loss(x: Tensor, t: Tensor, log_input: bool, full: bool, eps: float, reduction: int) -> Tensor:
    """The loss alone (evaluation, vmap, compile, and calls the fused path does not serve)."""
    loss = _reduction.apply_reduction(_elementwise(x, t, log_input, full, eps), reduction)
    return _cast(loss, _result_dtype(x, t, log_input))


def _stirling_grad(t: Tensor, h: Tensor) -> Tensor:
    """d S / d y times the masked upstream ``h``, in the order of torch's autograd nodes:
    h log y + (h y) / y - h + ((0.5 h) / (2 pi y)) 2 pi. Masked zeros still make NaN where
    log y or 1/y does (y <= 0), as in torch."""
    return h * torch.log(t) + (h * t) / t - h + ((0.5 * h) / (_TWO_PI * t)) * _TWO_PI


def _sum_to_size(grad: Tensor, shape: torch.Size) -> Tensor:
    """``grad`` summed over the dimensions a tensor of ``shape`` was broadcast along."""
    return grad if grad.shape == shape else grad.sum_to_size(shape)


def _gradients(
    x: Tensor,
    t: Tensor,
    log_input: bool,
    full: bool,
    eps: float,
    reduction: int,
    grad_loss: Tensor,
    need: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None]:
    """Both gradients from the saved inputs with differentiable ops (double backward,
    broadcast and mixed-dtype calls), in the order of torch's autograd nodes."""
    xw, tw = _up(x), _up(t)
    shape = torch.broadcast_shapes(x.shape, t.shape)
    g = _reduction.expand_grad(_up(grad_loss), reduction, shape)
    gx = gt = None
    # The terms of the input's own shape (``exp(x)``, ``x``, ``log(x + eps)``) get the upstream
    # gradient summed to that shape *before* their factor, as in torch's chain of nodes: a 0-d
    # input broadcast to many elements makes inf * sum, not a sum of inf - inf.
    if log_input:
        if need[0]:
            gx = _sum_to_size(g, x.shape) * torch.exp(xw) + _sum_to_size(-g * tw, x.shape)
        if need[1]:
            gt = -g * xw
    else:
        a = xw + eps
        if need[0]:
            gx = _sum_to_size(g, x.shape) + _sum_to_size(-g * tw, x.shape) / a
        if need[1]:
            gt = -g * torch.log(a)
    if gt is not None:
        gt = _sum_to_size(gt, t.shape)
        if full:
            # The Stirling term has the target's own shape: its gradient is summed first.
            gs = _sum_to_size(g, t.shape)
            gt = gt + _stirling_grad(tw, torch.where(tw <= 1, 0, gs))
        gt = _cast(gt, t.dtype)
    return None if gx is None else _cast(gx, x.dtype), gt


_ONE = {dtype: torch.ones((), dtype=dtype) for dtype in _NATIVE}


def _block(
    x: Tensor,
    t: Tensor,
    log_input: bool,
    full: bool,
    eps: float,
    scale: Tensor | None,
    nscale: Tensor | None,
    u: Tensor,
    w: Tensor,
    gx: Tensor | None,
    gt: Tensor | None,
) -> Tensor:
    """One flat block of the fused pass: the elementwise loss written into ``u`` (returned),
    the gradients times the reduction's ``scale`` (0-d tensors ``scale`` and ``nscale`` =
    -scale; None for a scale of 1) into ``gx``, ``gt`` (those not None). ``w`` is working
    space (``gx`` itself where wanted)."""
    if log_input:
        torch.exp(x, out=w)  # e^x
        torch.addcmul(w, t, x, value=-1, out=u)  # e^x - y x
        if gt is not None:  # -x scale
            torch.mul(x, nscale, out=gt) if nscale is not None else torch.neg(x, out=gt)
        if gx is not None:  # (e^x - y) scale
            gx.sub_(t)
            if scale is not None:
                gx.mul_(scale)
    else:
        torch.add(x, eps, out=w)  # a = x + eps
        logs = gt if gt is not None else u
        torch.log(w, out=logs)
        torch.addcmul(x, t, logs, value=-1, out=u)  # x - y log a (u may be ``logs``)
        if gt is not None:  # -log(a) scale
            gt.mul_(nscale) if nscale is not None else gt.neg_()
        if gx is not None:  # (1 - y / a) scale = scale - scale y / a
            torch.div(t, gx, out=gx)
            if nscale is not None:
                gx.mul_(nscale).add_(scale)  # type: ignore[arg-type]
            else:
                torch.sub(_ONE[gx.dtype], gx, out=gx)
    if full:
        u.add_(_stirling(t))
        if gt is not None:
            h = torch.where(t <= 1, 0, scale if scale is not None else _ONE[t.dtype])
            gt.add_(_stirling_grad(t, h))
    return u


def _fused(
    x: Tensor, t: Tensor, log_input: bool, full: bool, eps: float, reduction: int, need: int
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The loss and the scaled gradients that ``need`` asks for, in one pass (module
    docstring). Two tensors of one shape and dtype (float32/float64), contiguous, not empty."""
    n = x.numel()
    dtype = x.dtype
    scale = nscale = None
    if reduction == MEAN:
        scale = torch.scalar_tensor(1.0 / n, dtype=dtype)
        nscale = torch.scalar_tensor(-1.0 / n, dtype=dtype)
    gx = torch.empty_like(x) if need & _X else None
    gt = torch.empty_like(x) if need & _Y else None
    if reduction == NONE or n <= BLOCK:
        u = torch.empty_like(x)
        w = gx if gx is not None else torch.empty_like(x)
        _block(x, t, log_input, full, eps, scale, nscale, u, w, gx, gt)
        if reduction == NONE:
            return u, gx, gt
        total = u.sum()
    else:
        a, b = x.view(-1), t.view(-1)
        fx = None if gx is None else gx.view(-1)
        ft = None if gt is None else gt.view(-1)
        u = torch.empty(BLOCK, dtype=dtype, device=x.device)
        spare = None if fx is not None else torch.empty_like(u)
        partials = []
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            s = slice(start, stop)
            bx = None if fx is None else fx[s]
            bt = None if ft is None else ft[s]
            w = bx if bx is not None else spare[: stop - start]  # type: ignore[index]
            ub = _block(
                a[s], b[s], log_input, full, eps, scale, nscale, u[: stop - start], w, bx, bt
            )
            partials.append(ub.sum())
        total = torch.stack(partials).sum()
    if reduction == MEAN:
        total = total.div_(n)
    return total, gx, gt


class _PoissonNLL(torch.autograd.Function):
    """The Poisson NLL; gradients w.r.t. the input and the target.

    ``forward(input, target, log_input, full, eps, reduction, precompute)`` returns the loss
    and the two stashed gradients (None where not computed): with ``precompute`` (bits ``_X``,
    ``_Y``: a call of one shape and float32/float64 dtype, contiguous and not empty, in eager
    mode) forward computes the requested gradients and stashes them for backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        log_input: bool,
        full: bool,
        eps: float,
        reduction: int,
        precompute: int,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if precompute:
            return _fused(input, target, log_input, full, eps, reduction, precompute)
        return _loss(input, target, log_input, full, eps, reduction), None, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, log_input, full, eps, reduction, precompute = inputs
        stash = output[1:]
        made = [g for g in stash if g is not None]
        if made:
            ctx.mark_non_differentiable(*made)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target)
        ctx.meta = (log_input, full, eps, reduction, precompute)
        ctx.stashed = stash if made else None

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, *_stash: None) -> tuple:
        if grad_loss is None:
            return (None,) * 7
        need = ctx.needs_input_grad[:2]
        log_input, full, eps, reduction, precompute = ctx.meta
        stash = _take(ctx)
        if stash is None and precompute and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again.
            x, t = ctx.saved_tensors
            stash = _fused(x, t, log_input, full, eps, reduction, precompute)[1:]
        if stash is not None and _function.upstream_is_one(grad_loss):
            grads = tuple(g if wanted else None for g, wanted in zip(stash, need, strict=True))
        elif stash is not None:
            grads = tuple(
                _function.times_upstream(g, grad_loss) if g is not None and wanted else None
                for g, wanted in zip(stash, need, strict=True)
            )
        else:
            x, t = ctx.saved_tensors
            grads = _gradients(x, t, log_input, full, eps, reduction, grad_loss, need)
        return (*grads, None, None, None, None, None)


def _short_kernel(
    x: Tensor, t: Tensor, meta: tuple[bool, bool, float, int]
) -> tuple[Tensor, Tensor]:
    """The short path's forward: the fused pass, for the input's gradient alone."""
    loss, grad, _ = _fused(x, t, *meta, _X)
    assert grad is not None
    return loss, grad


def _short_derivative(
    x: Tensor, t: Tensor, meta: tuple[bool, bool, float, int], upstream: Tensor
) -> Tensor | None:
    """The short path's double backward: the input's gradient with differentiable ops."""
    return _gradients(x, t, *meta, upstream, (True, False))[0]


# Small calls whose target does not require grad (a distillation or count target): the same
# fused pass through an old-style Function (``_function.short_function``);
# meta = (log_input, full, eps, reduction).
_PoissonNLLShort = _function.short_function("_PoissonNLLShort", _short_kernel, _short_derivative)
_SHORT_APPLY = _function.fast_apply(_PoissonNLLShort)
_FAST_APPLY = _function.apply  # (tests replace _function.apply to exercise the regular path)
# Up to this many elements a call takes the short path.
_SHORT = 1 << 12


def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    size_average: bool | None = None,
    eps: float = 1e-8,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The Poisson negative log likelihood; see :class:`torch.nn.PoissonNLLLoss`.

    >>> import torch, mylosses
    >>> x, y = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    >>> mylosses.functional.poisson_nll_loss(x, y)
    tensor(0.8591)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target):
        return handle_torch_function(
            poisson_nll_loss,
            (input, target),
            input,
            target,
            log_input=log_input,
            full=full,
            size_average=size_average,
            eps=eps,
            reduce=reduce,
            reduction=reduction,
        )
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if reduction == "mean":
        red = MEAN
    elif reduction == "sum":
        red = SUM
    elif reduction == "none":
        red = NONE
    else:  # torch's own check: 'elementwise_mean' is not accepted here
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if type(log_input) is not bool:
        raise _bool_error("log_input", 3, log_input)
    if type(full) is not bool:
        raise _bool_error("full", 4, full)
    if type(eps) is not float:
        eps = _validation.float_argument("poisson_nll_loss", "eps", 5, eps)
    if not _function.needs_autograd(input, target):
        return _loss(input, target, log_input, full, eps, red)
    precompute = 0
    dtype = input.dtype
    if (
        dtype in _NATIVE
        and target.dtype == dtype
        and target.shape == input.shape
        and input.numel() > 0
        and input.is_contiguous()
        and target.is_contiguous()
        and _function.may_precompute()
    ):
        precompute = (_X if input.requires_grad else 0) | (_Y if target.requires_grad else 0)
        if precompute == _X and input.numel() <= _SHORT and _function.apply is _FAST_APPLY:
            return _SHORT_APPLY(input, target, (log_input, full, eps, red))
    return _function.apply(_PoissonNLL, input, target, log_input, full, eps, red, precompute)[0]


def _bool_error(name: str, position: int, value: object) -> TypeError:
    """torch's argument parser's error for a bool option given something else (even 1)."""
    return TypeError(
        f"poisson_nll_loss(): argument '{name}' (position {position}) must be bool, "
        f"not {type(value).__name__}"
    )


class PoissonNLLLoss(torch.nn.PoissonNLLLoss):
    __doc__ = torch.nn.PoissonNLLLoss.__doc__

    def forward(self, log_input: Tensor, target: Tensor) -> Tensor:
        return poisson_nll_loss(
            log_input,
            target,
            log_input=self.log_input,
            full=self.full,
            eps=self.eps,
            reduction=self.reduction,
        )
