r"""What ``cross_entropy`` and ``nll_loss`` share: argument checks in torch's order, the class
targets' bookkeeping (ignored positions, per-position weights, the weighted mean's normaliser)
and the one memory arrangement both losses compute in.

**Shapes.** The class dimension is dimension 1 of an input ``(N, C, d_1, ..., d_K)``
(dimension 0 of an unbatched ``(C,)``); a class-index target has the input's shape without it.
Every computation here sees the input *arranged* as a 3-d tensor ``(R, C, S)``: ``R`` groups of
``S`` positions, each a vector of ``C`` scores, reductions over dimension 1. Which grouping
depends on the memory layout, so that no copy is needed:

- contiguous ``(N, C, d...)``: ``(N, C, d_1 \cdots d_K)`` (``S = 1`` for ``(N, C)``);
- channels-last (the class dimension innermost in memory): ``(N d_1 \cdots d_K, C, 1)``;
- a transposed ``(N, C)`` (column-major): ``(1, C, N)``;
- anything else is copied into the first form.

A class-index target and any per-position quantity is then ``(R, 1, S)`` in every case: the
positions are enumerated in the target's own (row-major) order.

**Weights and the weighted mean.** With class weights :math:`w` and ignored positions (target
equal to ``ignore_index``) the per-position weight is :math:`\omega_n = w_{t_n}` (0 where
ignored) and torch's 'mean' divides by :math:`\sum_n \omega_n` (the number of non-ignored
positions without a weight). All ignored: 0/0 = nan for the 'mean', as in torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mylosses import _function, _validation

__all__ = [
    "Arrangement",
    "arrange",
    "check_class_target",
    "check_range",
    "position_weights",
]

_LONG_OR_BYTE = (torch.int64, torch.uint8)


def _sizes(shape: torch.Size | tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def spatial_kernel(input: Tensor) -> bool:
    """Whether torch computes this input with its 2-d kernel (``nll_loss2d``): 3 dims or more."""
    return input.dim() >= 3


def check_class_target(
    input: Tensor, target: Tensor, weight: Tensor | None, *, check_input_dtype: bool = True
) -> None:
    """``nll_loss_nd``'s checks, in torch's order: batch sizes (ValueError), then, per kernel,
    the target's dtype and shape, the weight's size (RuntimeError), the input's dtype
    (NotImplementedError), the weight's dtype, a weight that requires grad (RuntimeError)."""
    if input.dim() < 1:
        raise ValueError(f"Expected 1 or more dimensions (got {input.dim()})")
    t_batch = target.shape[0] if target.dim() > 0 else 0
    if input.dim() != 1 and input.shape[0] != t_batch:
        raise ValueError(
            f"Expected input batch_size ({input.shape[0]}) to match target batch_size ({t_batch})."
        )
    if input.dim() == 1 and target.dim() == 1 and target.shape[0] != 1:
        raise ValueError(
            f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}"
        )
    spatial = spatial_kernel(input)
    n_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    if not spatial:
        _check_target_dtype(target)
        if target.dim() > 1:
            raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
        if weight is not None and (weight.dim() != 1 or weight.numel() != n_classes):
            raise RuntimeError(
                f"weight tensor should be defined either for all {n_classes} classes or no "
                f"classes but got weight tensor of shape: {_sizes(weight.shape)}"
            )
    else:
        if input.dim() != 4 and tuple(target.shape[1:]) != tuple(input.shape[2:]):
            expected = [input.shape[0], *input.shape[2:]]
            raise RuntimeError(
                f"Expected target size {_sizes(expected)}, got {_sizes(target.shape)}"
            )
        if input.dim() == 4 and target.dim() != 3:
            raise RuntimeError(
                "only batches of spatial targets supported (3D tensors) but got targets of "
                f"dimension: {target.dim()}"
            )
        _check_target_dtype(target)
        if input.dim() == 4 and tuple(target.shape) != (input.shape[0], *input.shape[2:]):
            raise RuntimeError(
                f"size mismatch (got input: {_sizes(input.shape)} , target: {_sizes(target.shape)}"
            )
        if target.dtype != torch.int64 and target.numel():  # the 2-d kernel: int64 only
            raise RuntimeError(
                f"expected scalar type Long but found {_validation.scalar_type_name(target.dtype)}"
            )
        if weight is not None and weight.numel() != n_classes:
            raise RuntimeError("weight tensor should be defined either for all or no classes")
    if check_input_dtype and not input.dtype.is_floating_point:
        kernel = "nll_loss2d_forward_out_frame" if spatial else "nll_loss_out_frame"
        raise NotImplementedError(
            f"\"{kernel}\" not implemented for '{_validation.scalar_type_name(input.dtype)}'"
        )
    if weight is not None:
        if weight.dtype != input.dtype:
            raise RuntimeError(
                f"expected scalar type {_validation.scalar_type_name(input.dtype)} but found "
                f"{_validation.scalar_type_name(weight.dtype)}"
            )
        if weight.requires_grad and torch.is_grad_enabled():
            fn = "nll_loss2d_forward" if spatial else "nll_loss_forward"
            raise RuntimeError(
                f"The function '{fn}' is not differentiable with respect to argument 'weight'. "
                "This input cannot have requires_grad True."
            )


def check_backward(input: Tensor, target: Tensor, prob: bool) -> None:
    """torch's nll backward rejects an unbatched (C,) input with a (1,) target, which its
    forward accepts: the same error at the same moment."""
    if not prob and input.dim() == 1 and target.dim() == 1 and input.shape[0] != 1:
        raise RuntimeError(f"size mismatch (got input: [{input.shape[0]}], target: [1])")


def _check_target_dtype(target: Tensor) -> None:
    if target.dtype not in _LONG_OR_BYTE:
        raise RuntimeError(
            "expected target dtype to be Long or Byte, but got "
            f"{_validation.scalar_type_name(target.dtype)}"
        )


def can_check_values(t: Tensor) -> bool:
    """Whether the target's values may be read here: on the CPU, in eager mode (a GPU would
    need a host sync; ``torch.compile`` and functorch cannot read values)."""
    return t.device.type == "cpu" and not (
        _function.transforms_active() or _function._is_compiling()
    )


def check_range(target: Tensor, n_classes: int, ignore_index: int) -> bool | None:
    """IndexError ``Target 5 is out of bounds.`` for a non-ignored target outside [0, C), as
    torch's CPU kernel. Returns whether some target is ignored (None where values cannot be
    read: on a GPU or under a transform; then nothing is checked)."""
    if target.numel() == 0:
        return False
    if not can_check_values(target):
        return None
    lo, hi = torch.aminmax(target)
    low, high = int(lo), int(hi)
    if low < 0 or high >= n_classes:
        flat = target.reshape(-1)
        bad = flat[(flat != ignore_index) & ((flat < 0) | (flat >= n_classes))]
        if bad.numel():
            raise IndexError(f"Target {int(bad[0])} is out of bounds.")
    return low <= ignore_index <= high


def position_weights(
    t3: Tensor, weight: Tensor | None, ignore_index: int, any_ignored: bool | None, dtype
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(safe, omega, valid)`` for an arranged target ``t3`` (R, 1, S): the target with ignored
    positions replaced by class 0 (a safe index), the per-position weight
    :math:`\\omega_n = w_{t_n}` (0 where ignored) in ``dtype``, None when it is 1 everywhere
    (no weight, nothing ignored), and the 0/1 mask of non-ignored positions in ``dtype`` (None
    when nothing is ignored)."""
    if t3.dtype != torch.int64:
        t3 = t3.long()
    valid = None
    safe = t3
    if any_ignored is None or any_ignored:
        keep = t3 != ignore_index
        safe = t3 * keep  # ignored -> class 0, a valid index whatever ignore_index is
        valid = keep.to(dtype)
    if weight is None:
        omega = valid
    else:
        omega = weight.reshape(-1).to(dtype)[safe]
        if valid is not None:
            omega = omega * valid
    return safe, omega, valid


class Arrangement:
    """How an input of shape ``(N, C, d...)`` (or ``(C,)``) is viewed as ``(R, C, S)``, and
    back (module docstring). ``arrange(t)`` applies the same view to any tensor of the input's
    shape (a probability target); ``restore(t3)`` turns an ``(R, C, S)`` tensor back into the
    input's shape (a gradient)."""

    __slots__ = ("C", "R", "S", "inner", "kind", "shape")

    def __init__(self, kind: str, shape: torch.Size, R: int, C: int, S: int, inner: tuple):
        self.kind = kind  # "ncs", "rows" (channels-last) or "t" (transposed 2-d)
        self.shape = shape
        self.R, self.C, self.S = R, C, S
        self.inner = inner  # the shape after moving the class dim last ("rows")

    def arrange(self, t: Tensor) -> Tensor:
        if self.kind == "ncs":
            return t.reshape(self.R, self.C, self.S)
        if self.kind == "rows":
            return t.movedim(1, -1).reshape(self.R, self.C, 1)
        return t.t().reshape(1, self.C, self.R * self.S)

    def restore(self, t3: Tensor) -> Tensor:
        if self.kind == "ncs":
            return t3.reshape(self.shape)
        if self.kind == "rows":
            return t3.reshape(self.inner).movedim(-1, 1)
        return t3.reshape(self.C, self.S).t()


def arrange(x: Tensor) -> tuple[Arrangement, Tensor]:
    """The arrangement of ``x`` and ``x`` arranged (a view where the layout allows, else a
    contiguous copy)."""
    shape = x.shape
    if x.dim() == 1:
        C = shape[0]
        return Arrangement("ncs", shape, 1, C, 1, ()), x.reshape(1, C, 1)
    N, C = shape[0], shape[1]
    S = 1
    for d in shape[2:]:
        S *= d
    if _function._is_compiling():  # (layouts are not known to a trace: reshape decides)
        return Arrangement("ncs", shape, N, C, S, ()), x.reshape(N, C, S)
    if x.is_contiguous():
        a = Arrangement("ncs", shape, N, C, S, ())
        return a, x.view(N, C, S)
    if x.dim() == 2 and x.t().is_contiguous():
        a = Arrangement("t", shape, 1, C, N, ())
        return a, x.t().view(1, C, N)
    moved = x.movedim(1, -1)
    if moved.is_contiguous():
        a = Arrangement("rows", shape, N * S, C, 1, tuple(moved.shape))
        return a, moved.view(N * S, C, 1)
    a = Arrangement("ncs", shape, N, C, S, ())
    return a, x.contiguous().view(N, C, S)


def out_shape(input: Tensor) -> tuple[int, ...]:
    """The shape of a 'none' loss: the input's without the class dimension."""
    if input.dim() <= 1:
        return ()
    return (input.shape[0], *input.shape[2:])


Reshaper = Callable[[Tensor], Tensor]
