"""The one list of the losses mylosses has, found by reading ``mylosses/losses/``.

Each loss file names its module class and its functional in ``__all__``; a class is paired with
the ``torch.nn`` class of the same name, a function with the ``torch.nn.functional`` function of
the same name. ``swap_modules``, ``patch_torch``, the harness and the tests all read this list,
so a new loss file is picked up everywhere without editing any other list.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any

import torch

from mylosses import losses as _losses_package


@dataclass(frozen=True)
class LossEntry:
    """One loss: our module and functional, and torch's (None where this torch lacks them)."""

    name: str  # the module class name, e.g. "MSELoss"
    module: type[torch.nn.Module]
    torch_module: type[torch.nn.Module] | None
    functional_name: str  # e.g. "mse_loss"
    function: Any
    torch_function: Any


# torch's functionals as they are at import, before any patch_torch() replaces them.
_TORCH_FUNCTIONS = {n: f for n, f in vars(torch.nn.functional).items() if callable(f)}


def _torch_base(cls: type) -> type[torch.nn.Module] | None:
    """The torch.nn class a module of ours stands in for: its base of the same name, if any."""
    for base in cls.__mro__[1:]:
        if base.__name__ == cls.__name__ and base.__module__.startswith("torch."):
            return base
    return None


@functools.cache
def entries() -> tuple[LossEntry, ...]:
    """Every loss in ``mylosses/losses/``, sorted by name."""
    found = []
    for info in pkgutil.iter_modules(_losses_package.__path__):
        mod = importlib.import_module(f"{_losses_package.__name__}.{info.name}")
        exported = [getattr(mod, n) for n in getattr(mod, "__all__", ())]
        classes = [c for c in exported if inspect.isclass(c) and issubclass(c, torch.nn.Module)]
        functions = [f for f in exported if inspect.isfunction(f)]
        if len(classes) != 1 or len(functions) != 1:
            raise ImportError(
                f"{mod.__name__}.__all__ must name one loss module and one functional, "
                f"found {[c.__name__ for c in classes]} and {[f.__name__ for f in functions]}"
            )
        cls, fn = classes[0], functions[0]
        found.append(
            LossEntry(
                name=cls.__name__,
                module=cls,
                torch_module=_torch_base(cls),
                functional_name=fn.__name__,
                function=fn,
                torch_function=_TORCH_FUNCTIONS.get(fn.__name__),
            )
        )
    return tuple(sorted(found, key=lambda e: e.name))


def by_name(name: str) -> LossEntry:
    """The entry of a module class name such as ``"MSELoss"``."""
    for entry in entries():
        if entry.name == name:
            return entry
    raise KeyError(f"unknown loss {name!r}; known: {', '.join(e.name for e in entries())}")
