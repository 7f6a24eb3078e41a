"""CosineEmbeddingLoss edge cases the generic tests cannot express.

- zero rows (torch's epsilon: cosine 0, gradients of about 1e6), exact ties at the margin
  (orthogonal rows with margin 0, parallel and antiparallel rows with margin ±1), targets that
  are neither 1 nor -1 (no loss, no gradient, even where the cosine is NaN);
- the blocked path (more rows than one block, a row longer than a block) against torch, and
  against our own plain path; a retained graph's second backward; double backward;
- a target that requires grad (allowed: it gets None, and alone it gives no graph);
- torch's dimension checks and the ``margin`` argument's parsing, type and message;
- float16 zero rows: torch's epsilon rounds to 0 there (NaN); ours is the float64 truth.
"""

from __future__ import annotations

import unittest
import warnings

import torch
from parameterized import parameterized

import mylosses
from compare.parity import assert_same_exception
from tests._support import assert_close_to_torch, safe_name

F = torch.nn.functional
ours_fn = mylosses.functional.cosine_embedding_loss
REDUCTIONS = ("none", "mean", "sum")


def _pair(x1: torch.Tensor, x2: torch.Tensor, grads: tuple[bool, bool] = (True, True)):
    """Two independent copies of (x1, x2) as leaves requiring grad as asked."""
    a = [x1.detach().clone().requires_grad_(grads[0]), x2.detach().clone().requires_grad_(grads[1])]
    b = [x1.detach().clone().requires_grad_(grads[0]), x2.detach().clone().requires_grad_(grads[1])]
    return a, b


def _compare(test: unittest.TestCase, x1, x2, target, **kwargs) -> None:
    """Forward and both gradients of ours against torch's, under a seeded upstream gradient."""
    (a1, a2), (b1, b2) = _pair(x1, x2)
    theirs = F.cosine_embedding_loss(a1, a2, target, **kwargs)
    ours = ours_fn(b1, b2, target, **kwargs)
    assert_close_to_torch(ours, theirs, "output")
    g = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = g.to(theirs.dtype)
    gt = torch.autograd.grad(theirs, (a1, a2), g)
    go = torch.autograd.grad(ours, (b1, b2), g)
    for name, o, t in zip(("input1", "input2"), go, gt, strict=True):
        assert_close_to_torch(o, t, f"grad {name}")


class TestTies(unittest.TestCase):
    @parameterized.expand(
        [(r, d) for r in REDUCTIONS for d in ("float32", "float64")], name_func=safe_name
    )
    def test_zero_rows(self, reduction: str, dtype: str) -> None:
        dt = getattr(torch, dtype)
        x1 = torch.randn(6, 5, dtype=dt)
        x2 = torch.randn(6, 5, dtype=dt)
        x1[0] = 0
        x2[1] = 0
        x1[2] = 0
        x2[2] = 0
        target = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
        x1[3] = 0
        _compare(self, x1, x2, target, reduction=reduction)

    @parameterized.expand(
        [
            ("orthogonal", 0.0, [[1.0, 0.0, 2.0]], [[0.0, 3.0, 0.0]]),
            ("parallel", 1.0, [[1.0, 2.0, -2.0]], [[2.0, 4.0, -4.0]]),
            ("antiparallel", -1.0, [[1.0, 2.0, -2.0]], [[-0.5, -1.0, 1.0]]),
        ],
        name_func=safe_name,
    )
    def test_tie_at_the_margin(self, name: str, margin: float, a: list, b: list) -> None:
        """cos - margin == 0 exactly: torch's clamp_min passes the gradient there."""
        for dtype in (torch.float32, torch.float64):
            x1, x2 = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
            _compare(self, x1, x2, torch.tensor([-1.0]), margin=margin, reduction="sum")

    def test_targets_other_than_plus_minus_one(self) -> None:
        x1, x2 = torch.randn(5, 4), torch.randn(5, 4)
        target = torch.tensor([0.0, 2.0, 0.5, 1.0, -1.0])
        _compare(self, x1, x2, target, reduction="none")
        x1[0, 0] = float("nan")  # a NaN cosine where the target is 0: loss 0, gradient NaN
        _compare(self, x1, x2, target, reduction="none")

    @parameterized.expand([("int64",), ("bool",), ("float64",)], name_func=safe_name)
    def test_target_dtypes(self, dtype: str) -> None:
        target = torch.tensor([1, -1, 1, 0]).to(getattr(torch, dtype))
        _compare(self, torch.randn(4, 3), torch.randn(4, 3), target, reduction="none")


class TestPaths(unittest.TestCase):
    @parameterized.expand(
        [
            (shape, r)
            for shape in ("300x700", "3x100000", "1x70000", "unbatched70000")
            for r in REDUCTIONS
        ],
        name_func=safe_name,
    )
    def test_blocked(self, shape: str, reduction: str) -> None:
        """More rows than one block, and rows longer than a block (one row per block)."""
        if shape.startswith("unbatched"):
            dims: tuple[int, ...] = (int(shape.removeprefix("unbatched")),)
            target = torch.tensor(-1.0)
        else:
            dims = tuple(int(n) for n in shape.split("x"))
            target = torch.randint(0, 2, dims[:1]).float() * 2 - 1
        x1, x2 = torch.randn(dims), torch.randn(dims)
        _compare(self, x1, x2, target, reduction=reduction, margin=-0.01)

    def test_blocked_cosines_are_torchs_bit_for_bit(self) -> None:
        """The blocked row sums sum each row with torch's kernel: the same cosines bit for bit
        (so that exact ties at the margin agree)."""
        x1, x2 = torch.randn(300, 700), torch.randn(300, 700)
        target = torch.randint(0, 2, (300,)).float() * 2 - 1
        ours = ours_fn(x1, x2, target, reduction="none")
        theirs = F.cosine_embedding_loss(x1, x2, target, reduction="none")
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    def test_retained_graph_second_backward(self) -> None:
        for shape in ((8, 64), (300, 700)):
            x1 = torch.randn(shape, requires_grad=True)
            x2 = torch.randn(shape, requires_grad=True)
            target = torch.randint(0, 2, shape[:1]).float() * 2 - 1
            loss = ours_fn(x1, x2, target)
            first = torch.autograd.grad(loss, (x1, x2), retain_graph=True)
            second = torch.autograd.grad(loss, (x1, x2))
            for a, b in zip(first, second, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)

    @parameterized.expand([(r,) for r in REDUCTIONS], name_func=safe_name)
    def test_gradgradcheck(self, reduction: str) -> None:
        x1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        x2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        target = torch.tensor([1.0, -1.0, -1.0, 0.0], dtype=torch.float64)

        def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return ours_fn(a, b, target, margin=-0.5, reduction=reduction)

        self.assertTrue(torch.autograd.gradcheck(f, (x1, x2)))
        self.assertTrue(torch.autograd.gradgradcheck(f, (x1, x2)))

    def test_target_requiring_grad(self) -> None:
        x1, x2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
        target = torch.tensor([1.0, -1.0, 1.0, -1.0], requires_grad=True)
        alone = ours_fn(x1.detach(), x2, target)
        self.assertFalse(alone.requires_grad)
        loss = ours_fn(x1, x2, target)
        g1, gt = torch.autograd.grad(loss, (x1, target), allow_unused=True)
        self.assertIsNone(gt)
        self.assertIsNotNone(g1)

    def test_float16_zero_row_is_the_truth(self) -> None:
        """torch: 1e-12 rounds to 0 in float16 and the cosine is 0/0; ours is computed in
        float32 and gives the float64 cosine 0."""
        x1 = torch.zeros(1, 3, dtype=torch.float16)
        x2 = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float16)
        target = torch.tensor([-1.0])
        self.assertTrue(F.cosine_embedding_loss(x1, x2, target).isnan().all())
        ours = ours_fn(x1, x2, target)
        self.assertEqual(ours.dtype, torch.float16)
        self.assertEqual(float(ours), 0.0)


class TestErrors(unittest.TestCase):
    @parameterized.expand(
        [
            ("target2d", (4, 3), (4, 3), (4, 1)),
            ("target1d_inputs1d", (3,), (3,), (1,)),
            ("target0d_inputs2d", (4, 3), (4, 3), ()),
            ("input2_1d", (4, 3), (3,), (4,)),
            ("input2_3d", (4, 3), (2, 4, 3), (4,)),
            ("inputs0d", (), (), ()),
            ("cols", (4, 3), (4, 5), (4,)),
            ("rows", (4, 3), (4, 3), (5,)),
            ("unbatched_cols", (3,), (2,), ()),
        ],
        name_func=safe_name,
    )
    def test_shapes(self, name: str, s1: tuple, s2: tuple, st: tuple) -> None:
        x1, x2, t = torch.randn(s1), torch.randn(s2), torch.ones(st)
        assert_same_exception(
            lambda: ours_fn(x1, x2, t),
            lambda: F.cosine_embedding_loss(x1, x2, t),
            match_message=True,
        )

    @parameterized.expand(
        [
            ("str", "a"),
            ("none", None),
            ("list", [0.5]),
            ("tensor1d", torch.tensor([0.5])),
            ("tensor_requires_grad", torch.tensor(0.5, requires_grad=True)),
            ("complex", 1 + 0j),
            ("complex_tensor", torch.tensor(1 + 2j)),
            ("tensor0d", torch.tensor(0.25)),
            ("int_tensor", torch.tensor(1)),
            ("bool", True),
            ("int", 1),
        ],
        name_func=safe_name,
    )
    def test_margin(self, name: str, margin: object) -> None:
        x1, x2, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([1.0, -1, 1, -1])
        theirs = assert_same_exception(
            lambda: ours_fn(x1, x2, t, margin=margin),
            lambda: F.cosine_embedding_loss(x1, x2, t, margin=margin),
            match_message=True,
        )
        if theirs is None:
            assert_close_to_torch(
                ours_fn(x1, x2, t, margin=margin), F.cosine_embedding_loss(x1, x2, t, margin=margin)
            )

    @parameterized.expand([("complex1",), ("complex2",)], name_func=safe_name)
    def test_complex_inputs(self, which: str) -> None:
        x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
        if which == "complex1":
            x1 = x1.to(torch.complex64)
        else:
            x2 = x2.to(torch.complex64)
        t = torch.ones(4)
        assert_same_exception(
            lambda: ours_fn(x1, x2, t),
            lambda: F.cosine_embedding_loss(x1, x2, t),
            match_message=True,
        )

    def test_legacy_arguments_warn(self) -> None:
        x1, x2, t = torch.randn(4, 3), torch.randn(4, 3), torch.ones(4)
        for size_average, reduce in ((False, None), (None, False), (True, True)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ours = ours_fn(x1, x2, t, size_average=size_average, reduce=reduce)
                theirs = F.cosine_embedding_loss(
                    x1, x2, t, size_average=size_average, reduce=reduce
                )
            self.assertEqual(len(caught), 2)
            self.assertEqual(str(caught[0].message), str(caught[1].message))
            assert_close_to_torch(ours, theirs)


if __name__ == "__main__":
    unittest.main()
