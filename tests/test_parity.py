"""Forward and gradient parity with torch.nn on compare's random cases, for every loss.

Every case goes through ``compare.parity.run_case``, the same helper ``python -m compare
check`` uses: exception type, warning categories, output shape/dtype/values, every input
gradient under a random upstream gradient, double backward where the case asks for it, and the
module call where the case has one. Tolerances are compare's (``compare.tolerances``): float64
and float32 directly, float16/bfloat16 against a float64 reference with torch's own error as the
yardstick.

Three tables per loss:
- ``test_drawn``: the generator's cases as drawn (every option, layout, shape kind, dtype);
- ``test_dtype``: cases cast to each floating dtype, so float64, float32, float16 and bfloat16
  are all covered whatever the generator draws (float64 also runs double backward);
- ``TestParityCuda``: the drawn cases on a GPU (skipped without one).

A failure prints the case, the differences and the command that replays it.
"""

from __future__ import annotations

import unittest

import pytest
import torch
from parameterized import parameterized

from compare.parity import run_case
from compare.registry import REGISTRY
from mylosses import _registry
from tests._support import CUDA, LOSS_NAMES, draw, failure_message, safe_name, spec

DRAWN_SEEDS = 200
DTYPE_SEEDS = 25
CUDA_SEEDS = 60
DTYPES = ("float64", "float32", "float16", "bfloat16")


class TestRegistryCoverage(unittest.TestCase):
    def test_every_loss_has_a_case_generator(self) -> None:
        """A loss without a spec in compare/specs would be silently untested."""
        missing = [e.name for e in _registry.entries() if e.name not in REGISTRY]
        self.assertEqual(missing, [], "losses without a compare spec")

    def test_every_spec_names_a_loss_of_ours(self) -> None:
        ours = {e.name for e in _registry.entries()}
        self.assertEqual(sorted(set(REGISTRY) - ours), [], "specs for losses mylosses lacks")

    def test_registry_is_not_empty(self) -> None:
        self.assertGreaterEqual(len(LOSS_NAMES), 4)

    def test_specs_agree_with_the_registry(self) -> None:
        for e in _registry.entries():
            with self.subTest(loss=e.name):
                s = spec(e.name)
                self.assertEqual(s.functional, e.functional_name)
                self.assertIs(s.ours_fn, e.function)
                self.assertIs(s.ours_module, e.module)
                self.assertIs(s.torch_module, e.torch_module)

    def test_cases_are_replayable_from_their_seed(self) -> None:
        """The replay command is only worth printing if a seed gives the same case twice."""
        for name in LOSS_NAMES:
            for seed in range(5):
                with self.subTest(loss=name, seed=seed):
                    a, b = spec(name).make_case(seed, "cpu"), spec(name).make_case(seed, "cpu")
                    self.assertEqual(a.label, b.label)
                    self.assertEqual(a.describe(), b.describe())
                    for (na, ta), (nb, tb) in zip(
                        a.named_tensors(), b.named_tensors(), strict=True
                    ):
                        self.assertEqual(na, nb)
                        self.assertEqual(ta.stride(), tb.stride())
                        torch.testing.assert_close(ta, tb, rtol=0, atol=0, equal_nan=True)


class TestParity(unittest.TestCase):
    @parameterized.expand(
        [(name, seed) for name in LOSS_NAMES for seed in range(DRAWN_SEEDS)], name_func=safe_name
    )
    def test_drawn(self, name: str, seed: int) -> None:
        case = draw(name, seed)
        result = run_case(spec(name), case)
        if not result.ok:
            self.fail(failure_message(case, result.failures))

    @parameterized.expand(
        [
            (name, dtype, seed)
            for name in LOSS_NAMES
            for dtype in DTYPES
            for seed in range(1000, 1000 + DTYPE_SEEDS)
        ],
        name_func=safe_name,
    )
    def test_dtype(self, name: str, dtype_name: str, seed: int) -> None:
        dtype = getattr(torch, dtype_name)
        drawn = draw(name, seed)
        case = drawn.clone(dtype=dtype)
        case.label += f"/cast-to-{dtype_name}"
        if dtype == torch.float64:
            double_backward = bool(case.grad_inputs())
        elif dtype == torch.float32:
            double_backward = drawn.double_backward
        else:
            double_backward = False
        result = run_case(spec(name), case, double_backward=double_backward)
        if not result.ok:
            note = f"the drawn case cast with case.clone(dtype=torch.{dtype_name})" + (
                ", double backward" if double_backward else ""
            )
            self.fail(failure_message(case, result.failures, note))


@pytest.mark.cuda
@unittest.skipUnless(CUDA, "needs a CUDA device")
class TestParityCuda(unittest.TestCase):
    @parameterized.expand(
        [(name, seed) for name in LOSS_NAMES for seed in range(CUDA_SEEDS)], name_func=safe_name
    )
    def test_drawn(self, name: str, seed: int) -> None:
        case = draw(name, seed, device="cuda")
        result = run_case(spec(name), case)
        if not result.ok:
            self.fail(failure_message(case, result.failures))
