r"""Multi-class margin (hinge) loss: ``MultiMarginLoss`` / ``multi_margin_loss``.

For scores :math:`x_n \in \mathbb{R}^C` and a class index :math:`y_n`, every other class
:math:`i \ne y_n` that scores within ``margin`` of the target class costs its violation,
to the power :math:`p \in \{1, 2\}`, weighted by the target class's weight:

.. math::

    z_{ni} = (\text{margin} - x_{n y_n}) + x_{ni}, \qquad
    L_n = \frac{w_{y_n}}{C} \sum_{i \ne y_n} [z_{ni} > 0]\, z_{ni}^p, \qquad
    \ell = \begin{cases} L & \text{'none'} \\ \sum_n L_n & \text{'sum'} \\
           \frac{1}{N}\sum_n L_n & \text{'mean'} \end{cases}

Backward, with :math:`c_n = w_{y_n} g_n / C` (:math:`g_n` the upstream gradient, divided by N for
'mean'): each violating class pushes its own score down and the target's up,

.. math::

    \frac{\partial \ell}{\partial x_{ni}} = c_n\, [z_{ni} > 0]\, p\, z_{ni}^{p-1} \quad (i \ne y_n),
    \qquad
    \frac{\partial \ell}{\partial x_{n y_n}} = -\sum_{i \ne y_n}
    \frac{\partial \ell}{\partial x_{ni}}

since :math:`\partial z_{ni} / \partial x_{ni} = 1` and :math:`\partial z_{ni} / \partial x_{ny_n} =
-1`. The second derivative is 0 for :math:`p = 1` (away from the kinks :math:`z = 0`) and
:math:`2 c_n [z > 0]` times the same :math:`\pm 1` pattern for :math:`p = 2`.

**Beyond torch**: torch has no double backward here ("derivative for
aten::multi_margin_loss_backward is not implemented"); ours differentiates the gradient above,
written with differentiable ops (gradgradcheck passes).

Surprises in torch's CPU kernel (all matched here):

- the indicator is ``z > 0``: an exact tie at the margin costs nothing and has gradient 0, and a
  NaN ``z`` (a NaN score, or :math:`\infty - \infty`) is *skipped*: the loss of a row with a NaN
  non-target score is finite. We use ``fmax(z, 0)``, which drops NaN the same way;
- inputs are (N, C), (C,) (one sample) or 0-d (one sample of one class, loss 0); the target has
  N elements, 1-d or (for one sample) 0-d; 'none' gives (N,), or a 0-d loss for a 0-d target;
  float32/float64 only; the target must be int64, the weight (exactly 1-d, C elements) of the
  input's dtype and must not require grad; the target class is checked per row ("target out of
  range");
- an empty batch with 'mean' or 'sum' returns torch's uninitialised memory; we return nan
  (0/0) and 0;
- ``p`` is checked in Python (``p == 2.0`` and ``p == True`` pass), ``margin`` is any number or
  a 0-d tensor, rounded to the input's dtype.

Speed: torch's kernel walks each row twice (forward, backward). With the input requiring grad
we walk it once, in cache-sized row blocks, in the one full-size buffer we return as the
gradient: :math:`z`, the target column zeroed, ``fmax(z, 0)``, the row sums (the loss), then in
place the derivative (``sign`` for p = 1, ``2 z`` for p = 2) times :math:`w_{y_n} / C`, and the
target column as minus the row sum. Backward scales it by the upstream gradient. Small plain
calls (a batch of 8) take a short path with a plan cached per call signature and the fewest ops
(``_MMShort``, see the comment above it).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE

__all__ = ["MultiMarginLoss", "multi_margin_loss"]

# Elements per block of rows (a block stays in L2 while we walk it several times).
BLOCK = 1 << 16

_NATIVE = (torch.float32, torch.float64)
_ZEROS = {dtype: torch.zeros((), dtype=dtype) for dtype in _NATIVE}


def _zero(dtype: torch.dtype) -> Tensor:
    z = _ZEROS.get(dtype)
    return z if z is not None else torch.zeros((), dtype=dtype)


def _target_weight(weight: Tensor | None, y: Tensor) -> Tensor | None:
    """:math:`w_{y_n}` per row (N,), or None without a weight."""
    if weight is None:
        return None
    try:
        return weight.reshape(-1).index_select(0, y)
    except (RuntimeError, IndexError):
        raise RuntimeError("target out of range") from None


def _scale(reduction: int, n: int, c: int) -> float:
    return 1.0 / (n * c) if reduction == MEAN and n else 1.0 / c


def _margins(x: Tensor, y: Tensor, margin: float) -> Tensor:
    """:math:`z = (\\text{margin} - x_{y}) + x` (torch's order of operations), with the target
    column set to 0 (the kernel skips it), out of place and differentiable."""
    y1 = y.unsqueeze(1)
    z = (margin - x.gather(1, y1)) + x
    return z.scatter(1, y1, 0.0)


def _reduce(per: Tensor, reduction: int, out_shape: torch.Size) -> Tensor:
    if reduction == NONE:
        return per.reshape(out_shape)
    total = per.sum()
    return total / per.shape[0] if reduction == MEAN else total


def _loss(
    x: Tensor,
    y: Tensor,
    w: Tensor | None,
    p: int,
    margin: float,
    reduction: int,
    out_shape: torch.Size,
) -> Tensor:
    """The loss alone, out of place (transforms, compile; any call the blocked walk does not
    serve)."""
    h = torch.fmax(_margins(x, y, margin), _zero(x.dtype))
    per = (h * h).sum(1) if p == 2 else h.sum(1)
    wy = _target_weight(w, y)
    if wy is not None:
        per = per * wy
    return _reduce(per / x.shape[1], reduction, out_shape)


def _hinge_into(out: Tensor, x: Tensor, y1: Tensor, margin: float, zero: Tensor) -> Tensor:
    """``fmax(z, 0)`` into ``out``: z = (margin - x_y) + x (torch's order), 0 at the target.
    An index outside [0, C) fails in ``gather``: raised as torch's "target out of range"."""
    try:
        xy = x.gather(1, y1)
    except (RuntimeError, IndexError):
        raise RuntimeError("target out of range") from None
    torch.add(x, torch.rsub(xy, margin), out=out)
    out.scatter_(1, y1, 0.0)
    return torch.fmax(out, zero, out=out)  # z > 0 ? z : 0, NaN dropped as the kernel's `z > 0`


def _to_gradient(g: Tensor, y1: Tensor, p: int, coef: Tensor | float) -> None:
    """In place: fmax(z, 0) -> d loss / d x (``coef`` = w_y / C, times 1/N for 'mean')."""
    if p == 1:
        g.sign_()
        g.mul_(coef)
    else:
        g.mul_(coef * 2.0 if isinstance(coef, float) else coef.mul(2.0))
    g.scatter_(1, y1, g.sum(1, keepdim=True).neg_())


def _walk(
    x: Tensor,
    y: Tensor,
    w: Tensor | None,
    p: int,
    margin: float,
    reduction: int,
    out_shape: torch.Size,
    want_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """The loss, and (``want_grad``) d loss / d x for an upstream gradient of 1 in one fresh
    buffer, walking cache-sized blocks of rows (module docstring). Eager CPU."""
    n, c = x.shape
    step = max(1, BLOCK // c)
    buf = torch.empty((n, c) if want_grad else (min(n, step), c), dtype=x.dtype)
    zero = _zero(x.dtype)
    wy = _target_weight(w, y)
    scale = _scale(reduction, n, c)
    y1 = y.unsqueeze(1)
    if 0 < n <= step and wy is None and reduction != NONE:
        # One block, one total (small inputs: every op's overhead counts).
        g = _hinge_into(buf, x, y1, margin, zero)
        flat = g.view(-1)
        if p == 1 and reduction == MEAN:
            loss = flat.mean()
        else:
            total = flat.sum() if p == 1 else torch.linalg.vecdot(flat, flat)
            loss = total.mul_(scale) if reduction == MEAN else total.div_(c)
        if want_grad:
            _to_gradient(g, y1, p, scale)
            return loss, buf
        return loss, None
    per = torch.empty(n, dtype=x.dtype)
    coef = wy * scale if wy is not None else None
    for start in range(0, n, step):
        stop = min(start + step, n)
        yb, rows = y1[start:stop], per[start:stop]
        g = buf[start:stop] if want_grad else buf[: stop - start]
        _hinge_into(g, x[start:stop], yb, margin, zero)
        if p == 1:
            torch.sum(g, 1, out=rows)
        else:
            torch.linalg.vecdot(g, g, dim=1, out=rows)
        if want_grad:
            _to_gradient(g, yb, p, coef[start:stop].unsqueeze(1) if coef is not None else scale)
    if wy is not None:
        per.mul_(wy)
    per.div_(c)
    return _reduce(per, reduction, out_shape), buf if want_grad else None


def _derivative(
    x: Tensor, y: Tensor, w: Tensor | None, p: int, margin: float, scale: float
) -> Tensor:
    """d loss / d x for an upstream gradient of 1, with differentiable ops (double backward:
    for p = 2 it depends on x through z; the indicator [z > 0] is a constant)."""
    z = _margins(x, y, margin)
    active = z > 0
    d = torch.where(active, 2 * z, 0.0) if p == 2 else active.to(x.dtype)
    wy = _target_weight(w, y)
    d = d * (wy.unsqueeze(1) * scale if wy is not None else scale)
    return d.scatter(1, y.unsqueeze(1), -d.sum(1, keepdim=True))


def _as_rows(input: Tensor) -> Tensor:
    """The input as (N, C): a 0-d input is one sample of one class, a 1-d one one sample."""
    if input.dim() == 2:
        return input
    return input.reshape(1, -1)


class _MultiMargin(torch.autograd.Function):
    """The loss of the module docstring; the gradient w.r.t. the input only.

    ``forward(input, target, weight, p, margin, reduction, precompute)`` returns ``(loss,
    gradient or None)``: with ``precompute`` forward also leaves the input's gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        weight: Tensor | None,
        p: int,
        margin: float,
        reduction: int,
        precompute: int,
    ) -> tuple[Tensor, Tensor | None]:
        x, y = _as_rows(input), target.reshape(-1)
        out_shape = _out_shape(target, reduction)
        if precompute:
            loss, grad = _walk(x, y, weight, p, margin, reduction, out_shape, True)
            return loss, grad.view(input.shape) if grad is not None else None
        return _loss(x, y, weight, p, margin, reduction, out_shape), None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, weight, p, margin, reduction, precompute = inputs
        _, grad = output
        if grad is not None:
            ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, weight)
        ctx.meta = (p, margin, reduction, bool(precompute))
        _function.stash_gradient(ctx, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _grad_stash: None) -> tuple:
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        p, margin, reduction, fused = ctx.meta
        up = grad_loss.unsqueeze(-1) if grad_loss.dim() else grad_loss
        grad = _function.take_gradient(ctx)
        if grad is None:
            input, target, weight = ctx.saved_tensors
            x, y = _as_rows(input), target.reshape(-1)
            if fused and not torch.is_grad_enabled():
                # A second backward through a retained graph: forward's computation again.
                out_shape = _out_shape(target, reduction)
                grad = _walk(x, y, weight, p, margin, reduction, out_shape, True)[1]
                assert grad is not None
            else:
                # Double backward, vmap, compile: differentiable ops.
                scale = _scale(reduction, x.shape[0], x.shape[1])
                grad = _derivative(x, y, weight, p, margin, scale)
                return (grad * up).view(input.shape), None, None, None, None, None, None
            grad = grad.view(input.shape)
        if grad.dim() != up.dim():  # a 1-d or 0-d input: (1, C) rows against a (1,) upstream
            up = up.reshape(-1)[0] if up.numel() == 1 else up
        return _function.times_upstream(grad, up), None, None, None, None, None, None


# -- the short path ------------------------------------------------------------------------------
# A batch of 8 costs torch ~5 µs of kernels, so there every Python step counts. A call with plain
# arguments (no weight, 'mean' or 'sum', int p, float margin, a contiguous 2-d CPU input of at most
# BLOCK elements, an int64 1-d target) takes a plan cached per call signature (its 0-d and vector
# constants) and the fewest ops: z = (margin - x_y) + x into one fresh buffer, its target column
# zeroed, h = relu(z) (cheaper than fmax; a NaN z, which torch skips and relu keeps, makes the
# loss NaN: then the general walk runs instead); the loss h . s (p = 1) or (h . h) s; the
# gradient in place, s sign(h)
# or 2 s h, the target column minus its row sum (a matrix product with -1s). An out-of-range
# target fails in the gather: the general path then raises torch's error. _MMShort is in the
# old style (forward takes ctx): the functional never applies it under a functorch transform
# or torch.compile (where _MultiMargin runs).


class _Plan:
    __slots__ = (
        "loss_scale",
        "m",
        "margin",
        "minus_ones",
        "p",
        "reduction",
        "s",
        "scale",
        "w",
        "zero_col",
    )

    def __init__(self, n: int, c: int, dtype: torch.dtype, reduction: int, p: int, margin: float):
        scale = _scale(reduction, n, c)
        self.p = p
        self.margin = margin
        self.reduction = reduction
        self.scale = scale
        self.m = torch.tensor(margin, dtype=dtype)  # rounded to the dtype, as torch's kernel
        self.w = torch.full((n * c,), scale, dtype=dtype)  # loss = h . w (p = 1)
        self.loss_scale = torch.tensor(scale, dtype=dtype)  # loss = (h . h) scale (p = 2)
        self.s = torch.tensor(scale if p == 1 else 2.0 * scale, dtype=dtype)
        self.minus_ones = torch.full((c, 1), -1.0, dtype=dtype)
        self.zero_col = torch.zeros((n, 1), dtype=dtype)


_PLANS: dict[tuple, _Plan] = {}


def _plan(input: Tensor, target: Tensor, key: tuple) -> _Plan | None:
    """The plan of a call whose arguments qualify (see ``multi_margin_loss``), or None."""
    shape = input.shape
    if not (
        len(shape) == 2
        and target.dim() == 1
        and target.dtype is _INT64
        and (input.dtype is _FLOAT32 or input.dtype is _FLOAT64)
        and 0 < shape[0] == target.shape[0]
        and shape[1] > 0
        and shape[0] * shape[1] <= BLOCK
    ):
        return None
    if len(_PLANS) >= 32:  # (a training loop has one or two signatures)
        _PLANS.clear()
    reduction, p, margin = key[4:]
    red = MEAN if reduction == "mean" else _reduction.SUM
    plan = _Plan(shape[0], shape[1], input.dtype, red, p, margin)
    _PLANS[key] = plan
    return plan


def _short(x: Tensor, target: Tensor, plan: _Plan, need_grad: bool) -> tuple[Tensor, Any]:
    """(loss, gradient for an upstream gradient of 1, or None), see above."""
    t1 = target.view(-1, 1)
    # x - (x_y - margin) rounds as torch's (margin - x_y) + x (a rounded difference is odd)
    g = torch.sub(x, x.gather(1, t1).sub_(plan.m))
    g.scatter_(1, t1, plan.zero_col).relu_()
    flat = g.view(-1)
    loss = flat @ plan.w if plan.p == 1 else torch.dot(flat, flat).mul_(plan.loss_scale)
    v = loss.item()
    if v != v:
        # a NaN z (a NaN score, inf - inf), which torch's kernel skips and relu keeps: the
        # general walk, whose fmax drops it
        return _walk(x, target, None, plan.p, plan.margin, plan.reduction, _SCALAR, need_grad)
    if not need_grad:
        return loss, None
    if plan.p == 1:
        g.sign_()
    g.mul_(plan.s)
    return loss, g.scatter_(1, t1, g @ plan.minus_ones)


def _short_derivative(input: Tensor, target: Tensor, plan: _Plan, grad: Tensor) -> Tensor:
    """Double backward: the gradient with differentiable ops."""
    return _derivative(input, target, None, plan.p, plan.margin, plan.scale) * grad


# The short path's Function (see above), ``apply(input, target, plan)``.
_MMShort = _function.short_function(
    "_MMShort", lambda x, t, plan: _short(x, t, plan, True), _short_derivative
)


_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
_grad_enabled = torch.is_grad_enabled
_transforms_active = _function.transforms_active
_is_compiling = _function._is_compiling
_SHORT_APPLY = _function.fast_apply(_MMShort)
_FAST_APPLY = _function.apply
_FLOAT32, _FLOAT64, _INT64 = torch.float32, torch.float64, torch.int64
_SCALAR = torch.Size()


def _out_shape(target: Tensor, reduction: int) -> torch.Size:
    """'none' gives one loss per sample, (N,), or a 0-d loss for a 0-d target."""
    return target.shape if reduction == NONE else torch.Size()


def _sizes(t: Tensor) -> str:
    return str(list(t.shape))


def _check(input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    """torch's checks in torch's order (after p, the weight's dim and requires_grad): shapes,
    then (for a non-empty input) dtypes."""
    ndim = input.dim()
    if not (
        (ndim == 2 and input.shape[1] != 0) or (ndim == 1 and input.shape[0] != 0) or ndim == 0
    ):
        raise RuntimeError(
            "Expected non-empty vector or matrix with optional 0-dim batch size, but got: "
            + _sizes(input)
        )
    n = input.shape[0] if ndim == 2 else 1
    c = input.shape[-1] if ndim else 1
    if not (target.dim() <= 1 and target.numel() == n):
        raise RuntimeError(
            "multi_margin_loss: target tensor should be 1-D with size equal to the number of "
            f"input samples (batch size). Expected target size [{n}], but got "
            f"{_sizes(target)}. Input has shape {_sizes(input)}."
        )
    if weight is not None and not (weight.dim() <= 1 and weight.numel() == c):
        raise RuntimeError(f"inconsistent weight size, expected {c} but got {_sizes(weight)}")
    if input.numel() == 0:
        return
    if input.dtype not in _NATIVE:
        raise NotImplementedError(
            f'"multi_margin_loss_cpu_kernel" not implemented for '
            f"'{_validation.scalar_type_name(input.dtype)}'"
        )
    for t in (target, weight):
        expected = torch.int64 if t is target else input.dtype
        if t is not None and t.dtype != expected:
            raise RuntimeError(
                f"expected scalar type {_validation.scalar_type_name(expected)} but found "
                f"{_validation.scalar_type_name(t.dtype)}"
            )
    # (A class outside [0, C) fails in the first gather: _hinge_into raises torch's error.)


def _margin_value(margin: Any) -> float:
    """``margin`` as torch's argument parser takes a Number: int, float, bool or a 0-d tensor."""
    if type(margin) is float:
        return margin
    if isinstance(margin, Tensor) and margin.dim() == 0:
        return float(margin)
    if isinstance(margin, numbers.Number) and not isinstance(margin, Tensor):
        if isinstance(margin, complex):
            raise RuntimeError("value cannot be converted to type float without overflow")
        return float(margin)  # type: ignore[arg-type]
    raise TypeError(
        "multi_margin_loss(): argument 'margin' (position 4) must be Number, not "
        f"{type(margin).__name__}"
    )


def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The multi-class hinge loss; see :class:`torch.nn.MultiMarginLoss`.

    >>> import torch, mylosses
    >>> x = torch.tensor([[0.1, 0.2, 0.4, 0.8]])
    >>> mylosses.functional.multi_margin_loss(x, torch.tensor([3]))
    tensor(0.3250)
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            multi_margin_loss,
            (input, target, weight),
            input,
            target,
            p=p,
            margin=margin,
            weight=weight,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    # The short path (see _MMShort): the plan of a known signature stands for most checks.
    if (
        weight is None
        and type(input) is Tensor
        and type(target) is Tensor
        and type(p) is int
        and (p == 1 or p == 2)
        and type(margin) is float
        and size_average is None
        and reduce is None
        and (reduction == "mean" or reduction == "sum")
        and input.is_cpu  # (gather's range check raises there; a GPU would assert)
        and input.is_contiguous()
        and not _transforms_active()
        and not _is_compiling()
    ):
        key = (input.shape, target.shape, input.dtype, target.dtype, reduction, p, margin)
        plan = _PLANS.get(key) or _plan(input, target, key)
        if plan is not None:
            try:
                if not (input.requires_grad and _grad_enabled()):
                    return _short(input, target, plan, False)[0]
                if _function.apply is _FAST_APPLY:
                    return _SHORT_APPLY(input, target, plan)
                return _function.apply(_MMShort, input, target, plan)
            except RuntimeError:
                pass  # an out-of-range target: the general path says which
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    if p != 1 and p != 2:
        raise ValueError("only p == 1 and p == 2 supported")
    if weight is not None and weight.dim() != 1:
        raise ValueError("weight must be one-dimensional")
    m = _margin_value(margin)
    grad_mode = torch.is_grad_enabled()
    if weight is not None and weight.requires_grad and grad_mode:
        raise RuntimeError(
            "The function 'multi_margin_loss' is not differentiable with respect to argument "
            "'weight'. This input cannot have requires_grad True."
        )
    _check(input, target, weight)
    pi = 2 if p == 2 else 1
    if input.numel() == 0 and not input.is_floating_point():
        # torch returns before its dtype checks: an empty result of the input's dtype
        return input.new_zeros(_out_shape(target, red))
    if not _function.needs_autograd(input):
        x, y = _as_rows(input), target.reshape(-1)
        if input.device.type == "cpu" and _function.may_precompute():
            return _walk(x, y, weight, pi, m, red, _out_shape(target, red), False)[0]
        return _loss(x, y, weight, pi, m, red, _out_shape(target, red))
    precompute = int(input.device.type == "cpu" and _function.may_precompute())
    return _function.apply(_MultiMargin, input, target, weight, pi, m, red, precompute)[0]


class MultiMarginLoss(torch.nn.MultiMarginLoss):
    __doc__ = torch.nn.MultiMarginLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return multi_margin_loss(
            input,
            target,
            p=self.p,
            margin=self.margin,
            weight=self.weight,
            reduction=self.reduction,
        )
