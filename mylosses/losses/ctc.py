r"""Connectionist temporal classification: ``CTCLoss`` / ``ctc_loss``.

Inputs: log-probabilities :math:`x_{t,n,c}` (time ``T``, batch ``N``, classes ``C``), target
label sequences :math:`l^{(n)}` of length :math:`S_n`, input lengths :math:`T_n`. The targets
come padded, ``(N, S)``, or concatenated, ``(sum S_n,)``; an unbatched call has ``(T, C)``.

Forward. Extend each target with blanks, :math:`l' = (b, l_1, b, l_2, \dots, l_{S}, b)`, of
length :math:`L = 2S + 1`. An alignment is a path through the states of :math:`l'` that starts
at :math:`s \in \{0, 1\}`, ends at :math:`s \in \{L-1, L-2\}` and, at each step, stays, moves
one state on, or skips a blank between two *different* labels (between repeated labels the
blank is compulsory: that is how "aa" differs from "a"). The forward variable

.. math::

    \alpha_t(s) = x_{t, l'_s} + \log\!\big(e^{\alpha_{t-1}(s)} + e^{\alpha_{t-1}(s-1)}
        + [\,s \text{ odd},\ l'_s \ne l'_{s-2}\,]\, e^{\alpha_{t-1}(s-2)}\big)

is computed in log space (``logaddexp``), vectorised over the batch and the states with a
Python loop over time, from a virtual :math:`\alpha_{-1} = (0, -\infty, \dots)`. The loss is
:math:`\ell_n = -\log p(l|x) = -\log(e^{\alpha_{T_n-1}(L-1)} + e^{\alpha_{T_n-1}(L-2)})`:
infinite when no alignment exists (a target longer than the input allows), 0 for an empty
target and an empty input (torch returns -0.0 there, and so do we). ``zero_infinity`` turns
an infinite loss (and its gradient) into 0. Reductions: 'none' gives :math:`\ell`, 'sum'
:math:`\sum_n \ell_n`, and 'mean' :math:`\frac1N \sum_n \ell_n / \max(S_n, 1)` (each loss is
divided by its target length first, as torch does).

Backward. The backward variable :math:`\beta_t(s)` (same recursion run backwards from a virtual
:math:`\beta_{T_n}` that is 0 at :math:`s = L-1` only; it includes :math:`x_{t, l'_s}`, as
torch's does) gives the occupancy :math:`\gamma_t(s) = \alpha_t(s) + \beta_t(s) - x_{t,l'_s}`,
the log-probability of all alignments through state :math:`s` at time :math:`t`. Since
:math:`p = \sum_s e^{\gamma_t(s)}` for every t and :math:`\partial\gamma_t(s)/\partial x_{t,c}
= [l'_s = c]`, the true derivative is

.. math::

    \frac{\partial \ell_n}{\partial x_{t,n,c}} = -\sum_{s: l'_s = c} e^{\gamma_t(s) + \ell_n}.

**torch's surprise**: ``torch.ctc_loss`` does not return this. Its gradient is

.. math::

    g_{t,n,c} = e^{x_{t,n,c}} - \sum_{s: l'_s = c} e^{\gamma_t(s) + \ell_n}
    \quad (t < T_n; \text{ 0 for } t \ge T_n),

the derivative with respect to the *logits* :math:`z` when :math:`x = \log\mathrm{softmax}(z)`
(the softmax Jacobian turns the true gradient :math:`-\gamma` into :math:`\mathrm{softmax}(z)
- \gamma`, using :math:`\sum_c \sum_{s: l'_s=c} e^{\gamma+\ell} = 1`). When ``log_probs`` come
from a ``log_softmax`` (as they must for CTC to mean anything), backpropagating :math:`g`
through that log_softmax gives the right logit gradient anyway: the extra :math:`e^{x}` term
sums to one per row and the softmax backward removes it. We return torch's :math:`g`, so that
mylosses is a drop-in replacement; it is *not* the derivative of the loss with respect to
unnormalised ``log_probs``, and a ``gradcheck`` must go through a ``log_softmax`` (ours does, in
tests/test_ctc.py). Torch computes the sum per class in log space, :math:`\exp(\log\sum_s
e^{\alpha+\beta} + \ell - x)`; its NaN patterns are ours too (an impossible target gives NaN
gradients for every :math:`t < T_n`, a :math:`-\infty` log-probability gives NaN). We sum in
linear space, one ``exp`` and one scatter per step: :math:`e^{\alpha + \beta - x - m}` per
class, where :math:`m` is the step's largest :math:`\alpha + \beta - x` (the largest
posterior). The shift must be that one, not the largest :math:`\alpha + \beta`: a label far
less likely than the blank (x = -120 against 0) can carry every alignment, and shifted by the
blank's :math:`\alpha + \beta` its whole occupancy would underflow to 0 (a gradient of 0 where
torch's is -1/T).

How it is computed (mylosses' choices, none of them torch's):

- **Layout.** The recursions keep each step state-major, ``(L + 2, N)``: the three states a
  step reads (s, s - 1, s - 2 for alpha) are then contiguous slices of one flat row, shifted
  by N, with two padding states of :math:`-\infty`; a skip that is not allowed is masked
  with ``where`` (a NaN there must not reach the sum, and :math:`-\infty + \mathrm{NaN}` is
  NaN).
- **Accuracy.** Every 16 steps each sample's row is shifted back to a maximum of 0 and the
  shifts are summed in float64: float32 log-probabilities of long sequences drift to -500 and
  beyond, where floats are 6e-5 apart, and the gradient is the exponential of a cancelling sum
  of such values.
- **Small inputs: one loop for both.** :math:`\beta` is :math:`\alpha` of the reversed problem
  (each sample's steps reversed within :math:`T_n`, its extended labels within :math:`L_n`;
  torch's start at the two end states becomes alpha's start at states 0 and 1). Stacking the
  reversed samples beside the originals runs both recursions in one Python loop over time:
  at small sizes each step costs the same fixed few microseconds whatever its width. For the
  same reason small inputs are computed in float64 whatever their dtype.
- **Large inputs: blocks of beta.** Keeping every beta would double the memory, so beta runs
  backwards a block of steps at a time, and each block becomes gradient at once.
- **torch.func.** A vmap may batch the targets and lengths too, which cannot be read on the
  host; under transforms each tensor is an input of a Function whose vmap rule folds the
  vmapped dimension into CTC's own batch (B calls on N samples are one call on B * N).

One more of torch's quirks, at :math:`t = T_n - 1`: there its gradient takes the two end
states only, *assigned* rather than summed (other states' :math:`\alpha + \beta` would be
:math:`-\infty`, or NaN where a NaN log-probability has reached them), and when the last label
is the blank itself the second assignment *overwrites* the first (its code assumes the two end
states differ). We keep the end states only, and drop the final state's term in that case.

Double backward: torch has none ("derivative for aten::_ctc_loss_backward is not implemented").
Ours recomputes :math:`g` with differentiable ops (a :math:`-\infty`-safe log-add-exp) when
backward builds a graph, so second derivatives exist; they are right through a log_softmax.

Other surprises of torch: targets may be of any dtype (floats are truncated, as torch's cast
to long does); targets equal to ``blank`` are accepted (treated as ordinary labels); targets
outside ``[0, C)`` are not checked by torch (it reads out of bounds) and make our gather
raise; lengths must all be tensors or all be sequences of ints; only float32 and float64 are
implemented on the CPU.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from mylosses import _function
from mylosses._reduction import MEAN, NONE, SUM, get_enum
from mylosses._validation import scalar_type_name

__all__ = ["CTCLoss", "ctc_loss"]

_INF = float("inf")
_WHERE = " (while checking arguments for ctc_loss_allocate_outputs)"


class _Plan:
    """Everything about a call that is not log_probs: built once on the host (the lengths are
    host values, as in torch, which copies them to the CPU)."""

    def __init__(
        self,
        ext: Tensor,
        input_lengths: list[int],
        target_lengths: list[int],
        reduction: int,
        zero_infinity: bool,
        recursion_only: bool = False,
    ) -> None:
        n, width = ext.shape
        device = ext.device
        self.ext = ext  # (N, L): the extended label sequences (blank-padded)
        self.input_lengths = input_lengths
        self.target_lengths = target_lengths
        self.reduction = reduction
        self.zero_infinity = zero_infinity
        self.tmax = max(input_lengths, default=0)
        # Skips: from s-2 to s when s is odd, s >= 3 and l'_s != l'_{s-2}; 0 or -inf, to add.
        allowed = torch.zeros((n, width), dtype=torch.bool, device=device)
        if width > 3:
            allowed[:, 3::2] = ext[:, 3::2] != ext[:, 1:-2:2]
        self.allowed = allowed
        self.il = torch.tensor(input_lengths, dtype=torch.long, device=device)
        self.tl = torch.tensor(target_lengths, dtype=torch.long, device=device)
        self.rows = torch.arange(n, device=device)
        self.posinf = True  # whether log_probs hold a +inf (set by _plan; see _read)
        self.ext_t = ext.t().contiguous()  # state-major (L, N), for the recursions
        self.starts: dict[int, Tensor] = {}
        self.drops: dict[int, tuple[Tensor, Tensor]] = {}
        if recursion_only:  # the alpha recursion needs no more
            return
        # torch's end states (where beta starts) and the states past each L_n (never touched
        # by torch, so a NaN log-probability there must not reach the gradient).
        states = torch.arange(width, device=device)[None, :]
        final = (2 * self.tl)[:, None]
        self.ends = (states == final) | ((states == final - 1) & (final > 0))
        self.beyond = states > final
        self.ends_t = self.ends.t()
        self.inner_t = ~self.ends_t  # (the states that are not end states)
        self.beyond_t = self.beyond.t()
        # Samples whose backward recursion starts after time step t (T_n = t + 1).
        starts: dict[int, list[int]] = {}
        for i, t in enumerate(input_lengths):
            if t > 0:
                starts.setdefault(t, []).append(i)
        for t, v in starts.items():
            self.starts[t] = torch.tensor(v, dtype=torch.long, device=device)
        # torch's surprise: at t = T_n - 1 its occupancy of the blank is that of the final blank
        # state, overwritten (not added to) by the state before it when the last label is the
        # blank itself. We drop the final state's term there: {T_n: (rows, final columns)}.
        last = ext.gather(1, (2 * self.tl - 1).clamp_min(0)[:, None]).squeeze(1)
        blank_last = ((last == ext[:, 0]) & (self.tl > 0)).tolist()
        drops: dict[int, list[int]] = {}
        for i, t in enumerate(input_lengths):
            if t > 0 and blank_last[i]:
                drops.setdefault(t, []).append(i)
        for t, v in drops.items():
            rows = torch.tensor(v, dtype=torch.long, device=device)
            self.drops[t] = (rows, 2 * self.tl[rows])

    def skips(self) -> tuple[Tensor, Tensor]:
        """Where a skip is allowed, (N, L): for alpha indexed by the target state, for beta by
        the source state (the skip s -> s + 2). Masks, not 0/-inf addends: torch never reads a
        state it may not skip from, so a NaN there must not reach the sum (-inf + NaN is NaN)."""
        beta = torch.zeros_like(self.allowed)
        beta[:, :-2] = self.allowed[:, 2:]
        return self.allowed, beta

    def skips_flat(self) -> tuple[Tensor, Tensor]:
        """:meth:`skips` in the recursions' flat state-major layout, (L * N,)."""
        alpha, beta = self.skips()
        return alpha.t().reshape(-1), beta.t().reshape(-1)


# Per-state values are processed in blocks of time steps of at most this many elements.
_BLOCK = 1 << 18
# Steps between renormalisations of the recursions (see _renormalise).
_RENORM = 16

# Layout of the recursions: state-major, ``(L + 2, N)`` per time step. A step reads the
# previous step at states s, s - 1 and s - 2 (alpha; s + 1 and s + 2 for beta); with the batch
# as the fastest dimension those three reads are contiguous 1-D slices of one flat row, shifted
# by N, and two padding states of -inf stand in for the missing neighbours. Contiguous slices
# make each small op about twice as fast as the (N, L) layout's strided ones.


def _block_steps(plan: _Plan) -> int:
    n, width = plan.ext.shape
    return max(1, min(plan.tmax, _BLOCK // max(1, n * width)))


def _emissions(lp: Tensor, plan: _Plan, t0: int, t1: int) -> Tensor:
    """``E[t - t0, s, n] = x_{t, n, l'_s}`` for ``t0 <= t < t1``: one gather for the block."""
    width, n = plan.ext_t.shape
    return lp[t0:t1].transpose(1, 2).gather(1, plan.ext_t.expand(t1 - t0, width, n))


def _renormalise(row: Tensor, n: int, events: list[tuple[int, Tensor]], index: int) -> None:
    """Subtract each sample's largest finite value from its (flat, state-major) row, in place,
    and record it.

    A log-space recursion in float32 loses precision as its values drift from 0 (the spacing of
    floats near -500 is 6e-5): the losses and gradients of long sequences would be ~1e-4 off.
    Every few steps the rows are shifted back to a maximum of 0 and the shifts are summed in
    float64 (:func:`_offsets`), so the stored values keep their precision. Rows with no finite
    value (a sample not started yet, or with no alignment so far) are left alone."""
    states = row.view(-1, n)
    finite = torch.nan_to_num(states, nan=-_INF, posinf=-_INF, neginf=-_INF)
    shift = finite.amax(0).nan_to_num_(neginf=0.0)
    states.sub_(shift)
    events.append((index, shift))


def _offsets(events: list[tuple[int, Tensor]], rows: int, n: int, reverse: bool) -> Tensor:
    """(rows, N) float64: the total shift of each stored row (shifts carry forward in time for
    alpha, backward for beta)."""
    off = torch.zeros((rows, n), dtype=torch.float64, device=events[0][1].device)
    for index, shift in events:
        off[index] += shift
    return off.flip(0).cumsum(0).flip(0) if reverse else off.cumsum(0)


def _read(row: Tensor, n: int, width: int, offsets: tuple[int, ...]) -> tuple[Tensor, ...]:
    """A flat row's three sources as a step reads them, for inputs with a +inf log-probability:
    torch's log-sum-exp subtracts the largest term, so a +inf it reads becomes NaN (inf - inf),
    where ``logaddexp`` would keep it +inf."""
    src = row.masked_fill(row == _INF, float("nan"))
    return tuple(src[k * n : (k + width) * n] for k in offsets)


def _alphas(lp: Tensor, plan: _Plan) -> tuple[Tensor, Tensor, Tensor]:
    """All forward variables, ``A[t + 1, s + 2, n] = alpha_t(s) - off[t + 1, n]`` (two -inf
    states in front and the virtual alpha_{-1} in row 0), the float64 offsets ``off`` (T+1,
    N), and the per-sample losses in float64."""
    n, width = plan.ext.shape
    skip = plan.skips_flat()[0]
    ninf = torch.full((), -_INF, dtype=lp.dtype, device=lp.device)
    posinf = plan.posinf
    renorm = lp.dtype != torch.float64  # (float64 keeps its precision far enough from 0)
    a = torch.empty((plan.tmax + 1, width + 2, n), dtype=lp.dtype, device=lp.device)
    a[:, :2] = -_INF
    a[:2, 2:] = -_INF
    a[0, 2] = 0.0
    events: list[tuple[int, Tensor]] = []
    if plan.tmax:
        # Each row's three sources (stay, advance, skip) as views made once, not per step.
        flat = a.view(plan.tmax + 1, -1)
        cur, one, two = (flat[:, k * n : (k + width) * n].unbind(0) for k in (2, 1, 0))
        tmp = torch.empty(width * n, dtype=lp.dtype, device=lp.device)
        blk = _block_steps(plan)
        for t0 in range(0, plan.tmax, blk):
            t1 = min(t0 + blk, plan.tmax)
            emit = _emissions(lp, plan, t0, t1).view(t1 - t0, -1).unbind(0)
            for t in range(t0, t1):
                if t == 0:  # torch: alpha_0 at s = 0, 1 only
                    cur[1][: 2 * n] = emit[0][: 2 * n]
                    continue
                stay, advance, jump = cur[t], one[t], two[t]
                if posinf:
                    stay, advance, jump = _read(flat[t], n, width, (2, 1, 0))
                torch.logaddexp(stay, advance, out=cur[t + 1])
                torch.where(skip, jump, ninf, out=tmp)
                torch.logaddexp(cur[t + 1], tmp, out=cur[t + 1])
                cur[t + 1].add_(emit[t - t0])
                if renorm and t % _RENORM == 0:
                    _renormalise(cur[t + 1], n, events, t + 1)
    if events:
        off = _offsets(events, plan.tmax + 1, n, reverse=False)
    else:
        off = torch.zeros((plan.tmax + 1, n), dtype=torch.float64, device=lp.device)
    ends = 2 * plan.tl + 2  # state L_n - 1, padding included
    last = a[plan.il, :, plan.rows]  # (N, L + 2)
    nll = torch.logaddexp(last.gather(1, ends[:, None]), last.gather(1, ends[:, None] - 1))
    nll = nll.squeeze(1).to(torch.float64).add_(off[plan.il, plan.rows]).neg_()
    # +inf log-probabilities: torch's log-sum-exp of the two end states gives NaN (inf - inf)
    # where logaddexp gives inf; an empty target's loss is its one end state's, -inf
    return a, off, nll.masked_fill_((nll == -_INF) & (plan.tl > 0), float("nan"))


def _exp_(x: Tensor) -> Tensor:
    """``exp`` in place, giving 0 below the smallest normal float: the CPU's vectorised exp
    takes a slow path, 50 to 200 times slower, for results that underflow."""
    floor = -87.0 if x.dtype == torch.float32 else -708.0  # log(finfo.tiny), rounded up
    low = x < floor
    return x.clamp_min_(floor).exp_().masked_fill_(low, 0.0)


def _occupancies(
    grad: Tensor,
    shift: Tensor,
    plan: _Plan,
    t0: int,
    alpha: Tensor,
    beta: Tensor,
    emit: Tensor,
    out: Tensor,
) -> None:
    """The occupancies of steps ``t0 .. t0 + len(emit)`` into ``grad`` (scattered per class, each
    (t, n) shifted by its maximum, kept in ``shift``): ``g = alpha + beta - x`` is the
    log-probability of the alignments through a state, times p. Shifting by the maximum of
    ``g`` rather than of ``alpha + beta`` matters: a state whose log-probability is far below
    another's at the same step can still carry all the alignments. (alpha, beta, emit:
    (steps, L, N) state-major; out: scratch of that shape.)"""
    steps, width, n = emit.shape
    g = torch.add(alpha, beta, out=out).sub_(emit)
    # states past L_n, and at t = T_n - 1 all but the two end states (torch counts only those)
    if any(t0 < t <= t0 + steps for t in plan.starts):
        last = torch.arange(t0, t0 + steps, device=g.device)[:, None] == plan.il[None, :] - 1
        g.masked_fill_((last[:, None, :] & plan.inner_t) | plan.beyond_t, -_INF)
    else:
        g.masked_fill_(plan.beyond_t, -_INF)
    for t, drop in plan.drops.items():
        if t0 < t <= t0 + steps:
            g[t - 1 - t0, drop[1], drop[0]] = -_INF
    # a NaN occupancy stays in its own class, as in torch's per-class log-add
    lowest = torch.finfo(g.dtype).min
    m = torch.nan_to_num(g, nan=-_INF).amax(1, keepdim=True).clamp_min_(lowest)
    shift[t0 : t0 + steps] = m
    index = plan.ext_t.expand(steps, width, n)
    grad[t0 : t0 + steps].transpose(1, 2).scatter_add_(1, index, _exp_(g.sub_(m)))


def _finish(
    grad: Tensor, lp: Tensor, plan: _Plan, shift: Tensor, off: Tensor, nll: Tensor
) -> Tensor:
    """Occupancies to torch's gradient: gamma = occupancy * exp(shift + offsets + loss) (the
    offsets' float64 sum keeps the large, cancelling terms exact: alpha ~ -A, beta ~ -B, loss ~
    A + B), then exp(lp) - gamma; NaN where lp is -inf (torch's exp(-inf - -inf)), 0 for
    t >= T_n and, with zero_infinity, for infinite losses."""
    loss = nll
    bad = None
    if plan.zero_infinity:
        bad = nll == _INF
        loss = nll.masked_fill(bad, 0.0)
    if plan.tmax:
        total = off.add_(shift.squeeze(1)).add_(loss[None, :])
        grad[: plan.tmax].mul_(total.exp_().to(lp.dtype)[:, :, None])
    grad = torch.exp(lp).sub_(grad).masked_fill_(lp == -_INF, float("nan"))
    steps = torch.arange(lp.shape[0], device=lp.device)[:, None]
    invalid = steps >= plan.il[None, :]
    if bad is not None:
        invalid = invalid | bad[None, :]
    return grad.masked_fill_(invalid[:, :, None], 0.0)


def _gradient(lp: Tensor, plan: _Plan, a: Tensor, a_off: Tensor, nll: Tensor) -> Tensor:
    """torch's gradient of the per-sample losses (see the module docstring), unscaled: the beta
    recursion backwards in time, a block of steps at a time, each block's occupancies turned
    into gradient at once (memory: the alphas, one gradient and a block)."""
    t_all, n, c = lp.shape
    width = plan.ext.shape[1]
    tmax = plan.tmax
    skip = plan.skips_flat()[1]
    ninf = torch.full((), -_INF, dtype=lp.dtype, device=lp.device)
    posinf = plan.posinf
    renorm = lp.dtype != torch.float64  # (float64 keeps its precision far enough from 0)
    grad = torch.zeros((t_all, n, c), dtype=lp.dtype, device=lp.device)
    shift = torch.empty((tmax, 1, n), dtype=lp.dtype, device=lp.device)
    blk = _block_steps(plan) if tmax else 1
    b = torch.full((blk + 1, width + 2, n), -_INF, dtype=lp.dtype, device=lp.device)
    flat = b.view(blk + 1, -1)
    cur, one, two = (flat[:, k * n : (k + width) * n].unbind(0) for k in (0, 1, 2))
    tmp = torch.empty(width * n, dtype=lp.dtype, device=lp.device)
    scratch = torch.empty((blk, width, n), dtype=lp.dtype, device=lp.device)
    events: list[tuple[int, Tensor]] = []
    for t0 in reversed(range(0, tmax, blk)):
        t1 = min(t0 + blk, tmax)
        tb = t1 - t0
        if t1 < tmax:  # beta_{t1}, computed in the previous block, leads this one
            b[tb].copy_(b[0])
        emit = _emissions(lp, plan, t0, t1)
        rows = emit.view(tb, -1).unbind(0)
        for k in reversed(range(tb)):
            t = t0 + k
            stay, advance, jump = cur[k + 1], one[k + 1], two[k + 1]
            if posinf:
                stay, advance, jump = _read(flat[k + 1], n, width, (0, 1, 2))
            torch.logaddexp(stay, advance, out=cur[k])
            torch.where(skip, jump, ninf, out=tmp)
            torch.logaddexp(cur[k], tmp, out=cur[k])
            cur[k].add_(rows[k])
            idx = plan.starts.get(t + 1)
            if idx is not None:  # torch: beta_{T_n - 1} at the two end states only
                b[k, :width, idx] = torch.where(plan.ends_t[:, idx], emit[k][:, idx], -_INF)
            if renorm and t % _RENORM == 0:
                _renormalise(cur[k], n, events, t)
        alpha = a[t0 + 1 : t1 + 1, 2:]
        _occupancies(grad, shift, plan, t0, alpha, b[:tb, :width], emit, scratch[:tb])
    off = a_off[1:].clone()
    if events:
        off += _offsets(events, tmax, n, reverse=True)
    return _finish(grad, lp, plan, shift, off, nll)


# Below this many alpha values (T x L x N) beta comes from the stacked recursion.
_STACKED = 1 << 16


def _stacked(lp: Tensor, plan: _Plan) -> tuple[Tensor, Tensor]:
    """The losses (float64) and torch's gradient from one recursion over a doubled batch.

    Beta is alpha run backwards: reverse each sample's steps (within its own T_n) and its
    extended labels (within its own L_n), and the beta recursion becomes the alpha recursion
    of the reversed sequence, with torch's start at the two end states turned into alpha's at
    states 0 and 1. Stacking the reversed samples beside the originals runs both recursions in
    one Python loop over time, at half the cost per step of two loops; beta is then read back
    into place with one ``take``. It keeps beta for every step, so it serves small inputs,
    where the loop's fixed cost per step is all that counts."""
    t_all, n, c = lp.shape
    width = plan.ext.shape[1]
    tmax = plan.tmax
    device = lp.device
    steps = torch.arange(tmax, device=device)[:, None]
    back = (plan.il[None, :] - 1 - steps).clamp_min_(0)  # (T, N): T_n - 1 - t
    reversed_lp = lp.gather(0, back[:, :, None].expand(tmax, n, c))
    states = torch.arange(width, device=device)[None, :]
    mirror = (2 * plan.tl[:, None] - states).clamp_min_(0)  # (N, L): L_n - 1 - s
    ext_rev = torch.where(plan.beyond, plan.ext[:, :1], plan.ext.gather(1, mirror))
    both = _Plan(
        torch.cat([plan.ext, ext_rev]),
        plan.input_lengths * 2,
        plan.target_lengths * 2,
        plan.reduction,
        plan.zero_infinity,
        recursion_only=True,
    )
    both.posinf = plan.posinf
    a2, off2, nll2 = _alphas(torch.cat([lp[:tmax], reversed_lp], 1), both)
    nll = nll2[:n]
    # beta_t(s) of sample n is the reversed alpha at step T_n - 1 - t, state L_n - 1 - s
    index = ((back + 1)[:, None, :] * (width + 2) + (mirror.t() + 2)[None]) * (2 * n)
    index += n + torch.arange(n, device=device)
    beta = a2.view(-1).take(index)
    b_off = off2[:, n:].gather(0, back + 1)
    grad = torch.zeros((t_all, n, c), dtype=lp.dtype, device=device)
    shift = torch.empty((tmax, 1, n), dtype=lp.dtype, device=device)
    if tmax:
        emit = _emissions(lp, plan, 0, tmax)
        alpha = a2[1:, 2:, :n]
        _occupancies(grad, shift, plan, 0, alpha, beta, emit, torch.empty_like(emit))
    return nll, _finish(grad, lp, plan, shift, off2[1:, :n] + b_off, nll)


def _small(plan: _Plan) -> bool:
    """Whether a call is small enough for the stacked recursion (and computed in float64:
    there the cost is per op, not per element, so float32 results carry one rounding, not
    the recursion's accumulated ones)."""
    n, width = plan.ext.shape
    return (plan.tmax + 1) * (width + 2) * n <= _STACKED


def _losses(lp: Tensor, plan: _Plan) -> Tensor:
    """The per-sample losses alone, in lp's dtype, as precise as :func:`_losses_and_gradient`'s."""
    work = lp.to(torch.float64) if _small(plan) else lp
    return _alphas(work, plan)[2].to(lp.dtype)


def _losses_and_gradient(lp: Tensor, plan: _Plan) -> tuple[Tensor, Tensor]:
    """The per-sample losses (float64) and torch's unscaled gradient."""
    if _small(plan):
        nll, grad = _stacked(lp.to(torch.float64), plan)
        return nll, grad.to(lp.dtype)
    a, off, nll = _alphas(lp, plan)
    return nll, _gradient(lp, plan, a, off, nll)


def _safe_logaddexp(x: Tensor, y: Tensor) -> Tensor:
    """logaddexp with clean derivatives where both terms are -inf (torch's gives NaN there)."""
    m = torch.maximum(x, y)
    finite = m > -_INF
    m0 = torch.where(finite, m, torch.zeros_like(m))
    s = torch.exp(x - m0) + torch.exp(y - m0)
    return torch.where(
        finite, m0 + torch.log(torch.where(finite, s, torch.ones_like(s))), m.detach()
    )


def _gradient_differentiable(lp: Tensor, plan: _Plan) -> tuple[Tensor, Tensor]:
    """The same gradient as :func:`_gradient`, written with differentiable out-of-place ops (for
    double backward); the losses are recomputed from lp too, so they carry their derivative."""
    t_all, n, c = lp.shape
    width = plan.ext.shape[1]
    skip_a, skip_b = plan.skips()
    ninf2 = torch.full((n, 2), -_INF, dtype=lp.dtype, device=lp.device)
    prev = torch.full((n, width), -_INF, dtype=lp.dtype, device=lp.device)
    prev[:, 0] = 0.0
    alphas = [prev]
    for t in range(plan.tmax):
        if t == 0:
            first = lp[0].gather(1, plan.ext)
            keep = torch.zeros_like(plan.ends)
            keep[:, :2] = True
            prev = torch.where(keep, first, torch.full_like(first, -_INF))
            alphas.append(prev)
            continue
        padded = torch.cat([ninf2, prev], 1)
        cur = _safe_logaddexp(padded[:, 2:], padded[:, 1:-1])
        two = torch.where(skip_a, padded[:, :-2], -_INF)
        cur = _safe_logaddexp(cur, two) + lp[t].gather(1, plan.ext)
        alphas.append(cur)
        prev = cur
    a = torch.stack(alphas)
    last = a[plan.il, plan.rows]
    ends = (2 * plan.tl)[:, None]
    padded_last = torch.cat([ninf2[:, :1], last], 1)
    nll = -_safe_logaddexp(padded_last.gather(1, ends + 1), padded_last.gather(1, ends)).squeeze(1)
    nll = torch.where(nll == -_INF, torch.full_like(nll, float("nan")), nll)
    raw_nll = nll
    bad = None
    if plan.zero_infinity:
        bad = nll.detach() == _INF
        nll = torch.where(bad, torch.zeros_like(nll), nll)
    beta_next = torch.full((n, width), -_INF, dtype=lp.dtype, device=lp.device)
    tiny = torch.finfo(lp.dtype).min
    rows: list[Tensor] = []
    for t in reversed(range(plan.tmax)):
        padded = torch.cat([beta_next, ninf2], 1)
        lpe = lp[t].gather(1, plan.ext)
        beta = _safe_logaddexp(padded[:, :width], padded[:, 1 : width + 1])
        beta = _safe_logaddexp(beta, torch.where(skip_b, padded[:, 2:], -_INF)) + lpe
        idx = plan.starts.get(t + 1)
        if idx is not None:
            started = torch.zeros((n, 1), dtype=torch.bool, device=lp.device)
            started[idx] = True
            init = torch.where(plan.ends, lpe, torch.full_like(lpe, -_INF))
            beta = torch.where(started, init, beta)
        # -inf, not NaN, where x is -inf: a NaN in where's unused branch would reach the
        # second derivatives (0 * NaN); the NaN of torch's gradient there is put in below
        dead = plan.beyond | (lpe == -_INF)
        if idx is not None:  # torch: at t = T_n - 1 only the two end states count
            dead = dead | (started & ~plan.ends)
        g = torch.where(dead, torch.full_like(beta, -_INF), a[t + 1] + beta - lpe)
        drop = plan.drops.get(t + 1)
        if drop is not None:
            keep = torch.ones_like(g, dtype=torch.bool)
            keep[drop] = False
            g = torch.where(keep, g, torch.full_like(g, -_INF))
        m = torch.nan_to_num(g.detach(), nan=-_INF).amax(1, keepdim=True).clamp_min(tiny)
        occ = torch.zeros((n, c), dtype=lp.dtype, device=lp.device).scatter_add(
            1, plan.ext, torch.exp(g - m)
        )
        rows.append(occ * torch.exp(m + nll[:, None]))
        beta_next = beta
    rows.reverse()
    if plan.tmax < t_all:
        rows.append(torch.zeros((t_all - plan.tmax, n, c), dtype=lp.dtype, device=lp.device))
    gamma = torch.cat([r.unsqueeze(0) if r.dim() == 2 else r for r in rows], 0)
    grad = torch.exp(lp) - gamma
    grad = torch.where(lp == -_INF, torch.full_like(grad, float("nan")), grad)
    steps = torch.arange(t_all, device=lp.device)[:, None]
    invalid = steps >= plan.il[None, :]
    if bad is not None:
        invalid = invalid | bad[None, :]
    return torch.where(invalid[:, :, None], torch.zeros_like(grad), grad), raw_nll


def _reduce(nll: Tensor, plan: _Plan) -> Tensor:
    if plan.zero_infinity:
        nll = torch.where(nll == _INF, torch.zeros_like(nll), nll)
    if plan.reduction == NONE:
        return nll
    if plan.reduction == SUM:
        return nll.sum()
    return (nll / plan.tl.clamp_min(1).to(nll.dtype)).mean()


def _scale(upstream: Tensor, plan: _Plan, dtype: torch.dtype) -> Tensor:
    """The factor of each sample's gradient: (N,) or 0-d."""
    if plan.reduction == NONE:
        return upstream
    if plan.reduction == SUM:
        return upstream
    n = len(plan.target_lengths)
    return upstream / (plan.tl.clamp_min(1).to(dtype) * n)


class _CTC(torch.autograd.Function):
    """The CTC loss of (T, N, C) log_probs; the plan holds targets, lengths and options.
    (Under torch.func transforms :class:`_PerSample` serves instead.)"""

    @staticmethod
    def forward(lp: Tensor, plan: _Plan, precompute: bool) -> tuple[Tensor, Tensor | None]:
        if precompute:
            nll, grad = _losses_and_gradient(lp, plan)
        else:
            nll, grad = _losses(lp, plan), None
        return _reduce(nll.to(lp.dtype), plan), grad

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        lp, plan, _ = inputs
        ctx.plan = plan
        ctx.save_for_backward(lp)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*(o for o in output[1:] if o is not None))
        _function.stash_gradient(ctx, output[1])

    @staticmethod
    def backward(ctx: Any, upstream: Tensor | None, _stash: None) -> tuple:
        if upstream is None or not ctx.needs_input_grad[0]:
            return None, None, None
        (lp,) = ctx.saved_tensors
        plan = ctx.plan
        scale = _scale(upstream, plan, lp.dtype)
        scale = scale[None, :, None] if scale.dim() == 1 else scale
        if torch.is_grad_enabled():
            return _gradient_differentiable(lp, plan)[0] * scale, None, None
        grad = _function.take_gradient(ctx)
        if grad is None:
            grad = _losses_and_gradient(lp, plan)[1]
        if _function.batched(upstream):
            return grad * scale, None, None
        if plan.reduction == MEAN or not _function.upstream_is_one(upstream):
            grad.mul_(scale)
        return grad, None, None


# -- torch.func transforms -------------------------------------------------------------------
# Under vmap the targets and lengths may be batched too, and a batched tensor cannot be read on
# the host, which the plan needs. So under transforms every tensor is an input of a Function
# whose vmap rule folds the vmapped dimension into CTC's own batch: B calls on N samples are one
# call on B * N samples. The Functions give per-sample values (losses, unscaled gradients); the
# reduction and the upstream scaling are plain, vmappable ops around them.


class _PerSample(torch.autograd.Function):
    """Per-sample losses (N,) of (T, N, C) log_probs, zero_infinity applied."""

    @staticmethod
    def forward(
        lp: Tensor, targets: Tensor, il: Tensor, tl: Tensor, blank: int, zi: bool
    ) -> Tensor:
        plan = _plan(lp, targets, il, tl, blank, NONE, zi)
        return _reduce(_losses(lp, plan), plan)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        lp, targets, il, tl, ctx.blank, ctx.zi = inputs
        ctx.save_for_backward(lp, targets, il, tl)

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple:
        lp, targets, il, tl = ctx.saved_tensors
        grad = _PerSampleGradient.apply(lp, targets, il, tl, ctx.blank, ctx.zi)
        return grad * upstream[None, :, None], None, None, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, *args: Any) -> tuple[Tensor, int]:
        return _folded(_PerSample, info, in_dims, args, out_dim=0)


class _PerSampleGradient(torch.autograd.Function):
    """torch's gradient of each sample's loss, (T, N, C), unscaled."""

    @staticmethod
    def forward(
        lp: Tensor, targets: Tensor, il: Tensor, tl: Tensor, blank: int, zi: bool
    ) -> Tensor:
        plan = _plan(lp, targets, il, tl, blank, NONE, zi)
        return _losses_and_gradient(lp, plan)[1]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple:
        raise RuntimeError(
            "mylosses: ctc_loss has no second derivative under torch.func transforms (torch's "
            "has none at all); eager double backward works"
        )

    @staticmethod
    def vmap(info: Any, in_dims: tuple, *args: Any) -> tuple[Tensor, int]:
        return _folded(_PerSampleGradient, info, in_dims, args, out_dim=1)


def _folded(
    fn: type[torch.autograd.Function], info: Any, in_dims: tuple, args: tuple, out_dim: int
) -> tuple[Tensor, int]:
    """The vmap rule of both: B batched calls as one call on B * N samples (``out_dim``: where
    the (B, N) samples lie in the result); a loop over B where the folded call would not raise
    torch's error for the right call."""
    size = info.batch_size
    tensors = [
        x.movedim(d, 0) if d is not None else x.expand(size, *x.shape)
        for x, d in zip(args[:4], in_dims[:4], strict=True)
    ]
    lp, targets, il, tl = tensors
    concat = targets.dim() == 2
    foldable = (
        lp.dim() == 4
        and targets.dim() in (2, 3)
        and il.dim() == tl.dim() == 2
        and il.shape[1] == tl.shape[1] == lp.shape[2]
        and (not concat or bool((tl.sum(1) == targets.shape[1]).all()))
    )
    if not foldable:
        results = [fn.apply(*(x[b] for x in tensors), *args[4:]) for b in range(size)]
        return torch.stack(results), 0
    _, t, n, c = lp.shape
    out = fn.apply(
        lp.movedim(0, 1).reshape(t, size * n, c),
        targets.reshape(-1) if concat else targets.reshape(size * n, -1),
        il.reshape(-1),
        tl.reshape(-1),
        *args[4:],
    )
    if out_dim == 0:
        return out.view(size, n), 0
    return out.view(t, size, n, c), 1


def _transformed(
    lp: Tensor,
    targets: Tensor,
    input_lengths: Any,
    target_lengths: Any,
    red: int,
    blank: int,
    zi: bool,
) -> Tensor:
    """ctc_loss under torch.func transforms: per-sample Functions, the reduction as plain ops."""
    tensors = isinstance(input_lengths, Tensor), isinstance(target_lengths, Tensor)
    if not all(tensors):
        il, tl = _host_lengths(input_lengths, target_lengths)
        input_lengths = torch.tensor(il, dtype=torch.long, device=lp.device)
        target_lengths = torch.tensor(tl, dtype=torch.long, device=lp.device)
    for value, name in ((input_lengths, "input_lengths"), (target_lengths, "target_lengths")):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise RuntimeError(f"{name} must be integral")
    il, tl = input_lengths.reshape(-1), target_lengths.reshape(-1)
    nll = _PerSample.apply(lp, targets, il, tl, blank, zi)
    if red == NONE:
        return nll
    if red == SUM:
        return nll.sum()
    return (nll / tl.clamp_min(1).to(nll.dtype)).mean()


def _plan(
    lp: Tensor, targets: Tensor, il_value: Any, tl_value: Any, blank: int, red: int, zi: bool
) -> _Plan:
    """Host lengths, torch's checks in torch's order, the extended labels and the plan."""
    il, tl = _host_lengths(il_value, tl_value)
    _check(lp, targets, il, tl, blank)
    ext = _extended(targets, tl, blank, lp.shape[1], lp.device)
    plan = _Plan(ext, il, tl, red, bool(zi))
    plan.posinf = bool(torch.isposinf(lp).any())
    return plan


def _lengths(value: Any, name: str) -> list[int]:
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise RuntimeError(f"{name} must be integral")
        return [int(v) for v in value.reshape(-1).tolist()]
    return [operator.index(v) for v in value]


def _type_error(input_lengths: Any, target_lengths: Any) -> TypeError:
    def kind(v: Any) -> str:
        return type(v).__name__ if not isinstance(v, Tensor) else "Tensor"

    return TypeError(
        "ctc_loss() received an invalid combination of arguments - got (Tensor, Tensor, "
        f"{kind(input_lengths)}, {kind(target_lengths)}, int, int, bool), but expected one of:\n"
        " * (Tensor log_probs, Tensor targets, tuple of ints input_lengths, tuple of ints "
        "target_lengths, int blank = 0, int reduction = at::Reduction::Mean, bool zero_infinity "
        "= False)\n"
        " * (Tensor log_probs, Tensor targets, Tensor input_lengths, Tensor target_lengths, "
        "int blank = 0, int reduction = at::Reduction::Mean, bool zero_infinity = False)"
    )


def _host_lengths(input_lengths: Any, target_lengths: Any) -> tuple[list[int], list[int]]:
    tensors = isinstance(input_lengths, Tensor), isinstance(target_lengths, Tensor)
    if tensors[0] != tensors[1]:
        raise _type_error(input_lengths, target_lengths)
    if not tensors[0]:
        try:
            return _lengths(input_lengths, ""), _lengths(target_lengths, "")
        except TypeError:
            raise _type_error(input_lengths, target_lengths) from None
    return _lengths(input_lengths, "input_lengths"), _lengths(target_lengths, "target_lengths")


def _extended(
    targets: Tensor, target_lengths: list[int], blank: int, n: int, device: torch.device
) -> Tensor:
    """The (N, 2 max S_n + 1) extended label sequences, blanks at even states and padding."""
    smax = max(target_lengths, default=0)
    targets = targets.to(device=device, dtype=torch.long)
    tl = torch.tensor(target_lengths, dtype=torch.long, device=device)
    cols = torch.arange(smax, device=device)
    valid = cols[None, :] < tl[:, None]
    if targets.dim() == 1:
        offsets = torch.cumsum(tl, 0) - tl
        pos = (offsets[:, None] + cols[None, :]).masked_fill_(~valid, 0)
        padded = targets[pos] if targets.numel() else torch.zeros_like(pos)
    else:
        padded = targets[:, :smax]
    padded = padded.masked_fill(~valid, blank)
    ext = torch.full((n, 2 * smax + 1), blank, dtype=torch.long, device=device)
    ext[:, 1::2] = padded
    return ext


def _check(
    log_probs: Tensor,
    targets: Tensor,
    il: list[int],
    tl: list[int],
    blank: int,
) -> None:
    """torch's checks, in torch's order."""
    if log_probs.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(
            f'"ctc_loss_{log_probs.device.type}" not implemented for '
            f"'{scalar_type_name(log_probs.dtype)}'"
        )
    if log_probs.numel() == 0:
        raise RuntimeError("log_probs tensor must not be empty")
    c = log_probs.shape[-1] if log_probs.dim() else 1
    if not 0 <= blank < c:
        raise RuntimeError("blank must be in label range")
    if log_probs.dim() != 3:
        raise RuntimeError(
            f"Expected 3-dimensional tensor, but got {log_probs.dim()}-dimensional tensor for "
            f"argument #1 'log_probs'{_WHERE}"
        )
    t, n, _ = log_probs.shape
    if len(il) != n:
        raise RuntimeError("input_lengths must be of size batch_size")
    if len(tl) != n:
        raise RuntimeError("target_lengths must be of size batch_size")
    if targets.dim() not in (1, 2):
        raise RuntimeError(
            f"Expected 1 to 2 dimensions, but got {targets.dim()}-dimensional tensor for "
            f"argument #2 'targets'{_WHERE}"
        )
    if targets.dim() == 1:
        for v in tl:
            if v < 0:
                raise RuntimeError(
                    f"Expected target_lengths to have value at least 0, but got value {v}{_WHERE}"
                )
        if targets.shape[0] != sum(tl):
            raise RuntimeError(
                f"Expected tensor to have size {sum(tl)} at dimension 0, but got size "
                f"{targets.shape[0]} for argument #2 'targets'{_WHERE}"
            )
    else:
        if targets.shape[0] != n:
            raise RuntimeError(
                f"Expected tensor to have size {n} at dimension 0, but got size "
                f"{targets.shape[0]} for argument #2 'targets'{_WHERE}"
            )
        for v in tl:
            if v < 0:
                raise RuntimeError(
                    f"Expected target_lengths to have value at least 0, but got value {v}{_WHERE}"
                )
            if targets.shape[1] < v:
                raise RuntimeError(
                    f"Expected tensor to have size at least {v} at dimension 1, but got size "
                    f"{targets.shape[1]} for argument #2 'targets'{_WHERE}"
                )
    for v in il:
        if v < 0:
            raise RuntimeError(
                f"Expected input_lengths to have value at least 0, but got value {v}{_WHERE}"
            )
        if v > t:
            raise RuntimeError(
                f"Expected input_lengths to have value at most {t}, but got value {v}{_WHERE}"
            )


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """The CTC loss; see :class:`torch.nn.CTCLoss` and the module docstring (torch's gradient
    convention: the gradient is w.r.t. the logits before a log_softmax).

    >>> import torch, mylosses
    >>> lp = torch.tensor([[0.5, 0.5], [0.5, 0.5]]).log()
    >>> mylosses.functional.ctc_loss(lp, torch.tensor([1]), (2,), (1,), reduction="sum")
    tensor(0.2877)
    """
    if has_torch_function_variadic(log_probs, targets, input_lengths, target_lengths):
        return handle_torch_function(
            ctc_loss,
            (log_probs, targets, input_lengths, target_lengths),
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank=blank,
            reduction=reduction,
            zero_infinity=zero_infinity,
        )
    red = get_enum(reduction)
    batched = log_probs.dim() == 3
    lp = log_probs if batched or log_probs.dim() == 0 else log_probs.unsqueeze(1)
    if _function.transforms_active():
        loss = _transformed(lp, targets, input_lengths, target_lengths, red, blank, zero_infinity)
        return loss.squeeze(0) if not batched and red == NONE else loss
    plan = _plan(lp, targets, input_lengths, target_lengths, blank, red, zero_infinity)
    if not _function.needs_autograd(lp):
        with torch.no_grad():
            loss = _reduce(_losses(lp, plan), plan)
    else:
        loss, _ = _function.apply(_CTC, lp, plan, _function.may_precompute())
    if not batched and red == NONE:
        loss = loss.squeeze(0)
    return loss


class CTCLoss(torch.nn.CTCLoss):
    __doc__ = torch.nn.CTCLoss.__doc__

    def forward(
        self, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor
    ) -> Tensor:
        return ctc_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            self.blank,
            self.reduction,
            self.zero_infinity,
        )
