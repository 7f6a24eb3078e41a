"""The blocked fast path of the elementwise losses (``mylosses/_pointwise.py``).

Inputs of more than one block (128K elements) are walked block by block, each block borrowing
the not-yet-written stretch of the gradient buffer after it as scratch, the last stretches
halved down to a small one. Random harness cases rarely reach that size, so these tests drive
it on purpose: 2.5 blocks and an odd remainder, contiguous (the blocked path) and transposed
(one subtraction, then the blocks), every reduction, gradients on input and target, checked
against torch with compare's tolerances; plus the geometry of the spans themselves.
"""

from __future__ import annotations

import inspect
import itertools
import unittest

import torch
from parameterized import parameterized

from compare.tolerances import compare_tensors
from mylosses import _pointwise
from tests._support import ENTRIES, safe_name

POINTWISE = tuple(
    e
    for e in ENTRIES
    if any(
        inspect.isclass(v) and issubclass(v, _pointwise.PointwiseRule)
        for v in vars(inspect.getmodule(e.function)).values()
    )
)
SHAPE = (3, 107_653)  # 322,959 elements: two whole blocks, then halves, odd remainder


class TestSpans(unittest.TestCase):
    @parameterized.expand([(n,) for n in (1, 4096, 131_073, 262_145, 322_959, 4 << 20)])
    def test_spans_cover_and_leave_room(self, n: int) -> None:
        spans = _pointwise._spans(n)
        self.assertEqual(spans[0][0], 0)
        self.assertEqual(spans[-1][1], n)
        for (_, stop), (start, _) in itertools.pairwise(spans):
            self.assertEqual(stop, start)  # contiguous, no overlap
        for start, stop in spans[:-1]:
            self.assertLessEqual(stop - start, _pointwise.BLOCK)
            self.assertGreaterEqual(n - stop, stop - start, "no unwritten room after a span")
        self.assertLessEqual(spans[-1][1] - spans[-1][0], max(_pointwise._SMALL_SPAN, 1))


class TestBlocked(unittest.TestCase):
    def setUp(self) -> None:
        if not POINTWISE:
            self.skipTest("no elementwise loss in the registry")

    @parameterized.expand(
        [
            (e.name, red, layout, dtype)
            for e in POINTWISE
            for red in ("mean", "sum", "none")
            for layout in ("contiguous", "transposed")
            for dtype in ("float32", "float64")
        ],
        name_func=safe_name,
    )
    def test_against_torch(self, name: str, reduction: str, layout: str, dtype: str) -> None:
        entry = next(e for e in POINTWISE if e.name == name)
        gen = torch.Generator().manual_seed(len(name) * 7 + len(reduction))
        dt = getattr(torch, dtype)
        x0 = torch.randn(SHAPE, generator=gen, dtype=torch.float64).mul_(2).to(dt)
        t0 = torch.randn(SHAPE, generator=gen, dtype=torch.float64).to(dt)
        if layout == "transposed":
            x0, t0 = x0.t().contiguous().t(), t0.t().contiguous().t()
        results = []
        for fn in (entry.function, entry.torch_function):
            x = x0.clone().requires_grad_()  # (clone keeps a transposed layout)
            t = t0.clone().requires_grad_()
            out = fn(x, t, reduction=reduction)
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
            out.backward(upstream.to(out.dtype))
            results.append((out.detach(), x.grad, t.grad))
        for what, ours, theirs in zip(("loss", "grad input", "grad target"), *results, strict=True):
            mismatch = compare_tensors(f"{name} {reduction} {layout} {what}", ours, theirs)
            self.assertIsNone(mismatch, mismatch)
