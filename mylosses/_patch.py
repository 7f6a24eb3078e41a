"""Putting mylosses into existing code: ``swap_modules(model)`` and ``patch_torch()``.

Both take the list of losses from :mod:`mylosses._registry`, so they cover every loss that
exists without a list of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mylosses import _registry

# Where torch keeps the names that user code reaches: torch.nn.MSELoss is
# torch.nn.modules.loss.MSELoss, and F.mse_loss is torch.nn.functional.mse_loss.
_MODULE_NAMESPACES = (torch.nn, torch.nn.modules, torch.nn.modules.loss)
_FUNCTION_NAMESPACES = (torch.nn.functional,)


def swap_modules(model: torch.nn.Module) -> torch.nn.Module:
    """Turn every torch.nn loss module inside ``model`` (``model`` included) into mylosses' own.

    Our module classes subclass torch's and add no state, so each loss module keeps its identity,
    attributes, buffers (``weight``, ``pos_weight``), hooks and ``state_dict``; only its class,
    and so its ``forward``, changes. References held elsewhere (an optimiser, a trainer's
    ``criterion`` attribute) see the swap too. Subclasses of torch's losses defined by the user
    are left alone: their ``forward`` is theirs. Returns ``model``.

    >>> import torch, mylosses
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> model.criterion = torch.nn.MSELoss()
    >>> type(mylosses.swap_modules(model).criterion).__module__
    'mylosses.losses.mse'
    """
    ours = {e.torch_module: e.module for e in _registry.entries() if e.torch_module is not None}
    for module in model.modules():
        replacement = ours.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    return model


@contextlib.contextmanager
def patch_torch() -> Iterator[None]:
    """Inside this block, torch's loss classes and functions are mylosses'.

    ``torch.nn.<Loss>`` (also as ``torch.nn.modules.loss.<Loss>``) and
    ``torch.nn.functional.<fn>`` are replaced, so an unmodified training script, or a third-party
    trainer that builds ``nn.CrossEntropyLoss()`` or calls ``F.cross_entropy``, runs on mylosses.
    Names that code imported before the block (``from torch.nn import MSELoss``) keep what they
    were bound to. torch is restored on exit, also when the block raises.
    """
    saved: list[tuple[Any, str, Any]] = []
    try:
        for entry in _registry.entries():
            for space in _MODULE_NAMESPACES:
                if hasattr(space, entry.name):
                    saved.append((space, entry.name, getattr(space, entry.name)))
                    setattr(space, entry.name, entry.module)
            for space in _FUNCTION_NAMESPACES:
                if hasattr(space, entry.functional_name):
                    saved.append(
                        (space, entry.functional_name, getattr(space, entry.functional_name))
                    )
                    setattr(space, entry.functional_name, entry.function)
        yield
    finally:
        for space, name, original in reversed(saved):
            setattr(space, name, original)
