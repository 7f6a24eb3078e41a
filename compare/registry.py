"""The harness's per-loss registry, and how a command line selects from it.

Each ``compare/specs/<family>.py`` exports ``SPECS``, a tuple of ``LossSpec``; ``REGISTRY``
gathers them all, keyed by the torch class name. A spec names the loss's functional and holds
its two case generators; mylosses' and torch's implementations are looked up by name, when
first used, so ``compare`` imports even where ``mylosses`` does not.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compare import specs as _specs_package
from compare.cases import Case

__all__ = [
    "REGISTRY",
    "LossSpec",
    "UsageError",
    "resolve_devices",
    "select_specs",
    "unspecified_losses",
]

# "small" (overhead-bound) and "large" (memory-bound) for every loss; a spec may name more, e.g.
# "large/options" for a costly combination of options that has its own target.
BenchSize = str
BENCH_SIZES: tuple[BenchSize, ...] = ("small", "large")


class UsageError(ValueError):
    """A bad command line: an unknown loss or an unavailable device (exit status 2)."""


@dataclass(frozen=True)
class LossSpec:
    """One loss as the harness sees it.

    ``name`` is the torch class name (``"MSELoss"``) and the registry key, ``functional`` the
    function name in ``torch.nn.functional`` and ``mylosses.functional``. ``make_case(seed,
    device)`` draws one random configuration, deterministic in ``seed``; ``bench_case(size,
    device)`` gives the benchmark's fixed case for each name in ``bench_sizes`` (``"small"``,
    ``"large"``, and any variant the spec adds).

    ``reference`` (optional) computes the same loss as the functional, with the same
    arguments, as a composition of plain differentiable torch ops. It stands in for torch
    where torch's own double backward is not implemented (MultiMarginLoss raises "derivative
    for aten::multi_margin_loss_backward is not implemented"): second-order gradients are then
    compared with the reference's, run in float64 (``compare/parity.py``).
    """

    name: str
    functional: str
    make_case: Callable[[int, str], Case]
    bench_case: Callable[[BenchSize, str], Case]
    bench_sizes: tuple[BenchSize, ...] = BENCH_SIZES
    reference: Callable[..., torch.Tensor] | None = None
    # Where torch's gradient w.r.t. the first argument is not the true derivative (CTC returns
    # the gradient w.r.t. the logits before a log_softmax), the map that numerical checks
    # (gradcheck) apply to the first argument before the call, under which it is.
    gradcheck_map: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def ours_fn(self) -> Callable[..., Any]:
        return getattr(importlib.import_module("mylosses.functional"), self.functional)

    @property
    def torch_fn(self) -> Callable[..., Any]:
        return getattr(torch.nn.functional, self.functional)

    @property
    def ours_module(self) -> type[torch.nn.Module]:
        return getattr(importlib.import_module("mylosses"), self.name)

    @property
    def torch_module(self) -> type[torch.nn.Module]:
        return getattr(torch.nn, self.name)


def _discover() -> dict[str, LossSpec]:
    found: dict[str, LossSpec] = {}
    for info in pkgutil.iter_modules(_specs_package.__path__):
        module = importlib.import_module(f"{_specs_package.__name__}.{info.name}")
        for spec in module.SPECS:
            if spec.name in found:
                raise ImportError(f"two specs for {spec.name}: {module.__name__} and another")
            found[spec.name] = spec
    return dict(sorted(found.items()))


REGISTRY: dict[str, LossSpec] = _discover()


def select_specs(losses: str | Sequence[str] | None = None) -> list[LossSpec]:
    """The specs named by ``losses`` (a comma-separated string or a sequence of names; None or
    empty: all), in registry order. An unknown name raises UsageError listing the known ones."""
    if isinstance(losses, str):
        losses = [n.strip() for n in losses.split(",")]
    names = [n for n in losses or () if n]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UsageError(
            f"unknown loss{'es' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known: {', '.join(REGISTRY)}"
        )
    return [spec for name, spec in REGISTRY.items() if not names or name in names]


def resolve_devices(device: str) -> list[str]:
    """``"cpu"``, ``"cuda"`` or ``"all"`` (cpu, plus cuda when present) as a list of devices.
    ``"cuda"`` without a GPU raises UsageError."""
    if device == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (torch.cuda.is_available())")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or all")
    return [device]


def unspecified_losses() -> list[str]:
    """Losses that mylosses has but no spec under ``compare/specs/`` covers."""
    registry = importlib.import_module("mylosses._registry")
    return [e.name for e in registry.entries() if e.name not in REGISTRY]
