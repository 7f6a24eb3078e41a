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
    """A float argument as torch's argument parser takes it: a real number or a one-element
    tensor; anything else is a TypeError naming the argument."""
    if type(value) is float:  # the usual case, first
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
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
