r"""Cross entropy of logits: ``CrossEntropyLoss`` / ``cross_entropy``.

Forward. For the scores :math:`x_{n,\cdot}` of one position (a row of ``C`` logits; the class
dimension is 1, or 0 of an unbatched ``(C,)`` input) the log-probabilities are
:math:`\log p_c = x_c - \mathrm{lse}`, :math:`\mathrm{lse} = \log \sum_j e^{x_j}`, computed
as :math:`(x_c - m) - \log \sum_j e^{x_j - m}` with :math:`m = \max_j x_j` (exact for logits of
±1e4). With class weights :math:`w` (default 1), :math:`W = \sum_c w_c`, label smoothing
:math:`\varepsilon`:

- class-index targets :math:`t_n` (positions equal to ``ignore_index`` contribute 0):

  .. math::

      l_n = (1 - \varepsilon)\, w_{t_n} (-\log p_{t_n})
            + \frac{\varepsilon}{C} \sum_c w_c (-\log p_c),

  and 'mean' divides :math:`\sum_n l_n` by :math:`\sum_n w_{t_n}` over the non-ignored
  positions (with smoothing too: torch's normaliser);
- class-probability targets :math:`y_{n,c}` (the target has the input's shape), smoothed to
  :math:`q = (1 - \varepsilon) y + \varepsilon / C`:

  .. math::

      l_n = \sum_c w_c\, q_{n,c} (-\log p_{n,c}),

  and 'mean' divides by the number of positions :math:`N d_1 \cdots d_K`, never by weights.

Backward. :math:`\partial \mathrm{lse} / \partial x_c = p_c` (the softmax), so with
:math:`\omega_n = w_{t_n}` (0 where ignored) and :math:`r` the reduction's factor (1, or
:math:`1/\sum_n \omega_n` for 'mean', times the upstream gradient):

.. math::

    \frac{\partial \ell}{\partial x_{n,c}} = r \Big( p_c \big[(1-\varepsilon)\,\omega_n
        + \tfrac{\varepsilon}{C} W v_n\big] - (1-\varepsilon)\,\omega_n [c = t_n]
        - \tfrac{\varepsilon}{C} w_c v_n \Big)

(:math:`v_n` is 0 where ignored, else 1): the softmax minus the smoothed target, scaled. For
probability targets :math:`\partial \ell / \partial x_{n,c} = r (p_c Q_n - w_c q_{n,c})` with
:math:`Q_n = \sum_c w_c q_{n,c}`, and the target and the weight get gradients too:
:math:`\partial \ell / \partial y_{n,c} = r (1-\varepsilon) w_c (-\log p_{n,c})`,
:math:`\partial \ell / \partial w_c = \sum_n r\, q_{n,c} (-\log p_{n,c})`.

How it runs. torch computes ``log_softmax`` (a logits-sized output it keeps), ``nll_loss``,
and in backward a zero-filled logits-sized gradient and the ``log_softmax`` backward's: three
logits-sized buffers (with label smoothing a chain of eleven autograd nodes). Here forward walks
the logits in blocks of rows that stay in cache: the row maximum, ``x - m`` into the one fresh
buffer (the sums the loss needs are read from it there), ``exp``, the row sum, and then,
when the logits require grad, the scaled softmax minus the scaled target written over it. That
buffer is the gradient: backward multiplies it by the upstream gradient in place. Saved for a
second backward: the logits and one log-sum-exp per position (kept as its two exact parts,
the shift :math:`m` and :math:`\log \sum_j e^{x_j - m}`, so that logits of 1e4 keep their
log-probabilities), never the softmax. A retained graph's second backward reruns forward's
kernel (the same bits); with ``create_graph=True`` the gradient is recomputed with
differentiable ops, the log-sum-exp included. A batch of a few rows (``(N, C)``, no options)
takes a short path (``_CEShort``) with the same arithmetic and as few Python steps as it can.

Surprises in torch: a target of the input's shape means probabilities (then
``ignore_index >= 0`` is an error); ``label_smoothing`` must be at most 1 but may be negative
or nan (no smoothing then); the weight must have the input's dtype with class indices, but
promotes with probabilities (where it even gets a gradient, while with class indices a weight
that requires grad is an error); int32 class targets are rejected (uint8 is accepted, except
by the K-dimensional kernel); 'mean' with every target ignored is nan, while the gradient is 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _classification as _cls
from mylosses import _function, _reduction, _validation
from mylosses._reduction import MEAN, NONE, SUM

_cast = _function.cast

__all__ = ["CrossEntropyLoss", "cross_entropy"]

# Logits per block: 2^17 float32 values (512 KiB) stay in a core's L2 cache between the passes.
BLOCK = 1 << 17
_HALF = (torch.float16, torch.bfloat16)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


class _Setup:
    """Everything forward needs besides the tensors, decided once by the functional."""

    __slots__ = (
        "any_ignored",
        "dtype",
        "eps",
        "ignore_index",
        "precompute",
        "prob",
        "reduction",
    )

    def __init__(
        self,
        reduction: int,
        eps: float,
        ignore_index: int,
        prob: bool,
        any_ignored: bool | None,
        precompute: bool,
        dtype: torch.dtype,
    ) -> None:
        self.reduction = reduction
        self.eps = eps  # label smoothing actually applied (0 when torch applies none)
        self.ignore_index = ignore_index
        self.prob = prob  # probability targets
        self.any_ignored = any_ignored  # False/True when known, None when not checked
        self.precompute = precompute  # forward writes the input's gradient (eager only)
        self.dtype = dtype  # the result's dtype


def _wsum(t3: Tensor, w: Tensor | None) -> Tensor:
    """:math:`\\sum_c w_c t_{r,c,s}` (or the plain sum), kept as (R, 1, S)."""
    if w is None:
        return t3.sum(1, keepdim=True)
    if t3.shape[2] == 1:
        return (t3.view(t3.shape[0], t3.shape[1]) @ w).view(t3.shape[0], 1, 1)
    return torch.matmul(w, t3).unsqueeze(1)


def _shift(x3: Tensor) -> Tensor:
    """The row maximum (R, 1, S). An infinite one is kept as it is: torch's ``x - max`` is nan
    there (inf - inf), and so are its log-probabilities; ours follow."""
    return x3.amax(1, keepdim=True)


class _Prepared:
    """The arranged tensors and per-position factors of one call (see the module docstring)."""

    __slots__ = ("W", "arr", "omega", "t3", "valid", "w", "x3", "y3")

    arr: _cls.Arrangement
    x3: Tensor  # the logits (R, C, S)
    t3: Any  # class targets (R, 1, S), made safe to index with (None with probabilities)
    y3: Any  # probability targets (R, C, S) (None with class indices)
    w: Tensor | None  # class weights (C,)
    omega: Any  # per-position weights (R, 1, S), None where all 1
    valid: Any  # 0/1 mask of non-ignored positions (R, 1, S), None where none is ignored
    W: Any  # the sum of the class weights


def _prepare(input: Tensor, target: Tensor, weight: Tensor | None, s: _Setup) -> _Prepared:
    p = _Prepared()
    work = _work_dtype(input.dtype)
    if s.prob:  # the product with the target (and weight) promotes; log_softmax does not
        work = torch.promote_types(work, target.dtype)
        if weight is not None:
            work = torch.promote_types(work, weight.dtype)
        work = _work_dtype(work)
    arr, x3 = _cls.arrange(input)
    p.arr, p.x3 = arr, _cast(x3, _work_dtype(input.dtype))
    w = None if weight is None else _cast(weight.reshape(-1), work)
    p.w = w
    # W = sum_c w_c, the smoothing's total weight
    p.W = float(arr.C) if w is None else (w.sum() if s.eps else None)
    p.y3 = p.t3 = p.omega = p.valid = None
    if s.prob:
        p.y3 = _cast(arr.arrange(target), work)
    else:
        t3 = target.reshape(arr.R, 1, arr.S)
        p.t3, p.omega, p.valid = _cls.position_weights(
            t3, weight, s.ignore_index, s.any_ignored, work
        )
    return p


def _scales(p: _Prepared, s: _Setup, with_grad: bool) -> tuple[Any, Any, Any, Any]:
    """For class indices: the gradient's per-position factors (a, b, e) of the module
    docstring, with the reduction's factor r folded in (None without a gradient; floats where
    they are the same everywhere), and the mean's normaliser."""
    n = p.arr.R * p.arr.S
    total: Any = None
    r: Any = 1.0
    if s.reduction == MEAN:
        if p.omega is None:
            total = n
            r = 1.0 / n if n else 0.0
        else:
            total = p.omega.sum()
            if with_grad:
                r = total.reciprocal()
    if not with_grad:
        return None, None, None, total
    eps = s.eps
    omega = p.omega
    k = r * (1.0 - eps) if eps else r
    b = k if omega is None else omega * k
    e = None
    if eps:
        e = r * (eps / p.arr.C)
        if p.valid is not None:
            e = p.valid * e
    if isinstance(r, Tensor) and p.valid is not None:
        # A zero total weight makes r infinite: the non-ignored positions get torch's nan
        # (0 * inf), the ignored ones exactly 0 (torch skips them), so every target ignored
        # means a zero gradient.
        ignored = p.valid == 0
        b = torch.where(ignored, torch.zeros_like(b), b)
        if e is not None:
            e = torch.where(ignored, torch.zeros_like(e), e)
    if e is None:
        return b, b, None, total
    a = b + e * p.W
    return a, b, e, total


def _fused(
    p: _Prepared, s: _Setup, factors: tuple[Any, Any, Any], with_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per-position loss (R, S), the input's gradient (R, C, S) scaled by everything but the
    upstream gradient (or None), and the log-sum-exp (R, 2, S) as its two exact parts (the
    shift m and log sum exp(x - m): their sum would round away log p of logits of 1e4),
    block by block."""
    arr, x3, w = p.arr, p.x3, p.w
    R, C, S = arr.R, arr.C, arr.S
    eps = s.eps
    a, b, e = factors
    # the mean's factor for probability targets: 1 / positions
    r = 1.0 / (R * S) if s.prob and s.reduction == MEAN and R * S else 1.0
    G = torch.empty((R, C, S), dtype=x3.dtype, device=x3.device) if with_grad else None
    rows = max(1, BLOCK // max(1, C * S))
    single = rows >= R
    loss: Any = None
    lse: Any = None
    if not single:
        loss = x3.new_empty((R, 1, S))
        lse = x3.new_empty((R, 2, S))
    scratch = scratch2 = scratch3 = None
    w3 = None if w is None else w.view(1, C, 1)
    W = p.W
    for i in range(0, R, rows):
        j = min(R, i + rows)
        xb = x3 if single else x3[i:j]
        if G is not None:
            D = G if single else G[i:j]
        else:
            if scratch is None:
                scratch = torch.empty((j - i, C, S), dtype=x3.dtype, device=x3.device)
            D = scratch[: j - i]
        m = _shift(xb)
        torch.sub(xb, m, out=D)
        if s.prob:
            yb = p.y3 if single else p.y3[i:j]
            if scratch2 is None:
                scratch2 = torch.empty((j - i, C, S), dtype=x3.dtype, device=x3.device)
            if eps:  # q = (1 - eps) y + eps / C, as torch forms it (so 0 * inf stays out)
                qb = torch.mul(yb, 1.0 - eps, out=scratch2[: j - i]).add_(eps / C)
                if scratch3 is None:
                    scratch3 = torch.empty_like(scratch2)
                prod = torch.mul(qb, D, out=scratch3[: j - i])
            else:
                qb = yb
                prod = torch.mul(qb, D, out=scratch2[: j - i])
            Q = _wsum(qb, w)
            qD = _wsum(prod, w)
            D.exp_()
            ssum = D.sum(1, keepdim=True)
            logs = ssum.log()
            lb = Q * logs - qD
            if G is not None:
                D.mul_(Q * r / ssum if r != 1.0 else Q / ssum)
                if w3 is None:
                    D.add_(qb, alpha=-r)
                else:
                    D.addcmul_(qb, w3, value=-r)
        else:
            tb = p.t3 if single else p.t3[i:j]
            Dt = D.gather(1, tb)
            sD = _wsum(D, w) if eps else None
            D.exp_()
            ssum = D.sum(1, keepdim=True)
            logs = ssum.log()
            lb = logs - Dt
            if p.omega is not None:
                lb = lb * (p.omega if single else p.omega[i:j])
            if eps:
                smooth = logs * W - sD
                if p.valid is not None:
                    smooth = smooth * (p.valid if single else p.valid[i:j])
                lb = lb * (1.0 - eps) + smooth * (eps / C)
            if G is not None:
                ab = a if single else _rows(a, i, j)
                D.mul_(ab / ssum)
                bb = b if single else _rows(b, i, j)
                if isinstance(bb, Tensor):
                    D.scatter_add_(1, tb, -bb)
                else:
                    D.scatter_add_(1, tb, Dt.fill_(-bb))
                if eps:
                    eb = e if single else _rows(e, i, j)
                    if w3 is None:
                        D.sub_(eb)
                    else:
                        D.addcmul_(
                            eb if isinstance(eb, Tensor) else D.new_full((), eb), w3, value=-1.0
                        )
        if single:
            loss, lse = lb, torch.cat((m, logs), 1)
        else:
            loss[i:j] = lb
            lse[i:j, :1] = m
            lse[i:j, 1:] = logs
    if R == 0:
        loss = x3.new_empty((R, 1, S))
        lse = x3.new_empty((R, 2, S))
    loss = loss.view(R, S)
    if p.valid is not None:
        loss = loss.masked_fill(p.valid.view(R, S) == 0, 0.0)
    return loss, G, lse


def _rows(t: Any, i: int, j: int) -> Any:
    """Rows i:j of a per-position factor (R, 1, S); a float or 0-d tensor is the same for all."""
    return t[i:j] if isinstance(t, Tensor) and t.dim() == 3 else t


def _log_probs(p: _Prepared, s: _Setup, D: Tensor, logs: Tensor, dtype: torch.dtype) -> Tensor:
    """log p = (x - m) - log sum exp(x - m), as torch's log_softmax leaves it: in the input's
    dtype (rounded to a half dtype), then promoted for the product with the target."""
    logp = D - logs
    if dtype in _HALF and p.y3 is not None and p.y3.dtype != logp.dtype:
        logp = logp.to(dtype)
    return _cast(logp, p.y3.dtype if p.y3 is not None else logp.dtype)


def _plain(p: _Prepared, s: _Setup, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The per-position loss (R, S) and the log-sum-exp parts (R, 2, S) out of place (functorch,
    compile, mixed dtypes): the same arithmetic as ``_fused`` without writing into buffers."""
    x3, w = p.x3, p.w
    C = p.arr.C
    eps = s.eps
    m = _shift(x3)
    D = x3 - m
    logs = D.exp().sum(1, keepdim=True).log()
    if s.prob:
        y = p.y3
        q = y * (1.0 - eps) + eps / C if eps else y
        loss = -_wsum(q * _log_probs(p, s, D, logs, dtype), w)
    else:
        loss = logs - D.gather(1, p.t3)
        if p.omega is not None:
            loss = loss * p.omega
        if eps:
            smooth = logs * p.W - _wsum(D, w)
            if p.valid is not None:
                smooth = smooth * p.valid
            loss = loss * (1.0 - eps) + smooth * (eps / C)
        if p.valid is not None:
            loss = torch.where(p.valid == 0, torch.zeros_like(loss), loss)
    return loss.view(p.arr.R, p.arr.S), torch.cat((m, logs), 1)


def _reduce(loss: Tensor, p: _Prepared, s: _Setup, total: Any) -> Tensor:
    if s.reduction == NONE:
        return loss
    out = loss.sum()
    if s.reduction == SUM:
        return out
    if s.prob:
        n = p.arr.R * p.arr.S
        return out / n if n else out * float("nan")
    return out / total


def _forward(
    input: Tensor, target: Tensor, weight: Tensor | None, s: _Setup, need_grad: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(result, the input's gradient before the upstream factor or None, lse)."""
    p = _prepare(input, target, weight, s)
    a = b = e = total = None
    if not s.prob:
        a, b, e, total = _scales(p, s, need_grad and s.precompute)
    if s.precompute:
        loss, G, lse = _fused(p, s, (a, b, e), need_grad)
    else:
        (loss, lse), G = _plain(p, s, input.dtype), None
    out = _reduce(loss, p, s, total)
    if s.reduction == NONE:
        out = out.reshape(_cls.out_shape(input))
    out = _cast(out, s.dtype)
    if G is not None:
        G = _cast(p.arr.restore(G), input.dtype)
    return out, G, lse


# -- the short path -----------------------------------------------------------------------
#
# The common small call: a contiguous (N, C) float32/float64 CPU input, int64 class targets, no
# weight, no smoothing, 'mean' or 'sum', in eager mode. At a batch of 8 every op and every
# Python check costs microseconds, about what torch's whole kernel takes, so this path is a
# Function of its own that does the least. A *plan* per call signature (shapes, dtypes,
# reduction, ignore_index), made once after the full checks, holds the constants; looking it up
# replaces most checks of later calls. The arithmetic is ``_fused``'s one block: with
# :math:`e = e^{x - m}` and :math:`s = \sum_c e_c`, the loss :math:`r \sum_n (\log s_n - (x -
# m)_{n, t_n})` (one dot product with (r, ..., r)) and the gradient
# :math:`r\,(e / s - [c = t])`, written over ``e`` in place (``e / (s / r)``, then -r added at
# each target). Backward hands it out, times the upstream gradient unless that is exactly 1
# (reading a CPU scalar costs less than a multiplication); a second backward through a
# retained graph reruns forward's kernel, and a double backward recomputes the gradient with
# differentiable ops (``_gradients``). No range check: ``gather`` raises on a target outside
# [0, C); an ignore_index that could be a class is looked for with one ``aminmax``. A target
# that is ignored or out of range makes the functional fall back to the general path, which
# says which.
#
# _CEShort is in the old style (forward takes ctx), so that forward hands the gradient it made
# to ctx directly: the functional never applies it under a functorch transform or
# torch.compile (where _CrossEntropy runs).


class _Plan:
    __slots__ = ("minus_r", "n", "reduction", "scan", "setup", "w")

    def __init__(self, n: int, c: int, dtype: torch.dtype, reduction: int, ignore_index: int):
        r = 1.0 / n if reduction == MEAN else 1.0
        # s * n = s / r (None: r = 1, nothing to scale); a tensor: a Python number would be
        # wrapped into one on every call
        self.n = torch.tensor(float(n), dtype=dtype) if reduction == MEAN else None
        self.reduction = reduction
        self.w = torch.full((n,), r, dtype=dtype)
        self.minus_r = torch.full((n, 1), -r, dtype=dtype)
        self.scan = 0 <= ignore_index < c  # a target could be ignore_index: look first
        self.setup = _Setup(reduction, 0.0, -100, False, False, True, dtype)  # (_gradients')


_PLANS: dict[tuple, _Plan] = {}


def _plan(input: Tensor, target: Tensor, reduction: str, ignore_index: int) -> _Plan | None:
    """The plan of a call whose plain arguments qualify (see ``cross_entropy``), or None."""
    shape = input.shape
    if not (
        len(shape) == 2
        and target.dim() == 1
        and target.dtype is _INT64
        and (input.dtype is _FLOAT32 or input.dtype is _FLOAT64)
        and shape[0] == target.shape[0]
        and shape[0] > 0
    ):
        return None
    if len(_PLANS) >= 32:  # (a training loop has one or two signatures)
        _PLANS.clear()
    red = MEAN if reduction == "mean" else SUM
    plan = _Plan(shape[0], shape[1], input.dtype, red, ignore_index)
    _PLANS[(shape, target.shape, input.dtype, target.dtype, reduction, ignore_index)] = plan
    return plan


def _short(x: Tensor, target: Tensor, plan: _Plan, need_grad: bool) -> tuple[Tensor, Any]:
    """(loss, gradient before the upstream factor or None), see above."""
    t1 = target.view(-1, 1)
    m = x.amax(1, keepdim=True)
    D = x - m
    Dt = D.gather(1, t1)
    D.exp_()
    s = D.sum(1, keepdim=True)
    loss = s.log().sub_(Dt).view(-1) @ plan.w
    if not need_grad:
        return loss, None
    D.div_(s if plan.n is None else s.mul_(plan.n))
    return loss, D.scatter_add_(1, t1, plan.minus_r)


def _short_derivative(input: Tensor, target: Tensor, plan: _Plan, grad: Tensor) -> Tensor | None:
    """Double backward: the gradient with differentiable ops."""
    return _gradients(input, target, None, None, plan.setup, grad, (True, False, False))[0]


# The short path's Function (see above), ``apply(input, target, plan)``.
_CEShort = _function.short_function(
    "_CEShort", lambda x, t, plan: _short(x, t, plan, True), _short_derivative
)


_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
_grad_enabled = torch.is_grad_enabled
_transforms_active = _function.transforms_active
_is_compiling = _function._is_compiling
_SHORT_APPLY = _function.fast_apply(_CEShort)
_FAST_APPLY = _function.apply
_FLOAT32, _FLOAT64, _INT64 = torch.float32, torch.float64, torch.int64


def _gradients(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor | None,
    s: _Setup,
    grad: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients with differentiable ops (double backward, transforms, compile). With grad
    mode on the log-sum-exp is recomputed from the logits, so that it is differentiated too."""
    p = _prepare(input, target, weight, s)
    arr, x3, w = p.arr, p.x3, p.w
    C = arr.C
    eps = s.eps
    if lse is None or torch.is_grad_enabled():
        m = _shift(x3.detach())  # a constant shift: lse's derivative is the softmax
        D = x3 - m
        logs = D.exp().sum(1, keepdim=True).log()
    else:
        D = x3 - lse[:, :1]
        logs = lse[:, 1:]
    neg_logp = -_log_probs(p, s, D, logs, input.dtype)
    g = _cast(grad, x3.dtype)
    g3 = g.reshape(arr.R, 1, arr.S) if s.reduction == NONE else g
    w3 = None if w is None else w.view(1, C, 1)
    gi = gt = gw = None
    if s.prob:
        r = 1.0 / (arr.R * arr.S) if s.reduction == MEAN and arr.R * arr.S else 1.0
        y = p.y3
        q = y * (1.0 - eps) + eps / C if eps else y
        gr = g3 * r
        if needs[0]:
            wq = q if w3 is None else q * w3
            gi = ((-neg_logp).exp() * wq.sum(1, keepdim=True) - wq) * gr
            gi = _cast(_restore(arr, gi), input.dtype)
        if needs[1]:
            gy = neg_logp * gr * (1.0 - eps)
            if w3 is not None:
                gy = gy * w3
            gt = _cast(_restore(arr, gy), target.dtype)
        if needs[2] and weight is not None:
            gw = (q * neg_logp * gr).sum((0, 2))
            gw = _cast(gw.reshape(weight.shape), weight.dtype)
        return gi, gt, gw
    if needs[0]:
        a, b, e, _ = _scales(p, s, True)
        prob = (D - logs).exp()
        if not isinstance(b, Tensor):
            b = prob.new_full(p.t3.shape, b)
        gi = prob * a - torch.zeros_like(prob).scatter(1, p.t3, b.expand(p.t3.shape))
        if e is not None:
            gi = gi - (e if w3 is None else e * w3)
        gi = _cast(_restore(arr, gi * g3), input.dtype)
    return gi, None, None


def _restore(arr: _cls.Arrangement, t3: Tensor) -> Tensor:
    return arr.restore(t3)


class _CrossEntropy(torch.autograd.Function):
    """The loss and its hand-written gradient (module docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor, target: Tensor, weight: Tensor | None, setup: _Setup
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        return _forward(input, target, weight, setup, setup.precompute)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        input, target, weight, setup = inputs
        _, grad, lse = output
        ctx.set_materialize_grads(False)
        if grad is not None:
            ctx.mark_non_differentiable(grad, lse)
        else:
            ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(input, target, weight, lse)
        ctx.setup = setup
        _function.stash_gradient(ctx, grad)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, _g: Any, _l: Any) -> tuple:
        if grad_loss is None:
            return None, None, None, None
        s: _Setup = ctx.setup
        G = _function.take_gradient(ctx)
        needs = ctx.needs_input_grad[:3]
        input, target, weight, lse = ctx.saved_tensors
        _cls.check_backward(input, target, s.prob)
        if G is not None and not needs[1] and not needs[2]:
            return _times_upstream(G, grad_loss, s), None, None, None
        if G is None and s.precompute and needs[0] and not torch.is_grad_enabled():
            # A second backward through a retained graph: forward's computation again, so the
            # same bits as the first backward.
            G = _forward(input, target, weight, s, True)[1]
        if G is not None:
            gi = _times_upstream(G, grad_loss, s) if needs[0] else None
            _, gt, gw = _gradients(
                input, target, weight, lse, s, grad_loss, (False, needs[1], needs[2])
            )
            return gi, gt, gw, None
        gi, gt, gw = _gradients(input, target, weight, lse, s, grad_loss, needs)
        return gi, gt, gw, None


def _times_upstream(G: Tensor, grad: Tensor, s: _Setup) -> Tensor:
    if s.reduction != NONE:
        return _function.times_upstream(G, grad)
    # 'none': the upstream gradient has the loss's shape; broadcast it over the classes.
    g = grad.unsqueeze(1) if G.dim() > 1 else grad
    g = _cast(g, G.dtype)
    if _function._is_compiling() or _function.batched(grad):
        return G * g
    return G.mul_(g)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """The cross entropy between logits ``input`` and class indices or probabilities
    ``target``; see :class:`torch.nn.CrossEntropyLoss`.

    >>> import torch, mylosses
    >>> mylosses.functional.cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    tensor(0.6931)
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            cross_entropy,
            (input, target, weight),
            input,
            target,
            weight=weight,
            size_average=size_average,
            ignore_index=ignore_index,
            reduce=reduce,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    # The short path (see _CEShort): the plan of a known signature stands for most checks.
    if (
        weight is None
        and type(input) is Tensor
        and type(target) is Tensor
        and type(ignore_index) is int
        and type(label_smoothing) is float
        and not label_smoothing > 0.0  # (0, or negative or nan: no smoothing)
        and size_average is None
        and reduce is None
        and (reduction == "mean" or reduction == "sum")
        and input.is_cpu  # (gather's range check raises there; a GPU would assert)
        and input.is_contiguous()
        and not _transforms_active()
        and not _is_compiling()
    ):
        plan = _PLANS.get(
            (input.shape, target.shape, input.dtype, target.dtype, reduction, ignore_index)
        ) or _plan(input, target, reduction, ignore_index)
        if plan is not None:
            short = True
            if plan.scan:  # an ignore_index that could be a class: is it there?
                lo, hi = torch.aminmax(target)
                short = not int(lo) <= ignore_index <= int(hi)
            if short:
                try:
                    if not (input.requires_grad and _grad_enabled()):
                        return _short(input, target, plan, False)[0]
                    if _function.apply is _FAST_APPLY:
                        return _SHORT_APPLY(input, target, plan)
                    return _function.apply(_CEShort, input, target, plan)
                except RuntimeError:
                    pass  # an out-of-range target: the general path says which
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    red = _reduction.get_enum(reduction)
    _check_types(input, target, weight, ignore_index, label_smoothing)
    ignore_index = int(ignore_index)
    eps = _validation.float_argument("cross_entropy_loss", "label_smoothing", 6, label_smoothing)
    prob = input.shape == target.shape
    if prob:
        _check_probabilities(input, target, weight, ignore_index, eps)
        any_ignored: bool | None = False
        dtype = torch.promote_types(input.dtype, target.dtype)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
    else:
        _check_classes(input, target, weight, eps)
        n_classes = input.shape[1 if input.dim() > 1 else 0]
        any_ignored = _cls.check_range(target, n_classes, ignore_index)
        _check_smoothed(input, target, weight, eps, red)
        dtype = input.dtype
    if not eps > 0.0:
        eps = 0.0  # negative or nan: torch applies no smoothing
    differentiable = _function.needs_autograd(input, target if prob else None, weight)
    # The fused blocked kernel runs in eager mode; transforms and compile get the plain one.
    mixed = prob and (
        target.dtype != input.dtype or (weight is not None and weight.dtype != input.dtype)
    )
    fused = _function.may_precompute() and not mixed
    setup = _Setup(red, eps, ignore_index, prob, any_ignored, fused, dtype)
    if not differentiable:
        return _forward(input, target, weight, setup, False)[0]
    # With autograd, the fused kernel also writes the input's gradient: only when it is wanted.
    setup.precompute = fused and input.requires_grad
    return _function.apply(_CrossEntropy, input, target, weight, setup)[0]


def _check_types(
    input: Any, target: Any, weight: Any, ignore_index: Any, label_smoothing: Any
) -> None:
    """torch's argument parser: tensors where tensors belong, an int ``ignore_index``."""
    for name, pos, value in (("input", 1, input), ("target", 2, target)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"cross_entropy_loss(): argument '{name}' (position {pos}) must be Tensor, "
                f"not {type(value).__name__}"
            )
    if weight is not None and not isinstance(weight, Tensor):
        raise TypeError(
            "cross_entropy_loss(): argument 'weight' (position 3) must be Tensor, "
            f"not {type(weight).__name__}"
        )
    _check_ignore_index("cross_entropy_loss", ignore_index)


def _check_ignore_index(fn: str, ignore_index: Any) -> None:
    if type(ignore_index) is int:
        return
    if isinstance(ignore_index, Tensor) and ignore_index.numel() == 1:
        if not ignore_index.dtype.is_floating_point:
            return
    elif isinstance(ignore_index, int) and not isinstance(ignore_index, bool):
        return
    raise TypeError(
        f"{fn}(): argument 'ignore_index' (position 5) must be int, "
        f"not {type(ignore_index).__name__}"
    )


def _check_smoothing(eps: float) -> None:
    if eps > 0.0 and eps > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {eps:g}")


def _softmax_dtype(input: Tensor) -> None:
    """log_softmax's dtype check (NotImplementedError for integer logits)."""
    if not input.dtype.is_floating_point:
        kernel = (
            "log_softmax_lastdim_kernel_impl" if input.dim() <= 2 else "log_softmax_kernel_impl"
        )
        raise NotImplementedError(
            f"\"{kernel}\" not implemented for '{_validation.scalar_type_name(input.dtype)}'"
        )


def _check_probabilities(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, eps: float
) -> None:
    if not target.dtype.is_floating_point:
        raise RuntimeError(
            "Expected floating point type for target with class probabilities, got "
            f"{_validation.scalar_type_name(target.dtype)}"
        )
    if int(ignore_index) >= 0:
        raise RuntimeError("ignore_index is not supported for floating point target")
    if input.dim() == 0:
        raise IndexError("Dimension specified as 1 but tensor has no dimensions")
    C = input.shape[1 if input.dim() > 1 else 0]
    if weight is not None and (weight.dim() != 1 or weight.numel() != C):
        raise RuntimeError(
            f"cross_entropy: weight tensor should be defined either for all {C} classes or no "
            f"classes but got weight tensor of shape: {_cls._sizes(weight.shape)}"
        )
    _softmax_dtype(input)
    _check_smoothing(eps)


def _check_classes(input: Tensor, target: Tensor, weight: Tensor | None, eps: float) -> None:
    _check_smoothing(eps)
    if input.dim() == 0:
        raise IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)")
    _softmax_dtype(input)
    _cls.check_class_target(input, target, weight)


def _check_smoothed(
    input: Tensor, target: Tensor, weight: Tensor | None, eps: float, reduction: int
) -> None:
    """The errors of torch's label-smoothing code, after its nll_loss has run."""
    if eps > 0.0:
        if input.dim() == 1 and target.dim() == 1:
            raise RuntimeError("output with shape [] doesn't match the broadcast shape [1]")
        if weight is not None and weight.shape[0] != weight.numel():
            shape = [1] * input.dim()
            shape[1 if input.dim() > 1 else 0] = weight.shape[0]
            raise RuntimeError(
                f"shape '{_cls._sizes(shape)}' is invalid for input of size {weight.numel()}"
            )
        if (
            weight is not None
            and target.dtype != torch.int64
            and reduction == MEAN
            and target.numel()
        ):
            # (torch's weighted mean gathers the weights with the target as the index)
            raise RuntimeError("gather(): Expected dtype int32/int64 for index")


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    __doc__ = torch.nn.CrossEntropyLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            None,
            self.ignore_index,
            None,
            self.reduction,
            self.label_smoothing,
        )
