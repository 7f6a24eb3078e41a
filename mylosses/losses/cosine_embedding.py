r"""Cosine embedding loss: ``CosineEmbeddingLoss`` / ``cosine_embedding_loss``.

For pairs of rows :math:`x_1, x_2 \in \mathbb{R}^D` (an (N, D) batch with an (N,) target, or
one unbatched (D,) pair with a 0-d target) and targets :math:`y \in \{1, -1\}`, with torch's
:math:`\epsilon = 10^{-12}` (a C++ ``float``: 9.999999960041972e-13 as a double):

.. math::

    p = \sum_d x_{1d} x_{2d}, \quad m_1 = \sum_d x_{1d}^2 + \epsilon, \quad
    m_2 = \sum_d x_{2d}^2 + \epsilon, \quad
    \delta = \sqrt{m_1 m_2}, \quad c = p / \delta,

.. math::

    l = \begin{cases} 1 - c & y = 1 \\ \max(0, c - \text{margin}) & y = -1 \\
        0 & \text{any other target} \end{cases}, \qquad
    \ell = \begin{cases} l & \text{'none'} \\ \sum_n l_n & \text{'sum'} \\
           \frac{1}{N}\sum_n l_n & \text{'mean'} \end{cases}

Backward. With :math:`g_n` the upstream gradient of row n times the reduction's factor, the
gradient reaching the cosine is :math:`\gamma = -g` where :math:`y = 1`, :math:`g` where
:math:`y = -1` and :math:`c - \text{margin} \ge 0` (torch's ``clamp_min`` lets the gradient
through at the tie), and 0 elsewhere. Then, from :math:`\partial p / \partial x_1 = x_2` and
:math:`\partial m_1 / \partial x_1 = 2 x_1` (the :math:`\epsilon` is a constant):

.. math::

    \frac{\partial c}{\partial x_1} = \frac{x_2}{\delta}
        - \frac{p}{2 (m_1 m_2)^{3/2}} m_2 \cdot 2 x_1
      = \frac{x_2}{\delta} - c \, \frac{x_1}{m_1},

and symmetrically for :math:`x_2`. So each gradient is one combination of the two rows with
per-row coefficients:

.. math::

    \frac{\partial \ell}{\partial x_1} = a\, x_2 + b_1 x_1, \quad
    \frac{\partial \ell}{\partial x_2} = a\, x_1 + b_2 x_2, \qquad
    a = \frac{\gamma}{\delta}, \quad
    b_1 = 2 m_2 \frac{-\gamma\, (c/\delta)}{2\delta}, \quad
    b_2 = 2 m_1 \frac{-\gamma\, (c/\delta)}{2\delta}.

The coefficients are written in the order torch's autograd chain computes them (DivBackward:
:math:`-\gamma (p/\delta)/\delta`, SqrtBackward: divide by :math:`2\delta`, MulBackward:
times :math:`m_2` or :math:`m_1`), so that infinities and NaNs come out where torch's do.
:math:`b_1` is :math:`-\gamma c / m_1`: the two forms agree up to rounding.

Surprises in torch (all matched here):

- a zero row is not an error: :math:`m = \epsilon`, :math:`c = 0` and the gradient w.r.t. the
  zero row is :math:`\gamma x_2 / \sqrt{\epsilon m_2}`, about :math:`10^6 / |x_2|`; with the
  default margin 0 and :math:`y = -1` that row sits exactly on the tie, where the gradient
  flows. In float16 :math:`\epsilon` rounds to 0 and torch's cosine is 0/0 = NaN; we compute
  half dtypes in float32 and round once (cosine 0, the float64 truth).
- targets other than ±1 contribute 0 and no gradient (a NaN cosine included); a bool target
  counts True as 1 and False as neither.
- the target must be 0-d or 1-d, both inputs exactly one dimension more; the inputs broadcast
  against each other ((N, D) with (1, D) or (N, 1)) and the target against the cosines, all
  with torch's messages. Integer and bool inputs are promoted (the result is float32); a
  complex input fails only at the clamp ("clamp is not supported for complex types").
- the target gets no gradient (one that requires grad is allowed and gets None).
- ``margin`` is a float: an int, bool or 0-d tensor is accepted, a tensor that requires grad
  is not.

Speed: torch's composition is eighteen autograd nodes that each read and write full (N, D)
tensors: three products, their gradients, expands and sums. Here a forward walks the rows in
cache-sized blocks, computing the three row sums :math:`p, m_1, m_2` from one read of each
input (the products go into a small scratch block), and keeps only them; backward turns the
upstream gradient into the per-row coefficients (N numbers) and writes each gradient in one
pass, ``a x_2`` then ``+= b_1 x_1`` on the block still in cache: two reads of the inputs and
one write of each gradient in all, and no full-size buffer but the gradients.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function, _reduction
from mylosses._reduction import MEAN, SUM

_cast = _function.cast

__all__ = ["CosineEmbeddingLoss", "cosine_embedding_loss"]

# torch's ``constexpr float EPSILON = 1e-12`` (aten/src/ATen/native/Loss.cpp), as a double.
EPSILON = 9.999999960041972e-13
# Elements of one row block: a block of each input, and the scratch, stay in L2.
BLOCK = 1 << 16

_HALF = (torch.float16, torch.bfloat16)
_NATIVE = (torch.float32, torch.float64)


def _floating(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def work_dtype(d1: torch.dtype, d2: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(result dtype, computing dtype). torch's result: the dtype of ``p / sqrt(m1 m2)``, where
    an integer ``m`` becomes float by the added epsilon; half results are computed in float32."""
    out = torch.promote_types(
        torch.promote_types(d1, d2), torch.promote_types(_floating(d1), _floating(d2))
    )
    return out, (torch.float32 if out in _HALF else out)


# -- the row sums ------------------------------------------------------------------------------

_vecdot = torch.linalg.vecdot  # sum(a * b, -1) for real tensors, bit for bit the same


def _row_sums(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """p = sum(a b), s1 = sum(a a), s2 = sum(b b) over the rows of two contiguous (N, D)
    tensors of one dtype, reading each input once: row blocks whose products go to a scratch
    block in cache. Each row is summed by the same kernel as ``(a * b).sum(1)``."""
    n, d = a.shape
    if n * d <= BLOCK:
        return _vecdot(a, b), _vecdot(a, a), _vecdot(b, b)
    p, s1, s2 = a.new_empty(n), a.new_empty(n), a.new_empty(n)
    rows = max(1, BLOCK // d)
    scratch = a.new_empty(min(rows, n), d)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        ab, bb, s = a[start:stop], b[start:stop], scratch[: stop - start]
        torch.sum(torch.mul(ab, bb, out=s), 1, out=p[start:stop])
        torch.sum(torch.mul(ab, ab, out=s), 1, out=s1[start:stop])
        torch.sum(torch.mul(bb, bb, out=s), 1, out=s2[start:stop])
    return p, s1, s2


def _combine(u: Tensor, a: Tensor, v: Tensor, b: Tensor) -> Tensor:
    """``a u + b v`` for (N, D) rows and (N, 1) per-row coefficients, into one fresh buffer,
    block by block (the second read of each block comes from cache)."""
    n, d = u.shape
    if n * d <= BLOCK:
        return torch.mul(u, a).addcmul_(v, b)
    out = torch.empty_like(u)
    rows = max(1, BLOCK // d)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        o = out[start:stop]
        torch.mul(u[start:stop], a[start:stop], out=o)
        o.addcmul_(v[start:stop], b[start:stop])
    return out


# -- forward -----------------------------------------------------------------------------------


def _statistics(x1: Tensor, x2: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(cos, denom, m1, m2) with torch's plain ops: broadcasting, differentiable."""
    p = (x1 * x2).sum(dim)
    m1 = (x1 * x1).sum(dim) + EPSILON
    m2 = (x2 * x2).sum(dim) + EPSILON
    denom = (m1 * m2).sqrt()
    return p / denom, denom, m1, m2


def _fast_statistics(x1: Tensor, x2: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(cos, denom, m1, m2) of inputs of one shape and float dtype, contiguous (see
    :func:`_plain`), by the blocked row sums; the same values as :func:`_statistics`."""
    if dim == 0:
        p, m1, m2 = _row_sums(x1.view(1, -1), x2.view(1, -1))
        p, m1, m2 = p.view(()), m1.view(()), m2.view(())
    else:
        p, m1, m2 = _row_sums(x1, x2)
    m1, m2 = m1.add_(EPSILON), m2.add_(EPSILON)
    denom = (m1 * m2).sqrt_()
    return p.div_(denom), denom, m1, m2


def _rows(cos: Tensor, target: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """The unreduced loss: 1 - cos where the target is 1, max(0, cos - margin) where it is -1,
    0 elsewhere (also where the cosine is NaN); and the two target masks."""
    if cos.is_complex():
        raise NotImplementedError("clamp is not supported for complex types")
    positive, negative = target == 1, target == -1
    hinge = torch.where(negative, (cos - margin).clamp_min_(0), 0)
    return torch.where(positive, 1 - cos, hinge), positive, negative


def _reduce(loss: Tensor, reduction: int) -> Tensor:
    if reduction == MEAN:
        return loss.mean()
    if reduction == SUM:
        return loss.sum()
    return loss


def _plain(x1: Tensor, x2: Tensor, target: Tensor) -> bool:
    """Whether the blocked row sums serve this call: inputs of one shape, one float32/float64
    dtype, contiguous and not empty, and a target of the rows' length (or 1), in eager mode."""
    if not (
        x1.dtype in _NATIVE
        and x1.dtype == x2.dtype
        and x1.shape == x2.shape
        and x1.numel() > 0
        and x1.is_contiguous()
        and x2.is_contiguous()
        and _function.may_precompute()
    ):
        return False
    return target.dim() == 0 or target.shape[0] in (1, x1.shape[0])


def _loss(x1: Tensor, x2: Tensor, target: Tensor, margin: float, reduction: int) -> Tensor:
    """The reduced loss in torch's result dtype, with plain ops (any dtypes and shapes)."""
    out, work = work_dtype(x1.dtype, x2.dtype)
    cos = _statistics(_cast(x1, work), _cast(x2, work), target.dim())[0]
    return _cast(_reduce(_rows(cos, target, margin)[0], reduction), out)


# -- backward ----------------------------------------------------------------------------------


def _coefficients(
    gcos: Tensor, cos: Tensor, denom: Tensor, m1: Tensor, m2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b1, b2) of the module docstring from d loss / d cos, in torch's order of operations
    (the factors 2 of the square root's and the squares' derivatives cancel exactly)."""
    a = gcos / denom
    h = (gcos * (cos / denom)).div(denom).neg()  # 2 d loss / d (m1 m2)
    return a, h * m2, h * m1


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    return t if t.shape == shape else t.sum_to_size(shape)


def _gradients(
    x1: Tensor,
    x2: Tensor,
    target: Tensor,
    margin: float,
    reduction: int,
    grad: Tensor,
    needs: tuple[bool, bool],
) -> tuple[Tensor | None, Tensor | None]:
    """Both input gradients from the inputs, with differentiable ops (double backward, and
    every call the blocked path does not serve): broadcast inputs and targets included."""
    _, work = work_dtype(x1.dtype, x2.dtype)
    if work == torch.float32 and torch.is_grad_enabled():
        # A gradient to be differentiated again: its second derivative cancels terms of order
        # 1/|x|^2 (nearly parallel rows, D = 1), which float32 leaves as noise far above torch's
        # own; float64 keeps it to the final rounding.
        work = torch.float64
    a1, a2 = _cast(x1, work), _cast(x2, work)
    dim = target.dim()
    cos, denom, m1, m2 = _statistics(a1, a2, dim)
    shape = torch.broadcast_shapes(cos.shape, target.shape)
    g = _reduction.expand_grad(_cast(grad, work), reduction, shape)
    # d loss / d cos: -g where the target is 1, g where it is -1 and cos - margin >= 0 (torch's
    # clamp_min passes the gradient at the tie), else 0; summed back to the cosines' shape
    # where the target broadcast them
    gcos = torch.where(target == 1, -g, torch.where((target == -1) & (cos >= margin), g, 0))
    a, b1, b2 = _coefficients(_sum_to(gcos, cos.shape), cos, denom, m1, m2)
    # d loss / d (x1 x2), over the broadcast product (p's summed dimension restored)
    a = a.unsqueeze(dim).expand(torch.broadcast_shapes(a1.shape, a2.shape))
    g1 = g2 = None
    if needs[0]:
        g1 = _sum_to(a * a2, a1.shape) + _sum_to(b1, m1.shape).unsqueeze(dim) * a1
        g1 = _cast(g1, x1.dtype)
    if needs[1]:
        g2 = _sum_to(a * a1, a2.shape) + _sum_to(b2, m2.shape).unsqueeze(dim) * a2
        g2 = _cast(g2, x2.dtype)
    return g1, g2


def _fast_coefficients(
    x1: Tensor,
    x2: Tensor,
    target: Tensor,
    margin: float,
    reduction: int,
    grad: Tensor,
    stats: list[Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b1, b2) as (rows, 1) columns, from forward's statistics (or, in a second backward
    through a retained graph, from the blocked row sums again)."""
    if stats is None:
        cos, denom, m1, m2 = _fast_statistics(x1, x2, target.dim())
        positive, negative = target == 1, target == -1
    else:
        cos, denom, m1, m2, positive, negative = stats
        stats.clear()  # freed on return
    if reduction == MEAN:
        grad = grad / max(cos.numel(), target.numel())
    # cos >= margin is cos - margin >= 0: both round the margin to the cosine's dtype, and a
    # difference of two floats is 0 only where they are equal
    gcos = torch.where(positive, -grad, torch.where(negative & (cos >= margin), grad, 0))
    a = gcos / denom
    h = (gcos * (cos / denom)).div_(denom).neg_()
    return a.view(-1, 1), h.mul(m2).view(-1, 1), h.mul_(m1).view(-1, 1)


def _fast_gradients(
    x1: Tensor,
    x2: Tensor,
    target: Tensor,
    margin: float,
    reduction: int,
    grad: Tensor,
    stats: list[Tensor] | None,
    needs: tuple[bool, bool],
) -> tuple[Tensor | None, Tensor | None]:
    """Both gradients by one blocked pass each over per-row coefficients (grad mode off).
    Forward's statistics are released before the gradients are allocated (peak memory: the
    two gradients and three numbers per row)."""
    a, b1, b2 = _fast_coefficients(x1, x2, target, margin, reduction, grad, stats)
    u, v = (x1, x2) if x1.dim() == 2 else (x1.view(1, -1), x2.view(1, -1))
    g1 = _combine(v, a, u, b1).view(x1.shape) if needs[0] else None
    del b1
    g2 = _combine(u, a, v, b2).view(x2.shape) if needs[1] else None
    return g1, g2


def _take_stats(ctx: Any) -> list[Tensor] | None:
    """Forward's statistics, once, in a list that :func:`_fast_gradients` empties (so that
    they are freed before the gradients are allocated); None after the first call."""
    stats, ctx.stats = ctx.stats, None
    return None if stats is None else list(stats)


class _CosineEmbedding(torch.autograd.Function):
    """l = 1 - cos or max(0, cos - margin) per row pair; gradients w.r.t. both inputs.

    ``forward(input1, input2, target, margin, reduction, fast)`` returns the loss and, with
    ``fast`` (see :func:`_plain`), six auxiliary outputs for backward: cos, denom, m1, m2 and
    the target masks (1 and -1), from the blocked row sums; else six Nones, and backward
    recomputes from the inputs.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input1: Tensor, input2: Tensor, target: Tensor, margin: float, reduction: int, fast: int
    ) -> tuple[Tensor | None, ...]:
        if fast:
            cos, denom, m1, m2 = _fast_statistics(input1, input2, target.dim())
            loss, positive, negative = _rows(cos, target, margin)
            return _reduce(loss, reduction), cos, denom, m1, m2, positive, negative
        loss = _loss(input1, input2, target, margin, reduction)
        return loss, None, None, None, None, None, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input1, input2, target, margin, reduction, fast = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input1, input2, target)
        ctx.meta = (margin, reduction, bool(fast))
        if fast:
            ctx.mark_non_differentiable(*output[1:])
        # for one use by backward (a retained graph's second backward recomputes them)
        ctx.stats = output[1:] if fast else None

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *_aux: None) -> tuple:
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if grad is None or not (needs[0] or needs[1]):
            return None, None, None, None, None, None
        input1, input2, target = ctx.saved_tensors
        margin, reduction, fast = ctx.meta
        if fast and not torch.is_grad_enabled() and not _function.batched(grad):
            stats = _take_stats(ctx)  # (passed on without a reference left in this frame)
            g1, g2 = _fast_gradients(input1, input2, target, margin, reduction, grad, stats, needs)
        else:  # double backward, a vmap, or a call the blocked path does not serve
            g1, g2 = _gradients(input1, input2, target, margin, reduction, grad, needs)
        return g1, g2, None, None, None, None


# -- the functional and the module -------------------------------------------------------------


def _margin(value: object) -> float:
    """``margin`` as torch's argument parser takes a float: a real number, or a 0-d tensor that
    does not require grad."""
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    if isinstance(value, Tensor):
        if value.dim() == 0 and not value.requires_grad:
            if value.is_complex():
                raise RuntimeError("value cannot be converted to type double without overflow")
            return float(value)
    elif isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        "cosine_embedding_loss(): argument 'margin' (position 4) must be float, "
        f"not {type(value).__name__}"
    )


def _check_dims(input1: Tensor, input2: Tensor, target: Tensor) -> None:
    """torch's checks: a 0-d or 1-d target, and inputs of one more dimension each."""
    dim = target.dim()
    if dim > 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    want = dim + 1
    if input1.dim() != want or input2.dim() != want:
        raise RuntimeError(
            f"{dim}D target tensor expects {want}D input tensors, but found inputs with sizes "
            f"{list(input1.shape)} and {list(input2.shape)}."
        )


def cosine_embedding_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The cosine embedding loss of row pairs; see :class:`torch.nn.CosineEmbeddingLoss`.

    >>> import torch, mylosses
    >>> x1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> x2 = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    >>> target = torch.tensor([1.0, -1.0])
    >>> mylosses.functional.cosine_embedding_loss(x1, x2, target, reduction="none")
    tensor([0.2929, 0.0000])
    """
    # A tensor subclass with __torch_function__ sees this one call, as with torch's.
    if has_torch_function_variadic(input1, input2, target):
        return handle_torch_function(
            cosine_embedding_loss,
            (input1, input2, target),
            input1,
            input2,
            target,
            margin=margin,
            size_average=size_average,
            reduce=reduce,
            reduction=reduction,
        )
    red = _reduction.reduction_enum(size_average, reduce, reduction)
    m = _margin(margin)
    _check_dims(input1, input2, target)
    fast = _plain(input1, input2, target)
    if not _function.needs_autograd(input1, input2):
        if fast:
            cos = _fast_statistics(input1, input2, target.dim())[0]
            return _reduce(_rows(cos, target, m)[0], red)
        return _loss(input1, input2, target, m, red)
    return _function.apply(_CosineEmbedding, input1, input2, target, m, red, int(fast))[0]


class CosineEmbeddingLoss(torch.nn.CosineEmbeddingLoss):
    __doc__ = torch.nn.CosineEmbeddingLoss.__doc__

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return cosine_embedding_loss(
            input1, input2, target, margin=self.margin, reduction=self.reduction
        )
