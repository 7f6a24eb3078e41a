r"""Gaussian negative log likelihood: ``GaussianNLLLoss`` / ``gaussian_nll_loss``.

A prediction :math:`x` (the mean of a Gaussian) and a variance :math:`\sigma^2` are scored by
the negative log likelihood of a sample :math:`y`, up to a constant. The variance is clamped
from below at :math:`\epsilon` (``eps``) for stability, :math:`v = \max(\sigma^2, \epsilon)`:

.. math::

    l_n = \frac{1}{2}\left(\log v_n + \frac{(x_n - y_n)^2}{v_n}\right)
          \; \left[+ \tfrac{1}{2}\log 2\pi \text{ with ``full``}\right], \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum_n l_n & \text{'sum'} \\
           \frac{1}{N}\sum_n l_n & \text{'mean'} \end{cases}

Backward. With :math:`d = x - y`, :math:`r = d / v` and :math:`g_n` the upstream gradient times
the reduction's factor (1 for 'sum', 1/N for 'mean'):

.. math::

    \frac{\partial \ell}{\partial x_n} = r_n g_n, \qquad
    \frac{\partial \ell}{\partial y_n} = -r_n g_n, \qquad
    \frac{\partial \ell}{\partial \sigma^2_n} = \frac{1}{2}\left(\frac{1}{v_n} - r_n^2\right) g_n .

Derivation: :math:`\partial_d \tfrac{1}{2} d^2/v = d/v`, and
:math:`\partial_v \tfrac12(\log v + d^2/v) = \tfrac12(1/v - d^2/v^2)`.

Surprises in torch (all matched here):

- the clamp is not differentiated: torch clamps a *clone* of ``var`` in place under
  ``no_grad``, so the gradient w.r.t. ``var`` is the formula above evaluated at the clamped
  value and passed straight through, also where :math:`\sigma^2 < \epsilon` (there it is
  :math:`\tfrac12(1/\epsilon - d^2/\epsilon^2)`, not 0); the same holds in double backward;
- ``var`` may have the input's shape, one dimension fewer (it is unsqueezed at the end), or the
  input's number of dimensions with exactly one mismatched dimension of size 1
  (homoscedastic); anything else is ``ValueError("var is of incorrect size")``. Only the
  input's shape is checked: the target broadcasts against the input as in ``input - target``;
- a Python float ``var`` is accepted (it becomes a tensor of the input's dtype, float32 for
  integer inputs, that gets no gradient); a Python int is not (torch's ``torch.any`` raises
  TypeError on it); integer and bool ``var`` tensors fail at the float clamp (RuntimeError);
- a negative entry raises ``ValueError("var has negative entry/entries")``, checked first with a
  data-dependent branch (``torch.any(var < 0)``) that neither ``torch.func.vmap`` nor
  ``torch.compile(fullgraph=True)`` can trace: torch's own function fails under both. Ours
  checks in eager mode (and under ``torch.func.grad``) and skips the check where the branch
  cannot be taken (under vmap and compile), where a negative variance is simply clamped;
- then the shape, then the reduction name (``reduction + " is not valid"``).

Speed: torch's composition runs a clone, a clamp, a subtraction, a power, a division, a log,
an addition and a multiplication forward, each a full-size tensor, most kept for backward. When
the three tensors have one shape and dtype (float32/float64), are contiguous and something
requires grad, our forward walks them once in cache-sized blocks: :math:`d`, :math:`v`,
:math:`r = d/v`, the loss :math:`\log v + d r` summed from a scratch block, and each requested
gradient written in place in its own buffer while the block is in cache. Backward only
multiplies those buffers by the upstream gradient (``mylosses/_function.py``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE

_cast = _function.cast
_sum_to = _function.sum_to_like
_take = _function.take_gradients

__all__ = ["GaussianNLLLoss", "gaussian_nll_loss"]

# Elements per block (as in ``mylosses/_pointwise.py``: the blocks stay in a core's L2).
BLOCK = 1 << 16

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

# ``precompute`` bits: which gradients forward computes (0: none, the loss only).
_X, _T, _V = 1, 2, 4


def _floating(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point or dtype.is_complex else torch.get_default_dtype()


@functools.lru_cache(maxsize=256)
def _promoted(a: torch.dtype, a_0d: bool, b: torch.dtype, b_0d: bool) -> torch.dtype:
    """torch's result dtype of a binary op on tensors of these dtypes, 0-d or not (a 0-d
    tensor only takes part when its category is higher: float32[N] - float64[] is float32)."""
    return torch.result_type(
        torch.empty(() if a_0d else (1,), dtype=a), torch.empty(() if b_0d else (1,), dtype=b)
    )


def _result_dtype(x: Tensor, t: Tensor, v: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(input - target, loss)`` dtypes as torch's ops promote them: ``(x - t) ** 2 / v`` and
    ``log(v)`` (integers become float32)."""
    x0, t0 = x.dim() == 0, t.dim() == 0
    diff = x.dtype if x.dtype == t.dtype else _promoted(x.dtype, x0, t.dtype, t0)
    if diff == v.dtype:
        return diff, _floating(diff)
    quotient = _promoted(diff, x0 and t0, v.dtype, v.dim() == 0)
    return diff, _floating(
        _promoted(quotient, x0 and t0 and v.dim() == 0, _floating(v.dtype), v.dim() == 0)
    )


def _clamped(var: Tensor, eps: float) -> Tensor:
    """``max(var, eps)`` with the gradient passed straight through, as torch's clone and
    in-place clamp under no_grad (differentiable: double backward sees the identity)."""
    v = var.clone()
    with torch.no_grad():
        v.clamp_(min=eps)
    return v


def _parts(
    x: Tensor, t: Tensor, var: Tensor, eps: float, straight: bool = False
) -> tuple[Tensor, Tensor, Tensor, torch.dtype]:
    """``(d, d^2, v, result dtype)``: d = x - t and the clamped v, broadcastable, differentiable.

    The difference is taken in the two tensors' promoted dtype, as torch's ``input - target``
    is; half results are computed in float32 throughout and rounded once at the end.
    ``straight``: the clamp's gradient passes straight through (backward's recomputation);
    else a plain clamp (forward, where nothing is differentiated).
    """
    diff, res = _result_dtype(x, t, var)
    work = torch.float32 if res in _HALF else res
    if diff in _HALF and work == torch.float32:
        # half inputs: the difference in float32 (closer to the truth than torch's rounding)
        x, t = _cast(x, work), _cast(t, work)
    d = x - t
    if d.is_floating_point() or d.is_complex():
        d = _cast(d, work)
        sq = d * d
    else:  # integers: the square wraps around in the integer dtype as torch's ``** 2`` does
        sq = _cast(d * d, work)
        d = _cast(d, work)
    var = _cast(var, work.to_real() if work.is_complex else work)
    v = _clamped(var, eps) if straight else var.clamp_min(eps)
    return d, sq, v, res


def _loss(x: Tensor, t: Tensor, var: Tensor, eps: float, full: bool, reduction: int) -> Tensor:
    """The loss alone (evaluation, vmap, compile, and calls the fused path does not serve)."""
    _, sq, v, res = _parts(x, t, var, eps)
    loss = 0.5 * (torch.log(v) + sq / v)
    if full:
        loss = loss + _HALF_LOG_2PI
    return _cast(_reduction.apply_reduction(loss, reduction), res)


def _block(
    x: Tensor,
    t: Tensor,
    var: Tensor,
    eps: float,
    scale: float,
    d: Tensor,
    v: Tensor,
    r: Tensor,
    loss: Tensor,
    gt: Tensor | None,
    gv: bool,
) -> Tensor:
    """One flat block of the fused pass. Leaves ``log v + d^2 / v`` in ``loss`` (returned, not
    yet halved), ``r * scale`` in ``r``, ``-r * scale`` in ``gt`` (if not None; it may be
    ``d``'s buffer, written last), and, when ``gv``, the variance's gradient ``(1/v - r^2) *
    scale / 2`` in ``v``. ``d``, ``v`` and ``r`` are distinct buffers."""
    torch.sub(x, t, out=d)
    torch.clamp_min(var, eps, out=v)
    torch.div(d, v, out=r)
    torch.log(v, out=loss)
    loss.addcmul_(d, r)  # log v + d (d / v)
    if gv:
        v.reciprocal_()
        v.addcmul_(r, r, value=-1.0)
        v.mul_(0.5 * scale)
    if scale != 1.0:
        r.mul_(scale)
    if gt is not None:
        torch.neg(r, out=gt)
    return loss


def _fused(
    x: Tensor, t: Tensor, var: Tensor, eps: float, full: bool, reduction: int, need: int
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The loss and the scaled gradients that ``need`` asks for, in one pass (module
    docstring). Three tensors of one shape and dtype (float32/float64), contiguous, not empty."""
    n = x.numel()
    scale = 1.0 / n if reduction == MEAN else 1.0
    gx = torch.empty_like(x) if need & _X else None
    gt = torch.empty_like(x) if need & _T else None
    gv = torch.empty_like(x) if need & _V else None
    both = gx is not None and gt is not None
    if reduction == NONE or n <= BLOCK:
        # One block (small inputs, and the elementwise loss, which is an output of its own)
        loss = torch.empty_like(x)
        d = gt if both and gt is not None else torch.empty_like(x)
        v = gv if gv is not None else torch.empty_like(x)
        r = gx if gx is not None else gt if gt is not None else torch.empty_like(x)
        _block(x, t, var, eps, scale, d, v, r, loss, gt if both else None, gv is not None)
        if gx is None and gt is not None:
            gt.neg_()
        if reduction == NONE:
            loss.mul_(0.5)
            if full:
                loss.add_(_HALF_LOG_2PI)
            return loss, gx, gt, gv
        total = loss.sum()
    else:
        fx, ft, fv = x.view(-1), t.view(-1), var.view(-1)
        bx, bt, bv = (None if g is None else g.view(-1) for g in (gx, gt, gv))
        scratch = torch.empty(4, BLOCK, dtype=x.dtype, device=x.device)
        partials = []
        for start in range(0, n, BLOCK):
            s = slice(start, min(start + BLOCK, n))
            size = s.stop - start
            neg = bt[s] if both and bt is not None else None
            d = neg if neg is not None else scratch[1, :size]
            v = bv[s] if bv is not None else scratch[2, :size]
            r = bx[s] if bx is not None else bt[s] if bt is not None else scratch[3, :size]
            loss = _block(
                fx[s],
                ft[s],
                fv[s],
                eps,
                scale,
                d,
                v,
                r,
                scratch[0, :size],
                neg,
                bv is not None,
            )
            if bx is None and bt is not None:
                r.neg_()
            partials.append(loss.sum())
        total = torch.stack(partials).sum()
    total = total.mul_(0.5)
    if full:
        total = total.add_(_HALF_LOG_2PI * n)
    if reduction == MEAN:
        total = total.div_(n)
    return total, gx, gt, gv


def _gradients(
    x: Tensor,
    t: Tensor,
    var: Tensor,
    eps: float,
    reduction: int,
    grad_loss: Tensor,
    need: tuple[bool, ...],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The three gradients from the saved inputs, with differentiable ops (double backward,
    broadcast and mixed-dtype calls). torch's order of operations: ``(g/2) / v * 2d`` for the
    input and ``(g/2) / v - (g/2) ((d^2 / v) / v)`` for the variance."""
    d, sq, v, _ = _parts(x, t, var, eps, straight=True)
    shape = torch.broadcast_shapes(d.shape, v.shape)
    half_g = 0.5 * _cast(_reduction.expand_grad(grad_loss, reduction, shape), d.dtype)
    grad_x = grad_t = grad_v = None
    if need[0] or need[1]:
        gd = half_g / v * (2 * d)
        grad_x = _sum_to(gd, x) if need[0] else None
        grad_t = _sum_to(-gd, t) if need[1] else None
    if need[2]:
        grad_v = _sum_to(half_g / v - half_g * (sq / v / v), var)
    return grad_x, grad_t, grad_v


class _GaussianNLL(torch.autograd.Function):
    """l = (log max(var, eps) + (x - t)^2 / max(var, eps)) / 2; gradients w.r.t. x, t, var.

    ``forward(input, target, var, eps, full, reduction, precompute)`` returns the loss and the
    three stashed gradients (None where not computed): with ``precompute`` (bits ``_X``, ``_T``,
    ``_V``: a call of one shape and float32/float64 dtype, contiguous and not empty, in eager
    mode) forward computes the requested gradients and stashes them for backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        var: Tensor,
        eps: float,
        full: bool,
        reduction: int,
        precompute: int,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        if precompute:
            return _fused(input, target, var, eps, full, reduction, precompute)
        return _loss(input, target, var, eps, full, reduction), None, None, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, var, eps, full, reduction, precompute = inputs
        stash = output[1:]
        made = [g for g in stash if g is not None]
        if made:
            ctx.mark_non_differentiable(*made)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, var)
        ctx.meta = (eps, full, reduction, precompute)
        ctx.stashed = stash if made else None

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, *_stash: None) -> tuple:
        if grad_loss is None:
            return (None,) * 7
        need = ctx.needs_input_grad[:3]
        eps, full, reduction, precompute = ctx.meta
        stash = _take(ctx)
        if stash is None and precompute and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again.
            x, t, var = ctx.saved_tensors
            stash = _fused(x, t, var, eps, full, reduction, precompute)[1:]
        if stash is not None and _function.upstream_is_one(grad_loss):
            grads = tuple(g if wanted else None for g, wanted in zip(stash, need, strict=True))
        elif stash is not None:
            grads = tuple(
                _function.times_upstream(g, grad_loss) if g is not None and wanted else None
                for g, wanted in zip(stash, need, strict=True)
            )
        else:
            x, t, var = ctx.saved_tensors
            grads = _gradients(x, t, var, eps, reduction, grad_loss, need)
        return (*grads, None, None, None, None)


def _has_negative(var: Tensor) -> bool:
    """torch's ``torch.any(var < 0)``, where a data-dependent branch can be taken."""
    if _function._is_compiling():
        return False  # torch.compile cannot branch on data (torch's own function fails here)
    negative = torch.any(var < 0)
    if _function.transforms_active():
        try:
            return bool(negative)
        except RuntimeError:  # vmap: data-dependent control flow (torch's own fails here)
            return False
    return bool(negative)


def _check_var(input: Tensor, var: Tensor | float) -> Tensor:
    """torch's checks of ``var`` in torch's order; returns it as a tensor shaped to broadcast."""
    if isinstance(var, float):
        if var < 0:
            raise ValueError("var has negative entry/entries")
        dtype = _floating(input.dtype)
        return torch.scalar_tensor(var, dtype=dtype, device=input.device).expand(input.shape)
    if not isinstance(var, Tensor):
        raise TypeError(
            f"gaussian_nll_loss(): argument 'var' must be a Tensor or a float, "
            f"not {type(var).__name__}"
        )
    if var.is_complex():
        raise NotImplementedError(
            f"\"lt_cpu\" not implemented for '{_validation.scalar_type_name(var.dtype)}'"
        )
    if _has_negative(var):
        raise ValueError("var has negative entry/entries")
    if var.size() != input.size():
        if input.size()[:-1] == var.size():
            var = torch.unsqueeze(var, -1)
        elif not (
            input.ndim == var.ndim
            and sum(y for x, y in zip(input.size(), var.size(), strict=True) if x != y) == 1
        ):
            raise ValueError("var is of incorrect size")
    return var


def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Tensor | float,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    """The Gaussian negative log likelihood (log var + (input - target)^2 / var) / 2 with var
    clamped at eps; see :class:`torch.nn.GaussianNLLLoss`.

    >>> import torch, mylosses
    >>> x, y = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])
    >>> mylosses.functional.gaussian_nll_loss(x, y, torch.tensor([1.0, 4.0]))
    tensor(0.5966)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target, var):
        return handle_torch_function(
            gaussian_nll_loss,
            (input, target, var),
            input,
            target,
            var,
            full=full,
            eps=eps,
            reduction=reduction,
        )
    var = _check_var(input, var)
    if reduction != "none" and reduction != "mean" and reduction != "sum":
        raise ValueError(reduction + " is not valid")
    red = _reduction.get_enum(reduction)
    if eps is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    if type(eps) is not float and not isinstance(eps, (int, float)):
        raise TypeError(
            "clamp_() received an invalid combination of arguments - got "
            f"(min={type(eps).__name__}, ), but expected a Number min (argument 'eps')"
        )
    if not var.is_floating_point():
        if isinstance(eps, float) or var.dtype == torch.bool:
            raise RuntimeError(
                "result type Float can't be cast to the desired output type "
                + {torch.int64: "long int", torch.bool: "bool"}.get(
                    var.dtype, _validation.scalar_type_name(var.dtype)
                )
            )
        var = var.clamp_min(eps).to(torch.get_default_dtype())  # an integer clamp, as torch's
    eps = float(eps)
    dtype, shape = input.dtype, input.shape
    if target.dtype == torch.bool or dtype == torch.bool:
        _validation.check_subtractable(input, target)
    if not _function.needs_autograd(input, target, var):
        return _loss(input, target, var, eps, full, red)
    precompute = 0
    if (
        dtype in _NATIVE
        and target.dtype == dtype
        and var.dtype == dtype
        and target.shape == shape
        and var.shape == shape
        and input.numel() > 0
        and input.is_contiguous()
        and target.is_contiguous()
        and var.is_contiguous()
        and _function.may_precompute()
    ):
        precompute = (
            (_X if input.requires_grad else 0)
            | (_T if target.requires_grad else 0)
            | (_V if var.requires_grad else 0)
        )
    return _function.apply(_GaussianNLL, input, target, var, eps, bool(full), red, precompute)[0]


class GaussianNLLLoss(torch.nn.GaussianNLLLoss):
    __doc__ = torch.nn.GaussianNLLLoss.__doc__

    def forward(self, input: Tensor, target: Tensor, var: Tensor | float) -> Tensor:
        return gaussian_nll_loss(
            input, target, var, full=self.full, eps=self.eps, reduction=self.reduction
        )
