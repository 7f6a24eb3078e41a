r"""The machinery shared by the elementwise regression losses (L1, MSE, Huber, SmoothL1).

Each of these losses is a function of the difference alone,

.. math::

    l_n = \phi(d_n), \qquad d = x - y,

with ``x`` the input and ``y`` the target (broadcast against each other), optionally weighted
(:math:`w_n \phi(d_n)`, torch 2.13's functional ``weight=``) and then reduced. By the chain rule
every gradient follows from :math:`\phi'`:

.. math::

    \frac{\partial \ell}{\partial x_n} = g_n\, w_n\, \phi'(d_n), \qquad
    \frac{\partial \ell}{\partial y_n} = -\frac{\partial \ell}{\partial x_n}, \qquad
    \frac{\partial \ell}{\partial w_n} = g_n\, \phi(d_n)\ (-\text{the mean's share, see below}),

where :math:`g_n` is the upstream gradient times the reduction's factor (1 for 'sum', 1/N for
'mean', the elementwise upstream gradient for 'none'). Where ``x`` or ``y`` was broadcast, its
gradient is summed back to its own shape.

A loss file supplies :math:`\phi` (``value``), :math:`\phi'` (``derivative``, differentiable so
that double backward works), an in-place :math:`\phi'` (``derivative_``) and, where it saves
passes, both at once for a block (``fused_block_``) on a subclass of :class:`PointwiseRule`; this
module does the rest once.

**Speed.** torch's kernels read ``x`` and ``y`` and write an elementwise loss in forward, then
read ``x`` and ``y`` again and write the gradient in backward (L1 is a chain of four nodes). We
allocate one buffer ``d`` and walk it in cache-sized blocks: ``d = x - y``, add
:math:`\sum\phi(d)` to the loss, then overwrite the block with :math:`\phi'(d)` times the
reduction factor, while the block is still in cache. Backward multiplies that buffer in place by
the upstream gradient and returns it (see ``mylosses/_function.py`` for why this is safe). One
full-size buffer, about one pass over memory in each direction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd import Function

from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE

# Elements per block: 128K float32 values are 512 KiB; the block and the scratch stay in a core's
# L2 cache between the subtraction, the loss and the derivative (measured best of 2^15..2^18).
BLOCK = 1 << 17

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)  # computed in their own dtype, no upcast


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 and bfloat16 are computed in float32 (torch accumulates them in float32 too)."""
    return torch.float32 if dtype in _HALF else dtype


class PointwiseRule:
    """What one elementwise loss is: phi, phi', and torch's dtype and weighting conventions.

    A loss file subclasses it (setting ``kernel``, torch's kernel name for dtype errors,
    ``complex_ok``, ``weighted_mean_by_weight_sum`` and the static methods below) and writes its
    ``autograd.Function`` as three one-line delegations: ``forward`` to :meth:`forward`,
    ``setup_context`` to :func:`setup_context` and ``backward`` to :meth:`backward`. (The
    Function's own methods must be static methods: ``torch.compile`` traces no other kind.)

    The Function's ``forward(input, target, weight, reduction, param, precompute)`` (see
    ``PLAIN`` for ``precompute``) returns
    ``(loss, stashed_gradient_or_None)``; the second output is an implementation detail that the
    functional drops.
    """

    kernel = ""
    complex_ok = False
    # Whether fused_block_ needs a scratch block in the blocked loop (a rule that works in d
    # alone saves the allocation, which counts in the peak memory).
    scratch = True
    # torch's weighted 'mean': sum(w*l)/sum(w) for l1 and mse, but mean(w*l) for huber.
    weighted_mean_by_weight_sum = True

    @staticmethod
    def value(d: torch.Tensor, param: float) -> torch.Tensor:
        """phi(d), elementwise, out of place."""
        raise NotImplementedError

    @staticmethod
    def derivative(d: torch.Tensor, param: float) -> torch.Tensor:
        """phi'(d), elementwise, with differentiable ops (used by double backward)."""
        raise NotImplementedError

    @staticmethod
    def derivative_(d: torch.Tensor, param: float, scale: float) -> torch.Tensor:
        """Overwrite ``d`` with scale * phi'(d) and return it (the fast path)."""
        raise NotImplementedError

    @classmethod
    def fused_block_(
        cls, d: torch.Tensor, param: float, scale: float, scratch: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale * sum(phi(d)), scale * phi'(d))`` of one flat block (the fast path).

        With a ``scratch`` (real, d's size, free to overwrite) the derivative must be left in
        ``d``; with None (a single small block) it may be any buffer, ``d`` itself or a fresh
        one, and ``d`` may be clobbered. The default allocates phi(d); a loss overrides it to
        work in ``d`` and ``scratch`` alone, in as few passes as it can (a fresh allocation per
        block would cost page faults on every block), and with as few ops taking a Python
        scalar as it can (each costs a few microseconds on a small input: ``scale == 1``, the
        'sum', should skip its multiplications).
        """
        total = cls.value(d, param).sum()
        cls.derivative_(d, param, scale)
        return (total * scale if scale != 1.0 else total), d

    # -- forward -------------------------------------------------------------------------------

    @classmethod
    def forward(
        cls,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        reduction: int,
        param: float,
        precompute: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if weight is None and precompute:
            plain = precompute == PLAIN
            loss, grad = cls._fused(input, target, reduction, param, plain)
            if not plain and (loss.dtype != input.dtype or input.dtype != target.dtype):
                loss = _cast(loss, cls.result_dtype(input, target, weight))
            return loss, grad
        out_dtype = cls.result_dtype(input, target, weight)
        loss = cls.value(_difference(input, target), param)
        normalizer = None
        if weight is not None:
            loss = loss * weight
            normalizer = cls._weighted_normalizer(weight)
        return _cast(_reduction.apply_reduction(loss, reduction, normalizer), out_dtype), None

    @classmethod
    def result_dtype(
        cls, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.dtype:
        """torch's result dtype: input and target promoted (real for complex), then the weight."""
        dtype = _real(torch.promote_types(input.dtype, target.dtype))
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
        return dtype

    @classmethod
    def _weighted_normalizer(cls, weight: torch.Tensor) -> torch.Tensor | None:
        """What a weighted 'mean' divides by: the weights' sum, or (None) the element count."""
        return weight.sum() if cls.weighted_mean_by_weight_sum else None

    @classmethod
    def _fused(
        cls,
        input: torch.Tensor,
        target: torch.Tensor,
        reduction: int,
        param: float,
        plain: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss, and scale * phi'(d) in one buffer, block by block (module docstring).

        ``plain``: the caller has checked that the call is ``_plain``.
        """
        if plain:
            # The common small case (a batch of a few rows), where every microsecond of Python
            # counts: no promotion, no broadcast, no loop. The same arithmetic as below.
            scale = _reduction.reduction_scale(reduction, input.numel())
            total, grad = cls.fused_block_((input - target).view(-1), param, scale, None)
            return total, grad.view_as(input)  # (view_as: view(shape) costs 2 us more)
        shape = _validation.broadcast_shape(input, target)
        promoted = torch.promote_types(input.dtype, target.dtype)
        work = compute_dtype(promoted)
        n = shape.numel()
        blocked = (
            reduction != NONE
            and n > BLOCK
            and work == promoted
            and input.shape == shape
            and target.shape == shape
            and input.is_contiguous()
            and target.is_contiguous()
        )
        if blocked:
            d = torch.empty(shape, dtype=work, device=input.device)
        else:
            # (Upcasting half types before subtracting matters: a float32 ``out=`` of a bfloat16
            # subtraction would still round the difference to bfloat16.)
            d = _difference(input, target)
            if not d.is_contiguous():  # a transposed input gives a transposed d
                d = d.contiguous()
        if reduction == NONE:
            # The elementwise loss is an output of its own; the derivative goes into d.
            return cls.value(d, param), cls.derivative_(d, param, 1.0)
        if n == 0:  # an empty input: the sum is 0, the mean 0/0 = nan (as in torch)
            return d.new_full((), float("nan") if reduction == MEAN else 0.0, dtype=_real(work)), d
        scale = _reduction.reduction_scale(reduction, n)
        flat = d.view(-1)
        if n <= BLOCK:
            # One block (small inputs, where every op's overhead counts): no loop, no scratch.
            total, grad = cls.fused_block_(flat, param, scale, None)
            return total, grad.view_as(d)
        x = input.view(-1) if blocked else None
        y = target.view(-1) if blocked else None
        spare = None  # scratch memory of our own, where d has no unwritten room left
        partials = []
        for start, stop in _spans(n) if blocked else _even_spans(n):
            block = flat[start:stop]
            if x is not None and y is not None:
                torch.sub(x[start:stop], y[start:stop], out=block)
            room = None
            if cls.scratch:
                size = stop - start
                if blocked and stop + size <= n and not d.is_complex():
                    # The next stretch of d is not written yet: borrow it (so the whole
                    # forward+backward allocates nothing beyond the gradient itself).
                    room = flat[stop : stop + size]
                else:
                    if spare is None or spare.numel() < size:
                        spare = torch.empty(size, dtype=_real(work), device=d.device)
                    room = spare[:size]
            partials.append(cls.fused_block_(block, param, scale, room)[0])
        return torch.stack(partials).sum(), d

    # -- backward ------------------------------------------------------------------------------

    @classmethod
    def backward(cls, ctx: Any, grad_loss: torch.Tensor | None) -> tuple:
        if grad_loss is None:
            return (None,) * 6
        need_input, need_target, need_weight = ctx.needs_input_grad[:3]
        reduction, param, fused, plain = ctx.meta
        grad_d = _function.take_gradient(ctx)
        if grad_d is not None and plain:
            # The common case, kept short (small inputs pay for every line): input and target
            # of one shape and dtype, so the scaled buffer is the input's gradient as it is.
            grad_d = _function.times_upstream(grad_d, grad_loss)
            return grad_d if need_input else None, -grad_d if need_target else None, None, *_NONE3
        input, target, weight = ctx.saved_tensors
        if grad_d is None and fused and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again, so the
            # same bits as the first backward (gradcheck checks that backward is reentrant).
            grad_d = cls._fused(input, target, reduction, param, plain)[1]
        grad_weight = None
        if grad_d is not None:
            # Forward left scale * phi'(d) in a buffer of ours; only the upstream gradient is
            # missing.
            grad_d = _function.times_upstream(grad_d, grad_loss)
        elif weight is None:
            # Double backward: recompute with differentiable ops.
            d = _difference(input, target)
            g = _reduction.expand_grad(grad_loss, reduction, d.shape)
            grad_d = cls.derivative(d, param) * g
        else:
            grad_d, grad_weight = cls._weighted_backward(
                input, target, weight, grad_loss, reduction, param, need_weight
            )
        grad_input = _sum_to(grad_d, input) if need_input else None
        grad_target = _sum_to(-grad_d, target) if need_target else None
        return grad_input, grad_target, grad_weight, None, None, None

    @classmethod
    def _weighted_backward(
        cls,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor,
        grad_loss: torch.Tensor,
        reduction: int,
        param: float,
        need_weight: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """d loss / d d and d loss / d w of a weighted loss, with differentiable ops.

        One dtype throughout: the weight gradient of a weighted 'mean' is a difference of two
        large terms that cancel (exactly, for a weight broadcast over the loss), so a mix of
        bfloat16 and float32 between them leaves garbage, and even float32 leaves rounding
        noise where the truth (and torch) is 0: when the weight gradient is wanted, everything
        is computed in float64 and rounded once.
        """
        d = _difference(input, target)
        acc = compute_dtype(torch.promote_types(_real(d.dtype), weight.dtype))
        if need_weight:
            acc = torch.float64  # the weight gradient cancels large terms: compute it exactly
        w = _cast(weight, acc)
        upstream = _cast(grad_loss, acc)
        # torch sums the weights in their own dtype, as our forward does: the same rounding of
        # W. For half inputs that rounding is so coarse that it would not cancel against the
        # exact numerator of the weight gradient: there W is exact too.
        exact = need_weight and torch.promote_types(input.dtype, target.dtype) in _HALF
        normalizer = cls._weighted_normalizer(w if exact else weight)
        if normalizer is not None:
            normalizer = _cast(normalizer, acc)
        g = _reduction.expand_grad(upstream, reduction, d.shape, normalizer)
        grad_weight = None
        if need_weight:
            phi = _cast(cls.value(d, param), acc)
            grad_weight = (phi * g).sum_to_size(weight.shape)
            if reduction == MEAN and normalizer is not None:
                # l = sum(w phi) / W, and W = sum(w) depends on w too: dl/dW = -l / W.
                # (Not (phi_n - l) / W per element: a broadcast weight meets several phi_n
                # but counts once in W.)
                mean = (w * phi).sum() / normalizer
                grad_weight = grad_weight - mean * upstream / normalizer
            grad_weight = _cast(grad_weight, weight.dtype)
        return cls.derivative(d, param) * (g * w), grad_weight


_NONE3 = (None, None, None)

# The Function's ``precompute`` argument: 0, compute the loss only (vmap, compile, evaluation);
# 1, also leave the gradient for backward; PLAIN, the same for a call that ``_plain`` admits.
PLAIN = 2

# Below this many elements, the last stretch of a blocked pass takes scratch memory of its own.
_SMALL_SPAN = 1 << 12


def _even_spans(n: int) -> list[tuple[int, int]]:
    """[start, stop) blocks of BLOCK elements covering n."""
    return [(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK)]


def _spans(n: int) -> list[tuple[int, int]]:
    """Blocks covering n, each followed by at least as many unwritten elements as it has.

    Whole blocks while more than two blocks remain, then halves of what remains, down to a
    small last stretch: a block's scratch can then be the stretch of d right after it, which
    the pass has not written yet, and only the last, small stretch needs memory of its own.
    """
    spans, start = [], 0
    while n - start > 2 * BLOCK:
        spans.append((start, start + BLOCK))
        start += BLOCK
    while n - start > _SMALL_SPAN:
        half = (n - start) // 2
        spans.append((start, start + half))
        start += half
    spans.append((start, n))
    return spans


def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    """Save the inputs (for a recomputed backward) and stash forward's gradient, if any."""
    input, target, weight, reduction, param, precompute = inputs
    _, grad = output
    if grad is not None:
        ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, target, weight)
    fused = grad is not None
    plain = precompute == PLAIN  # input, target and gradient of one shape and dtype
    ctx.meta = (reduction, param, fused, plain)  # one attribute: each costs ~0.3 us
    _function.stash_gradient(ctx, grad)


_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def _real(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of a complex one (the loss of a complex difference is real)."""
    return _REAL.get(dtype, dtype)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, skipping the call (a microsecond or two) when there is nothing to do."""
    return t if t.dtype == dtype else t.to(dtype)


def _difference(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d = input - target, broadcast, in the compute dtype (float32 for half types)."""
    work = compute_dtype(torch.promote_types(input.dtype, target.dtype))
    return _cast(input, work) - _cast(target, work)


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A gradient summed over the dimensions ``like`` was broadcast along, in ``like``'s dtype."""
    if grad.shape != like.shape:
        grad = grad.sum_to_size(like.shape)
    return _cast(grad, like.dtype)


def check_call(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None,
    reduce: bool | None,
    reduction: str,
    weight: torch.Tensor | None,
) -> int:
    """``l1_loss``'s and ``mse_loss``'s checks (torch's Python for the two is the same), in
    torch's order: the size-mismatch warning, the legacy arguments, broadcasting, then the
    reduction (with a weight: the weight's size first, and only 'none', 'mean' or 'sum').
    Returns the reduction's integer."""
    _validation.warn_if_size_mismatch(input, target, stacklevel=4)
    reduction = _reduction.resolve(size_average, reduce, reduction)
    _validation.broadcast_shape(input, target)
    if weight is None:
        return _reduction.get_enum(reduction)
    _validation.check_weight_matches_input(weight, input)
    return _reduction.get_weighted_enum(reduction)


def pointwise_loss(
    fn: type[Function],
    rule: type[PointwiseRule],
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    reduction: int,
    param: float,
) -> torch.Tensor:
    """Check dtypes, then run ``fn`` (the Function of ``rule``): through autograd when a
    gradient may be asked for, else ``rule``'s forward directly (evaluation: no graph node)."""
    dtype = input.dtype
    if target.dtype != dtype:
        dtype = torch.promote_types(dtype, target.dtype)
    _validation.check_kernel_dtype(rule.kernel, dtype, input, complex_ok=rule.complex_ok)
    if not _function.needs_autograd(input, target, weight):
        return rule.forward(input, target, weight, reduction, param, 0)[0]
    precompute = int(_function.may_precompute())
    if precompute and weight is None and _plain(input, target, reduction):
        precompute = PLAIN
    return _function.apply(fn, input, target, weight, reduction, param, precompute)[0]


def _plain(input: torch.Tensor, target: torch.Tensor, reduction: int) -> bool:
    """A call the short paths serve: a reduced loss of one small block, input and target of one
    shape and floating dtype (float32/float64), contiguous."""
    return (
        reduction != NONE
        and input.dtype == target.dtype
        and input.dtype in _NATIVE
        and input.shape == target.shape
        and 0 < input.numel() <= BLOCK
        and input.is_contiguous()
        and target.is_contiguous()
    )
