"""One comparison case, and the random helpers the per-loss generators draw cases with.

A ``Case`` is one call of a loss: positional tensors, keyword arguments, the module's
constructor arguments when the call can also be written as ``Module(**ctor)(*args)``, and a
label naming its configuration class. ``Draw(seed)`` makes every random choice of a case from
its seed alone, so a case is replayable from the seed printed when it fails.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

__all__ = ["Case", "Draw", "positional_names", "torch_accepts"]

T = TypeVar("T")

# Sizes for random dimensions: odd and prime sizes catch vectorisation tails, 1 broadcasting.
_SIZES = (1, 2, 3, 5, 7, 11, 13, 17)
_MAX_NUMEL = 4096
# Two of them past 2.5 of mylosses' 128K-element blocks (with odd remainders), so that its
# blocked forward, the last halved stretches and the borrowed scratch are all exercised.
# Legacy (size_average, reduce) pairs, and reduction names torch rejects or deprecates.
_LEGACY = ((True, None), (False, None), (None, True), (None, False), (False, False), (True, False))
_INVALID_REDUCTIONS = ("elementwise_mean", "batchmean", "avg", "Mean")
_LARGE_SHAPES = ((317, 331), (47, 43, 53), (3, 107_653), (613, 541))


@dataclass
class Case:
    """One call of a loss, runnable on mylosses and torch alike.

    ``args`` are the functional's positional arguments (tensors: input, target, ...), ``kwargs``
    its keyword arguments (may hold tensors such as ``weight``), ``ctor`` the module's
    constructor kwargs when the call is ``Module(**ctor)(*args)`` too (else None).
    ``label`` is the configuration class, e.g. ``"mean/float32/weight/bcast"``.
    ``arg_names`` names ``args`` in messages (the functional's parameter names).
    """

    loss: str
    seed: int
    device: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    ctor: dict[str, Any] | None
    label: str
    double_backward: bool = False
    arg_names: tuple[str, ...] = ()

    def clone(self, *, device: str | None = None, dtype: torch.dtype | None = None) -> Case:
        """The same case on fresh leaf tensors: same values, strides (a transposed, sliced or
        expanded tensor stays so) and requires_grad; moved to ``device`` and with floating-point
        tensors cast to ``dtype`` when given (the float64 reference of a half case). The
        constructor arguments are copied too (a module weight included)."""
        device = device or self.device

        def copy(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return _clone_tensor(value, device, dtype)
            return value

        return replace(
            self,
            device=device,
            args=tuple(copy(a) for a in self.args),
            kwargs={k: copy(v) for k, v in self.kwargs.items()},
            ctor=None if self.ctor is None else {k: copy(v) for k, v in self.ctor.items()},
        )

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every tensor argument with its name, positional first, then keywords."""
        named = [(self.arg_name(i), a) for i, a in enumerate(self.args)]
        named += list(self.kwargs.items())
        return [(n, t) for n, t in named if isinstance(t, torch.Tensor)]

    def grad_inputs(self) -> list[tuple[str, torch.Tensor]]:
        """The tensor arguments that require grad, with their names."""
        return [(n, t) for n, t in self.named_tensors() if t.requires_grad]

    def arg_name(self, i: int) -> str:
        return self.arg_names[i] if i < len(self.arg_names) else f"arg{i}"

    def describe(self) -> str:
        """A few lines that say exactly what the case calls, for failure reports."""
        parts = [f"{self.arg_name(i)}={_describe(a)}" for i, a in enumerate(self.args)]
        parts += [f"{k}={_describe(v)}" for k, v in self.kwargs.items()]
        lines = [
            f"{self.loss} seed={self.seed} device={self.device} label={self.label}",
            f"  functional({', '.join(parts)})",
        ]
        if self.ctor is not None:
            ctor = ", ".join(f"{k}={v!r}" for k, v in self.ctor.items())
            lines.append(f"  module: {self.loss}({ctor})")
        if self.double_backward:
            lines.append("  double backward")
        return "\n".join(lines)


def _clone_tensor(t: torch.Tensor, device: str, dtype: torch.dtype | None) -> torch.Tensor:
    """Copy ``t``'s whole storage and view it with ``t``'s size, strides and offset, so stride-0
    and gapped layouts survive; a fresh leaf with ``t``'s requires_grad."""
    if dtype is None or not t.is_floating_point():
        dtype = t.dtype
    numel = t.untyped_storage().nbytes() // t.element_size()
    storage = torch.as_strided(t.detach(), (numel,), (1,), 0)
    storage = storage.to(device=device, dtype=dtype, copy=True)
    view = storage.as_strided(t.shape, t.stride(), t.storage_offset()).detach()
    return view.requires_grad_(t.requires_grad)


def _describe(value: Any) -> str:
    if not isinstance(value, torch.Tensor):
        return repr(value)
    dtype = str(value.dtype).removeprefix("torch.")
    text = f"{dtype}{list(value.shape)}"
    if not value.is_contiguous():
        text += f" strides={value.stride()}"
    if value.requires_grad:
        text += " requires_grad"
    return text


def torch_accepts(fn: Callable[..., Any], parameter: str) -> bool:
    """Whether the installed torch's ``fn`` takes ``parameter`` (e.g. ``weight=`` on l1_loss,
    new in torch 2.6): the harness compares an option only where torch has it."""
    return parameter in inspect.signature(fn).parameters


def positional_names(fn: Callable[..., Any], count: int) -> tuple[str, ...]:
    """The names of ``fn``'s first ``count`` parameters."""
    return tuple(list(inspect.signature(fn).parameters)[:count])


@dataclass
class Draw:
    """Every random choice of one case, made from its seed alone.

    Python's ``random.Random`` makes the choices, a CPU ``torch.Generator`` the tensor values;
    tensors are built on the CPU (``Case.clone(device=...)`` moves them), so a seed gives the
    same case on every device.
    """

    seed: int
    rng: random.Random = field(init=False)
    gen: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed)

    # -- choices -------------------------------------------------------------------------

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def choice(self, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
        return self.rng.choices(options, weights=weights)[0]

    def uniform(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high)

    # -- shapes --------------------------------------------------------------------------

    def reduction(self, kwargs: dict[str, Any], legacy: float) -> str:
        """A reduction written into ``kwargs`` (often left to its default 'mean'; rarely an
        invalid name, or, with chance ``legacy``, the legacy ``size_average``/``reduce`` pair
        that overrides it): returns the label's head, the reduction or ``invalid``,
        ``elementwise_mean`` or ``legacy``."""
        reduction = self.choice(("none", "mean", "sum"))
        head = reduction
        if self.chance(0.03):
            reduction = self.choice(_INVALID_REDUCTIONS)
            head = "elementwise_mean" if reduction == "elementwise_mean" else "invalid"
        if reduction != "mean" or self.chance(0.5):
            kwargs["reduction"] = reduction
        if legacy and self.chance(legacy):
            size_average, reduce = self.choice(_LEGACY)
            if size_average is not None:
                kwargs["size_average"] = size_average
            if reduce is not None:
                kwargs["reduce"] = reduce
            head = "legacy"
        return head

    def shape(self, kind: str) -> tuple[int, ...]:
        """A shape of ``kind``: "0d", "empty" (one dim of size 0), "large" (100k to 330k
        elements) or "nd" (1-d to 6-d, odd sizes, at most a few thousand elements)."""
        if kind == "0d":
            return ()
        if kind == "large":
            return self.choice(_LARGE_SHAPES)
        ndim = self.choice((1, 2, 3, 4, 5, 6), weights=(3, 4, 3, 2, 1, 1))
        while True:
            dims = [self.choice(_SIZES) for _ in range(ndim)]
            if kind == "empty":
                dims[self.rng.randrange(ndim)] = 0
            if _numel(dims) <= _MAX_NUMEL:
                return tuple(dims)

    def broadcast_pair(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Two different shapes that broadcast together, built from ``shape``: a 0-d partner, a
        partner missing leading dims, size-1 dims on either side, or an outer product such as
        (3, 1) against (4,)."""
        if not shape:
            return shape, self.shape("nd")
        how = self.choice(("scalar", "suffix", "ones", "outer"))
        if how == "scalar":
            return shape, ()
        if how == "suffix" and len(shape) > 1:
            return shape, shape[self.rng.randrange(1, len(shape)) :]
        if how == "outer" and len(shape) < 6:
            # input (..., n, 1) against target (m,): the result is (..., n, m)
            other = (self.choice(_SIZES[1:6]),)
            return (*shape, 1), other
        partner = tuple(1 if self.chance(0.5) else n for n in shape)
        if partner == shape:
            partner = (1, *shape[1:])
        if partner == shape:
            return shape, ()
        return (shape, partner) if self.chance(0.5) else (partner, shape)

    # -- values --------------------------------------------------------------------------

    def values(
        self, shape: Sequence[int], dtype: torch.dtype, kind: str = "normal"
    ) -> torch.Tensor:
        """A contiguous CPU tensor of ``kind`` values: "normal" (standard normal), "big"
        (about ±1e4), "positive" (uniform in [0, 2)), or "grid:<q>" (small multiples of q, so
        exact ties such as input == target or |input - target| == 2q are common)."""
        shape = tuple(shape)
        if kind.startswith("grid:"):
            q = float(kind.removeprefix("grid:"))
            ints = torch.randint(-6, 7, shape, generator=self.gen)
            return (ints.to(torch.float64) * q).to(dtype)
        if not dtype.is_floating_point and not dtype.is_complex:
            high = 10_000 if kind == "big" else 6
            low = 0 if kind == "positive" else -high
            return torch.randint(low, high + 1, shape, generator=self.gen).to(dtype)
        real = dtype.to_real() if dtype.is_complex else dtype
        if kind == "positive":
            raw = torch.rand(shape, generator=self.gen, dtype=torch.float64) * 2
        else:
            scale = 1e4 if kind == "big" else 1.0
            raw = torch.randn(shape, generator=self.gen, dtype=torch.float64) * scale
        if dtype.is_complex:
            imag = torch.randn(shape, generator=self.gen, dtype=torch.float64)
            return torch.complex(raw.to(real), imag.to(real))
        return raw.to(dtype)

    def sprinkle_nonfinite(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` with one to three random entries set to nan, inf or -inf (in place)."""
        if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
            return t
        flat = t.view(-1)
        for _ in range(self.rng.randint(1, 3)):
            flat[self.rng.randrange(flat.numel())] = self.choice(
                (float("nan"), float("inf"), -float("inf"))
            )
        return t

    # -- layouts -------------------------------------------------------------------------

    def lay_out(self, dense: torch.Tensor, layout: str | None = None) -> tuple[torch.Tensor, str]:
        """``dense``'s values in a random memory layout, as a leaf tensor, and the layout's name:
        "contiguous", "transposed" (a permuted view), "sliced" (a step-sliced view, with an
        offset) or "expanded" (stride-0 dims; the values along them repeat the first slice)."""
        if layout is None:
            layout = self.choice(("contiguous", "transposed", "sliced", "expanded"), (6, 2, 2, 1))
        if dense.dim() < 2 and layout == "transposed":
            layout = "sliced"
        expandable = [d for d, n in enumerate(dense.shape) if n > 1]
        if dense.dim() == 0 or (layout == "expanded" and not expandable):
            layout = "contiguous"
        if layout == "contiguous":
            return dense.clone(), layout
        if layout == "transposed":
            perm = list(range(dense.dim()))
            while perm == sorted(perm):
                self.rng.shuffle(perm)
            base = dense.permute(perm).contiguous()
            inverse = sorted(range(len(perm)), key=perm.__getitem__)
            return base.permute(inverse).detach(), layout
        if layout == "sliced":
            dim = self.rng.randrange(dense.dim())
            step, offset = self.choice((2, 3)), self.choice((0, 1))
            size = list(dense.shape)
            size[dim] = offset + max(dense.shape[dim] * step, 1)
            base = torch.zeros(size, dtype=dense.dtype)
            index = [slice(None)] * dense.dim()
            index[dim] = slice(offset, offset + dense.shape[dim] * step, step)
            view = base[tuple(index)]
            view.copy_(dense)
            return view.detach(), layout
        dims = [d for d in expandable if self.chance(0.5)] or [self.choice(expandable)]
        first = dense
        for d in dims:
            first = first.narrow(d, 0, 1)
        return first.clone().expand(dense.shape).detach(), layout


def _numel(dims: Sequence[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
