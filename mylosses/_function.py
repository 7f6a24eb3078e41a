"""How every loss calls its autograd.Function, and the gradient a forward may leave for backward.

Two pieces of plumbing that every loss shares; the loss files hold the maths.

**The fast path into a Function.** ``Function.apply`` of a Function with ``setup_context`` binds
its arguments to ``forward``'s signature with ``inspect.signature(...).bind`` on every call. For
a loss on a batch of 8 that alone costs as much as torch's whole MSE. Our functionals always pass
every argument positionally, so the binding has nothing to do; :func:`apply` skips it and calls
the C++ ``apply`` directly, unless a functorch transform (vmap, grad, jacrev, ...) or
``torch.compile`` is active, where the full ``Function.apply`` is needed and used.

**Evaluation skips autograd.** When grad mode is off or no argument requires grad, there is no
backward to prepare: :func:`needs_autograd` says so and the functional computes the loss
directly, without building a graph node.

**A gradient computed in forward, used once.** Loss functions are memory bound: the cheapest
backward is the one already done. When an input requires grad, a loss's forward may compute
``d loss / d input`` (before the upstream gradient is known) into the one full-size buffer it
allocated anyway, and hand it to backward with :func:`stash_gradient`. Backward then scales it in
place by the upstream gradient and returns it, so the whole forward+backward touches one
full-size buffer, which autograd then moves into ``.grad`` without a copy.

That buffer can be used once only. :func:`take_gradient` hands it out and forgets it; a second
backward through the same graph (``retain_graph=True``) gets None and must recompute the gradient
from the saved inputs, as must a backward that builds a graph (``create_graph=True``, double
backward): an in-place buffer has no history to differentiate, so the loss recomputes the
gradient with differentiable ops from its saved inputs. Each loss's backward has exactly these
two branches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import Function

transforms_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling


def apply(fn: type[Function], *args: Any) -> Any:
    """``fn.apply(*args)`` for positional arguments, without the per-call signature binding."""
    if transforms_active() or _is_compiling():
        return fn.apply(*args)
    return super(Function, fn).apply(*args)  # type: ignore[misc]


_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor


def batched(grad: torch.Tensor) -> bool:
    """Whether a backward runs under a vmap: a functorch transform, or autograd's own batched
    backward (``is_grads_batched=True``, gradcheck's batched check, ``jacobian(vectorize=True)``).
    There an upstream gradient carries a batch dimension, and an in-place op on an unbatched
    buffer of ours cannot receive it."""
    return transforms_active() or _is_legacy_batched(grad)


def upstream_is_one(upstream: torch.Tensor) -> bool:
    """Whether an upstream gradient is exactly 1 (``loss.backward()``) and its multiplication
    may be skipped: on the CPU reading a 0-d value costs less than multiplying by it, even at
    small sizes (unlike a GPU's, where it would be a sync)."""
    return (
        upstream.is_cpu and upstream.dim() == 0 and not batched(upstream) and float(upstream) == 1.0
    )


# Below this many elements the multiplication costs less than looking at the upstream value.
_WORTH_A_LOOK = 1 << 14


def times_upstream(grad: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """A stashed gradient times the upstream gradient: in place into the stash (ours to reuse).

    Out of place under a vmap, where the upstream gradient carries a batch dimension. Not at
    all when the upstream gradient is exactly 1 on the CPU, as it is after ``loss.backward()``
    of a reduced loss: multiplying by 1 changes no bit, and skipping it saves a whole pass over
    the gradient (a quarter of Huber's time at 4M elements). Reading the value is free on the
    CPU; on a GPU it would be a host sync, and there the multiplication runs.
    """
    if batched(upstream):
        return grad * upstream
    if (
        grad.numel() > _WORTH_A_LOOK
        and upstream.dim() == 0
        and upstream.device.type == "cpu"
        and upstream.item() == 1.0
    ):
        return grad
    return grad.mul_(upstream)


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether a call must build a graph node: grad mode is on and some tensor requires grad.

    Inside a functorch transform the answer is always yes: ``torch.func.grad`` tracks tensors
    whose ``requires_grad`` we cannot see from here, and the Function must be there for it.
    """
    if transforms_active():
        return True
    if not torch.is_grad_enabled():
        return False
    for t in tensors:  # noqa: SIM110 (any() over a generator costs half a microsecond more)
        if t is not None and t.requires_grad:
            return True
    return False


def may_precompute() -> bool:
    """Whether forward may stash a gradient for backward (not under functorch or compile).

    Transforms and the compiler run forward as a pure function and trace backward separately;
    the one-shot buffer is an eager-mode optimisation only.
    """
    return not (transforms_active() or _is_compiling())


def stash_gradient(ctx: Any, grad: torch.Tensor | None) -> None:
    """Keep a gradient computed in forward for one use in backward (see the module docstring)."""
    ctx.stashed_gradient = grad


def take_gradient(ctx: Any) -> torch.Tensor | None:
    """The stashed gradient, once; None after the first call or when backward builds a graph."""
    grad = getattr(ctx, "stashed_gradient", None)
    ctx.stashed_gradient = None
    if grad is None or torch.is_grad_enabled():
        return None
    return grad


def short_backward(
    ctx: Any,
    upstream: torch.Tensor,
    recompute: Callable[[Any], tuple[torch.Tensor, ...]],
    differentiable: Callable[[Any, torch.Tensor], tuple[torch.Tensor | None, ...]],
) -> tuple[torch.Tensor | None, ...]:
    """The backward of a short path (an old-style Function whose forward left its gradients,
    one per differentiable input, in ``ctx.stashed_gradients``), for its differentiable inputs.

    The stashed gradients are used once, times ``upstream`` (in place, or not at all for an
    upstream of exactly 1). A retained graph's second backward gets them again from
    ``recompute(ctx)`` (forward's kernel: the same bits); a backward that builds a graph
    (``create_graph=True``, double backward) gets them from ``differentiable(ctx, upstream)``,
    written with differentiable ops, already times the upstream gradient.
    """
    grads = ctx.stashed_gradients
    ctx.stashed_gradients = None
    if torch.is_grad_enabled():
        return differentiable(ctx, upstream)
    if grads is None:
        grads = recompute(ctx)
    if batched(upstream) or _is_compiling():
        return tuple(g * upstream for g in grads)
    if upstream_is_one(upstream):
        return grads
    return tuple(g.mul_(upstream) for g in grads)


def short_function(
    name: str,
    kernel: Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]],
    derivative: Callable[[torch.Tensor, torch.Tensor, Any, torch.Tensor], torch.Tensor | None],
) -> type[Function]:
    """The old-style Function, named ``name``, of a loss's short path (small plain calls of an
    (input, target) loss whose target does not require grad): ``apply(input, target, meta)``.

    Old style, because its call costs a few microseconds less than the new style's forward +
    setup_context, which at a batch of 8 is a large part of torch's whole time. Forward is
    ``kernel(input, target, meta)``: the loss, and the input's gradient before the upstream
    factor, which it stashes. Backward is :func:`short_backward`: ``kernel`` again for a
    retained graph's second backward, ``derivative(input, target, meta, upstream)`` (the
    gradient times the upstream, with differentiable ops) for double backward. Input and target
    are saved, so that autograd notices an in-place change of either before a second backward.
    """

    def forward(ctx: Any, input: torch.Tensor, target: torch.Tensor, meta: Any) -> torch.Tensor:
        ctx.save_for_backward(input, target)
        ctx.meta = meta
        loss, grad = kernel(input, target, meta)
        ctx.stashed_gradients = (grad,)
        return loss

    def again(ctx: Any) -> tuple[torch.Tensor]:
        input, target = ctx.saved_tensors
        return (kernel(input, target, ctx.meta)[1],)

    def differentiable(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None]:
        input, target = ctx.saved_tensors
        return (derivative(input, target, ctx.meta, upstream),)

    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return (*short_backward(ctx, grad, again, differentiable), None, None)

    body = {"forward": staticmethod(forward), "backward": staticmethod(backward)}
    return type(name, (Function,), body)


def fast_apply(fn: type[Function]) -> Callable[..., Any]:
    """``fn.apply`` without the per-call signature binding (see :func:`apply`), for a short
    path's old-style Function in eager mode."""
    return super(Function, fn).apply  # type: ignore[misc]


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, without a copy when it is already."""
    return t if t.dtype == dtype else t.to(dtype)


def sum_to_like(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A gradient summed over the dimensions ``like`` was broadcast along, in its dtype."""
    if grad.shape != like.shape:
        grad = grad.sum_to_size(like.shape)
    return cast(grad, like.dtype)


def take_gradients(ctx: Any) -> tuple | None:
    """Forward's gradients (a tuple left in ``ctx.stashed``), once: ``take_gradient``'s rule
    for a Function that stashes one gradient per input."""
    stash = getattr(ctx, "stashed", None)
    ctx.stashed = None
    if stash is None or torch.is_grad_enabled():
        return None
    return stash
