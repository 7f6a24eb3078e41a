"""Argument checks that raise torch's exception types with torch's messages.

A drop-in replacement has to fail the way torch fails: the same exception type at the same
moment (so that ``except ValueError`` in a user's code still catches it), with a message that
names what was wrong. Every loss calls these instead of writing its own checks.
"""

from __future__ import annotations

import numbers
import warnings

import torch

# The names torch uses for scalar types in kernel-dispatch errors ("not implemented for 'Long'").
_SCALAR_TYPE_NAMES = {
    torch.float64: "Double",
    torch.float32: "Float",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.complex128: "ComplexDouble",
    torch.complex64: "ComplexFloat",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.bool: "Bool",
}


def scalar_type_name(dtype: torch.dtype) -> str:
    """torch's C++ name of a dtype, as it appears in its error messages."""
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def warn_if_size_mismatch(input: torch.Tensor, target: torch.Tensor, stacklevel: int = 3) -> None:
    """torch's warning when input and target differ in size and will be broadcast.

    Broadcasting a (N,) target against an (N, 1) input silently builds an (N, N) loss, the most
    common bug with regression losses; torch warns and so do we, with the same words.
    """
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=stacklevel,  # the user's call of the functional
        )


def broadcast_shape(input: torch.Tensor, target: torch.Tensor) -> torch.Size:
    """The common shape of input and target; RuntimeError with torch's message if there is none."""
    if input.shape == target.shape:
        return input.shape
    return torch.broadcast_shapes(input.shape, target.shape)


def broadcast_error(a: torch.Size, b: torch.Size) -> RuntimeError | None:
    """torch's TensorIterator error for shapes that do not broadcast (naming the sizes and the
    first dimension, from the last, where they differ), or None if they do."""
    ndim = max(len(a), len(b))
    for i in range(ndim - 1, -1, -1):
        offset = ndim - 1 - i
        sa = a[len(a) - 1 - offset] if offset < len(a) else 1
        sb = b[len(b) - 1 - offset] if offset < len(b) else 1
        if sa != sb and sa != 1 and sb != 1:
            return RuntimeError(
                f"The size of tensor a ({sa}) must match the size of tensor b ({sb}) "
                f"at non-singleton dimension {i}"
            )
    return None


def broadcast_or_raise(a: torch.Size, b: torch.Size) -> torch.Size:
    """The broadcast shape of ``a`` and ``b``; torch's RuntimeError of an elementwise op (not
    ``torch.broadcast_shapes``'s) if they do not broadcast."""
    if a == b:
        return a
    error = broadcast_error(a, b)
    if error is not None:
        raise error
    return torch.broadcast_shapes(a, b)


def negate_bool_error() -> RuntimeError:
    """torch's error for ``-t`` of a bool tensor (compositions that negate a target meet it)."""
    return RuntimeError(
        "Negation, the `-` operator, on a bool tensor is not supported. If you are trying "
        "to invert a mask, use the `~` or `logical_not()` operator instead."
    )


def check_weight_matches_input(weight: torch.Tensor, input: torch.Tensor) -> None:
    """The functional ``weight=`` of l1/mse/huber must have the input's exact size."""
    if weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")


def check_kernel_dtype(name: str, dtype: torch.dtype, input: torch.Tensor, *, complex_ok: bool):
    """Reject the dtypes torch's native kernel has no implementation for.

    torch raises NotImplementedError naming the kernel and the scalar type, e.g.
    ``"mse_cpu" not implemented for 'Long'``; integer and bool inputs get there after type
    promotion (an int input with a float target is computed in float and is fine).
    """
    if dtype.is_floating_point or (complex_ok and dtype.is_complex):
        return
    raise NotImplementedError(
        f"\"{name}_{input.device.type}\" not implemented for '{scalar_type_name(dtype)}'"
    )


def check_subtractable(input: torch.Tensor, target: torch.Tensor) -> None:
    """torch's refusal to subtract bool tensors (where a loss is computed as ``input - target``)."""
    if input.dtype == torch.bool and target.dtype == torch.bool:
        raise RuntimeError(
            "Subtraction, the `-` operator, with two bool tensors is not supported. "
            "Use the `^` or `logical_xor()` operator instead."
        )
    if torch.bool in (input.dtype, target.dtype):
        raise RuntimeError(
            "Subtraction, the `-` operator, with a bool tensor is not supported. "
            "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead."
        )


def check_castable(input: torch.Tensor, target: torch.Tensor) -> None:
    """For kernels that write into a tensor of the input's dtype (``huber_loss``): the promoted
    dtype of input and target must cast back to it (no float into int, no complex into float)."""
    if input.dtype == target.dtype:
        return
    promoted = torch.promote_types(input.dtype, target.dtype)
    if _category(promoted) > _category(input.dtype):  # torch.can_cast, which dynamo can trace
        raise RuntimeError(
            f"result type {scalar_type_name(promoted)} can't be cast to the desired output "
            f"type {scalar_type_name(input.dtype)}"
        )


def float_argument(function: str, name: str, position: int, value: object) -> float:
    """A float argument as torch's argument parser takes it: a real number or a 0-d tensor that
    does not require grad (a one-element 1-d tensor is refused); anything else is a TypeError
    naming the argument."""
    if type(value) is float:  # the usual case, first
        return value
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad:
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"{function}(): argument '{name}' (position {position}) must be float, "
        f"not {type(value).__name__}"
    )


def _category(dtype: torch.dtype) -> int:
    """bool < integer < floating < complex: a cast may not go down this order."""
    if dtype.is_complex:
        return 3
    if dtype.is_floating_point:
        return 2
    return 0 if dtype == torch.bool else 1
