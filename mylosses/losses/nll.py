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
shape with the picked entries scattered in, the one full-size buffer there has to be. A small
plain call (``(N, C)``, no options) takes a short path (``_NLLShort``) that makes that buffer
in forward and hands it to backward, with as few Python steps as it can.

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
from mylosses._reduction import MEAN, NONE, SUM

__all__ = ["NLLLoss", "nll_loss"]

_HALF = (torch.float16, torch.bfloat16)
_FLOAT32, _FLOAT64, _INT64 = torch.float32, torch.float64, torch.int64


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
    ) -> Tensor:
        return _loss(input, target, weight, reduction, ignore_index, any_ignored)[0]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, target, weight, reduction, ignore_index, any_ignored = inputs
        ctx.save_for_backward(target, weight)
        ctx.meta = (input.shape, input.dtype, reduction, ignore_index, any_ignored)
        ctx.strided_2d = input.dim() == 4 and not input.is_contiguous() and _dense(input)
        ctx.unbatched_1 = input.dim() == 1 and target.dim() == 1 and input.shape[0] != 1

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        if not ctx.needs_input_grad[0]:
            return None, *_NONE5
        if ctx.strided_2d:
            # torch's 2-d kernel allocates its gradient like the input and then insists on a
            # contiguous one: a dense, non-contiguous 4-d input (channels-last, permuted)
            # cannot be differentiated there. Same error here, so code behaves the same.
            raise RuntimeError("grad_input must be contiguous")
        if ctx.unbatched_1:  # torch's backward rejects the (C,) input with a (1,) target
            raise RuntimeError(f"size mismatch (got input: [{ctx.meta[0][0]}], target: [1])")
        target, weight = ctx.saved_tensors
        shape, dtype, reduction, ignore_index, any_ignored = ctx.meta
        gi = _gradient(target, weight, shape, dtype, reduction, ignore_index, any_ignored, grad)
        return gi, *_NONE5


_NONE5 = (None,) * 5


def _gradient(
    target: Tensor,
    weight: Tensor | None,
    shape: torch.Size,
    dtype: torch.dtype,
    reduction: int,
    ignore_index: int,
    any_ignored: bool | None,
    grad: Tensor,
) -> Tensor:
    """The input's gradient with differentiable ops (linear in ``grad``: double backward)."""
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
    return out


# -- the short path -----------------------------------------------------------------------
#
# The common small call: a plain (N, C) float32/float64 CPU input, int64 class targets, no
# weight, 'mean' or 'sum', in eager mode. At a batch of 8 every op and every Python check costs
# about as much as torch's whole kernel, so this path is a Function of its own that does the
# least. A *plan* per call signature (shapes, dtypes, reduction, ignore_index), made once after
# the full checks, holds the constants: looking it up replaces most checks of later calls.
#
# The gradient (-r at each target, r = 1/N for the mean, else 1; zero elsewhere) is made in
# forward into its one buffer: with few classes as rows ``t_n`` of a cached ``-r * I`` (one op),
# else zeros with -r scattered in. Backward hands it out, times the upstream gradient unless
# that is exactly 1 (reading a CPU scalar costs less than a multiplication). With few elements
# forward reads the loss off that buffer too, as the dot product of the input with it, and
# checks the result: where some log-probability is infinite or nan, 0 * inf would spoil that
# sum, so a result that is not finite is computed again the safe way, gathering the picked
# entries. No range check: ``index_select`` and ``gather`` raise on a target outside [0, C), and
# an ignore_index that could be a class gets no plan, so a target that is ignored or out of
# range makes the functional fall back to the general path, which says which.
#
# _NLLShort is the one Function in the old style (forward takes ctx), so that forward can hand
# the gradient it made to ctx: the functional never applies it under a functorch transform or
# torch.compile (where _NLL runs), and its backward is exact under both.

_ROWS_LIMIT = 1 << 14  # classes^2 up to this: the gradient is rows of a cached -r * identity
_DOT_LIMIT = 1 << 16  # elements up to this: the loss is the input dotted with the gradient


class _Plan:
    __slots__ = ("dot", "r", "rows", "w")

    def __init__(self, n: int, c: int, dtype: torch.dtype, reduction: int) -> None:
        self.r = r = 1.0 / n if reduction == MEAN else 1.0
        self.w = torch.full((n,), -r, dtype=dtype)
        self.rows = torch.eye(c, dtype=dtype).mul_(-r) if c * c <= _ROWS_LIMIT else None
        self.dot = self.rows is not None and n * c <= _DOT_LIMIT


_PLANS: dict[tuple, _Plan] = {}


def _plan(input: Tensor, target: Tensor, reduction: str, ignore_index: int) -> _Plan | None:
    """The plan of a call whose plain arguments qualify (see ``nll_loss``), or None."""
    shape = input.shape
    if not (
        len(shape) == 2
        and target.dim() == 1
        and target.dtype is _INT64
        and (input.dtype is _FLOAT32 or input.dtype is _FLOAT64)
        and shape[0] == target.shape[0]
        and shape[0] > 0
        and (ignore_index < 0 or ignore_index >= shape[1])
    ):
        return None
    if len(_PLANS) >= 32:  # (a training loop has one or two signatures)
        _PLANS.clear()
    plan = _Plan(shape[0], shape[1], input.dtype, MEAN if reduction == "mean" else SUM)
    _PLANS[(shape, target.shape, input.dtype, target.dtype, reduction, ignore_index)] = plan
    return plan


def _short_loss(input: Tensor, target: Tensor, plan: _Plan) -> Tensor:
    """-r * sum_n x[n, t_n]: the picked entries dotted with (-r, ..., -r)."""
    return input.gather(1, target.view(-1, 1)).view(-1) @ plan.w


def _short_gradient(input: Tensor, target: Tensor, plan: _Plan) -> Tensor:
    if plan.rows is not None:
        return plan.rows.index_select(0, target)
    return torch.zeros_like(input).scatter_(1, target.view(-1, 1), -plan.r)


class _NLLShort(torch.autograd.Function):
    """The short path's loss and gradient (see above)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, target: Tensor, plan: _Plan) -> Tensor:
        ctx.inputs = (input, target, plan)
        if plan.dot and input.is_contiguous():
            G = plan.rows.index_select(0, target)  # type: ignore[union-attr]
            ctx.stashed_gradient = G
            loss = input.view(-1) @ G.view(-1)
            v = loss.item()
            if v - v == 0.0:  # finite: no 0 * inf in the sum
                return loss
            return _short_loss(input, target, plan)
        loss = _short_loss(input, target, plan)
        ctx.stashed_gradient = _short_gradient(input, target, plan)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        G = ctx.stashed_gradient
        if G is None:  # a second backward through a retained graph: the same gradient again
            G = _short_gradient(*ctx.inputs)
        else:
            ctx.stashed_gradient = None
        if _grad_enabled() or _is_legacy_batched(grad) or _transforms_active() or _is_compiling():
            # (G is a constant: the gradient is linear in grad, so double backward is exact)
            return G * grad, None, None
        if grad.is_cpu and grad.item() == 1.0:
            return G, None, None
        return G.mul_(grad), None, None


_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
_grad_enabled = torch.is_grad_enabled
_transforms_active = _function.transforms_active
_is_compiling = _function._is_compiling
_SHORT_APPLY = super(torch.autograd.Function, _NLLShort).apply  # (see _function.apply)
_FAST_APPLY = _function.apply


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
    # The short path (see _NLLShort): the plan of a known signature stands for most checks.
    if (
        weight is None
        and type(input) is Tensor
        and type(target) is Tensor
        and type(ignore_index) is int
        and size_average is None
        and reduce is None
        and (reduction == "mean" or reduction == "sum")
        and input.is_cpu  # (gather's range check raises there; a GPU would assert)
        and not _transforms_active()
        and not _is_compiling()
    ):
        plan = _PLANS.get(
            (input.shape, target.shape, input.dtype, target.dtype, reduction, ignore_index)
        ) or _plan(input, target, reduction, ignore_index)
        if plan is not None:
            try:
                if not (input.requires_grad and _grad_enabled()):
                    return _short_loss(input, target, plan)
                if _function.apply is _FAST_APPLY:
                    return _SHORT_APPLY(input, target, plan)
                return _function.apply(_NLLShort, input, target, plan)
            except (RuntimeError, IndexError):
                pass  # an out-of-range or ignored target: the general path says which
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    red = _reduction.get_enum(reduction)
    _check_types(input, target, weight, ignore_index)
    ignore_index = int(ignore_index)
    _cls.check_class_target(input, target, weight)
    n_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    any_ignored = _cls.check_range(target, n_classes, ignore_index)
    if not _function.needs_autograd(input):
        return _loss(input, target, weight, red, ignore_index, any_ignored)[0]
    return _function.apply(_NLL, input, target, weight, red, ignore_index, any_ignored)


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
