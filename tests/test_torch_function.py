"""Tensor subclasses with ``__torch_function__`` see one call of our functional, as with torch.

torch's functionals hand a call with a subclass argument to the subclass first
(``handle_torch_function``); libraries that override a loss for their tensor type (and, under
``patch_torch()``, overrides keyed on ``torch.nn.functional.<fn>``) rely on that. Ours do the
same: the subclass sees exactly one call, of our function, and gets the same result back.
"""

from __future__ import annotations

import unittest
import warnings
from typing import Any, ClassVar

import torch
from parameterized import parameterized

from compare.tolerances import compare_tensors
from tests._support import (
    LOSS_NAMES,
    entry,
    find_cases,
    fresh,
    ordinary,
    real_floating,
    safe_name,
    torch_runs_cleanly,
)


class Traced(torch.Tensor):
    """A subclass that records the top-level functions it is handed."""

    seen: ClassVar[list[Any]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class TestTorchFunction(unittest.TestCase):
    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_subclass_sees_one_call(self, name: str) -> None:
        e = entry(name)
        pick = lambda c: ordinary(c) and real_floating(c) and torch_runs_cleanly(c)  # noqa: E731
        for case in find_cases(name, pick, count=3):
            c = fresh(case)
            plain = c.args[0].detach()
            args = (plain.as_subclass(Traced), *c.args[1:])
            Traced.seen.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = e.function(*args, **c.kwargs)
                seen, Traced.seen[:] = list(Traced.seen), []
                direct = e.function(plain, *c.args[1:], **c.kwargs)
            with self.subTest(seed=case.seed, label=case.label):
                self.assertEqual(seen, [e.function], "the subclass must see our one call")
                # the same numbers as without the subclass (parity with torch is tested elsewhere)
                message = compare_tensors(f"{name} via a subclass", ours, direct)
                self.assertIsNone(message, message)
