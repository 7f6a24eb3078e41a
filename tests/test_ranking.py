"""MarginRankingLoss and HingeEmbeddingLoss: the corners of torch's semantics that the generic
tests cannot express (clamp_min's gradient at exact ties, the label's gradient, labels other
than ±1, infinities that torch's selections drop, the margin's conversion, the fused paths
against the composed ones, block boundaries, errors at torch's moment)."""

from __future__ import annotations

import math
import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

import mylosses
import mylosses.functional as M
from compare.parity import assert_same_exception
from mylosses.losses import hinge_embedding, margin_ranking
from tests._support import assert_close_to_torch

INF, NAN = math.inf, math.nan
REDUCTIONS = ("none", "mean", "sum")
# One block, and the blocked loop (two and a half blocks, with a short last one).
SIZES = (1, 5 * margin_ranking.BLOCK // 2 // 7 + 1)


def _run(fn, tensors, wants, upstream_seed=0, **kw):
    """``fn(*tensors, **kw)`` on fresh leaves (those flagged in ``wants`` require grad): the
    result and the gradients of a random upstream."""
    leaves = [t.detach().clone().requires_grad_(w) for t, w in zip(tensors, wants, strict=True)]
    out = fn(*leaves, **kw)
    gen = torch.Generator().manual_seed(upstream_seed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], g)
    return out.detach(), grads


def _assert_same(ours, theirs):
    assert_close_to_torch(ours[0], theirs[0], "loss")
    for i, (a, b) in enumerate(zip(ours[1], theirs[1], strict=True)):
        assert_close_to_torch(a, b, f"gradient {i}")


_GRAD_SETS = [(True, True, False), (True, False, False), (False, True, False)]
_GRAD_SETS += [(False, False, True), (True, True, True), (False, True, True)]


class TestMarginRanking(unittest.TestCase):
    @parameterized.expand(
        [
            (r, d, n, w)
            for r in REDUCTIONS
            for d in ("float32", "float64")
            for n in SIZES
            for w in range(len(_GRAD_SETS))
        ]
    )
    def test_ties_and_nonfinite(self, reduction, dtype_name, reps, wants):
        """Exact ties (u == 0: clamp_min's gradient passes), NaN (gradient 0, but NaN in the
        label's gradient where x1 - x2 is NaN), infinities (0 * inf = NaN as torch's), each
        requested gradient, one block and the blocked loop."""
        dtype = getattr(torch, dtype_name)
        x1 = torch.tensor([1.0, 2.0, 0.5, NAN, INF, 3.0, -1.0, 0.0, 1e4], dtype=dtype)
        x2 = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, INF, -1.5, 0.5, -1e4], dtype=dtype)
        y = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 2.0, NAN, -1.0], dtype=dtype)
        args = (x1.repeat(reps), x2.repeat(reps), y.repeat(reps))
        for margin in (0.0, 0.5, -1.0):
            ours = _run(
                M.margin_ranking_loss, args, _GRAD_SETS[wants], reduction=reduction, margin=margin
            )
            theirs = _run(
                F.margin_ranking_loss, args, _GRAD_SETS[wants], reduction=reduction, margin=margin
            )
            _assert_same(ours, theirs)

    def test_tie_gradient_passes(self):
        x1, x2 = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([1.0, 1.5])
        M.margin_ranking_loss(
            x1, x2, torch.tensor([1.0, 1.0]), margin=0.5, reduction="sum"
        ).backward()
        self.assertEqual(x1.grad.tolist(), [-1.0, -1.0])  # u = 0.5 and u = 0: both pass

    @parameterized.expand([(r,) for r in REDUCTIONS])
    def test_broadcast_among_three(self, reduction):
        """Same number of dims, then size-1 dims broadcast among all three."""
        gen = torch.Generator().manual_seed(1)
        args = (
            torch.randn(3, 1, generator=gen, dtype=torch.float64),
            torch.randn(1, 4, generator=gen, dtype=torch.float64),
            torch.randn(1, 1, generator=gen, dtype=torch.float64).sign(),
        )
        ours = _run(M.margin_ranking_loss, args, (True, True, True), reduction=reduction)
        theirs = _run(F.margin_ranking_loss, args, (True, True, True), reduction=reduction)
        _assert_same(ours, theirs)
        self.assertEqual([g.shape for g in ours[1]], [(3, 1), (1, 4), (1, 1)])

    @parameterized.expand(
        [
            ("ndim", (3,), (3, 1), (3,)),
            ("target0d", (3,), (3,), ()),
            ("size", (3,), (4,), (3,)),
            ("target_size", (3,), (3,), (4,)),
        ]
    )
    def test_shape_errors(self, _name, s1, s2, st):
        args = (torch.ones(s1), torch.ones(s2), torch.ones(st))
        assert_same_exception(
            lambda: M.margin_ranking_loss(*args),
            lambda: F.margin_ranking_loss(*args),
            match_message=True,
        )

    @parameterized.expand(
        [
            ("ints", torch.int64, torch.int64, torch.int64),
            ("int_target", torch.float32, torch.float32, torch.int64),
            ("mixed_ints", torch.int32, torch.int64, torch.float32),
            ("half_pair", torch.float16, torch.bfloat16, torch.float32),
            ("bool_inputs", torch.bool, torch.bool, torch.float32),
            ("bool_input2", torch.float32, torch.bool, torch.float32),
            ("bool_target", torch.float32, torch.float32, torch.bool),
            ("complex", torch.complex64, torch.float32, torch.float32),
        ]
    )
    def test_dtypes(self, _name, d1, d2, dt):
        """Integer scores promote to float32 (by the margin); bool and complex fail as torch's."""
        vals = torch.tensor([3, -2, 0, 5])
        args = (vals.to(d1), (vals.flip(0) * 2).to(d2), torch.tensor([1, -1, 1, 1]).to(dt))
        for reduction in REDUCTIONS:
            theirs = assert_same_exception(
                lambda r=reduction: M.margin_ranking_loss(*args, margin=1.5, reduction=r),
                lambda r=reduction: F.margin_ranking_loss(*args, margin=1.5, reduction=r),
                match_message=True,
            )
            if theirs is None:
                ours = M.margin_ranking_loss(*args, margin=1.5, reduction=reduction)
                assert_close_to_torch(
                    ours, F.margin_ranking_loss(*args, margin=1.5, reduction=reduction)
                )

    @parameterized.expand(
        [("int", 2), ("tensor", torch.tensor([0.75])), ("str", "1"), ("none", None)]
    )
    def test_margin_types(self, _name, margin):
        args = (torch.randn(5), torch.randn(5), torch.ones(5))
        theirs = assert_same_exception(
            lambda: M.margin_ranking_loss(*args, margin=margin),
            lambda: F.margin_ranking_loss(*args, margin=margin),
            match_message=True,
        )
        if theirs is None:
            assert_close_to_torch(
                M.margin_ranking_loss(*args, margin=margin),
                F.margin_ranking_loss(*args, margin=margin),
            )

    @parameterized.expand([(n,) for n in SIZES])
    def test_retained_graph_backward_twice(self, reps):
        """The stashed gradients are used once; a second backward recomputes the same bits."""
        gen = torch.Generator().manual_seed(2)
        x1, x2 = (torch.randn(9 * reps, generator=gen, requires_grad=True) for _ in range(2))
        y = torch.randn(9 * reps, generator=gen).sign().requires_grad_()
        loss = M.margin_ranking_loss(x1, x2, y, margin=0.1)
        first = torch.autograd.grad(loss, (x1, x2, y), retain_graph=True)
        second = torch.autograd.grad(loss, (x1, x2, y))
        for a, b in zip(first, second, strict=True):
            self.assertTrue(torch.equal(a, b))

    @parameterized.expand([(r,) for r in REDUCTIONS])
    def test_double_backward_cross_terms(self, reduction):
        """d(dl/dx1)/dy = -M g: the second derivative through the label, as torch's."""
        gen = torch.Generator().manual_seed(3)
        base = [torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(3)]
        results = []
        for fn in (M.margin_ranking_loss, F.margin_ranking_loss):
            x1, x2, y = (t.clone().requires_grad_() for t in base)
            out = fn(x1, x2, y, margin=0.3, reduction=reduction)
            (g1,) = torch.autograd.grad(out.sum(), x1, create_graph=True)
            results.append(torch.autograd.grad(g1.sum(), (x2, y), allow_unused=True))
        for a, b, like in zip(*results, base[1:], strict=True):
            zero = torch.zeros_like(like)  # a missing gradient counts as zeros
            assert_close_to_torch(zero if a is None else a, zero if b is None else b)

    def test_module(self):
        x1, x2, y = torch.randn(4), torch.randn(4), torch.ones(4)
        ours = mylosses.MarginRankingLoss(margin=0.2, reduction="sum")(x1, x2, y)
        assert_close_to_torch(
            ours, torch.nn.MarginRankingLoss(margin=0.2, reduction="sum")(x1, x2, y)
        )


class TestHingeEmbedding(unittest.TestCase):
    @parameterized.expand(
        [(r, d, n) for r in REDUCTIONS for d in ("float32", "float64") for n in SIZES]
    )
    def test_labels_ties_and_nonfinite(self, reduction, dtype_name, reps):
        """Labels other than ±1 take both terms; ties x == margin (the clamp's gradient passes);
        infinities where torch's selection drops the infinite term (our masks would make
        0 * inf = NaN: the fused path must fall back); NaN inputs and labels."""
        dtype = getattr(torch, dtype_name)
        x = torch.tensor([0.5, 1.0, 1.0, 2.0, 0.3, 0.3, -INF, INF, NAN, 1.0, -INF], dtype=dtype)
        y = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 2.0, 1.0, -1.0, -1.0, NAN, -1.0], dtype=dtype)
        for keep in (slice(None), slice(0, 6), slice(6, 8)):  # with infinities, and without
            args = (x[keep].repeat(reps), y[keep].repeat(reps))
            for margin in (1.0, 0.0, -0.5):
                ours = _run(
                    M.hinge_embedding_loss, args, (True, False), reduction=reduction, margin=margin
                )
                theirs = _run(
                    F.hinge_embedding_loss, args, (True, False), reduction=reduction, margin=margin
                )
                _assert_same(ours, theirs)
                with torch.no_grad():  # evaluation takes the fused path without a gradient
                    assert_close_to_torch(
                        M.hinge_embedding_loss(*args, reduction=reduction, margin=margin),
                        F.hinge_embedding_loss(*args, reduction=reduction, margin=margin),
                    )

    @parameterized.expand([("float", torch.float32), ("int", torch.int64), ("bool", torch.bool)])
    def test_label_dtypes(self, _name, dtype):
        x = torch.tensor([0.2, 1.5, -0.3, 0.9], requires_grad=True)
        y = torch.tensor([1, -1, 0, 1]).to(dtype)
        ours = _run(M.hinge_embedding_loss, (x, y), (True, False), reduction="sum")
        theirs = _run(F.hinge_embedding_loss, (x, y), (True, False), reduction="sum")
        _assert_same(ours, theirs)

    def test_complex_label(self):
        x, y = torch.tensor([0.2, 1.5, -0.3]), torch.tensor([1, -1, 1j])
        assert_close_to_torch(M.hinge_embedding_loss(x, y), F.hinge_embedding_loss(x, y))

    def test_label_gets_no_gradient(self):
        x = torch.tensor([0.2, 1.5], requires_grad=True)
        y = torch.tensor([1.0, -1.0], requires_grad=True)
        M.hinge_embedding_loss(x, y).backward()
        self.assertIsNone(y.grad)
        self.assertIsNotNone(x.grad)
        out = M.hinge_embedding_loss(x.detach(), y)  # the label alone: no graph, as torch's
        self.assertFalse(out.requires_grad)
        self.assertFalse(F.hinge_embedding_loss(x.detach(), y).requires_grad)

    @parameterized.expand(
        [("input_small", (5,), (2, 5)), ("target_small", (2, 5), (5,)), ("outer", (3, 1), (4,))]
    )
    def test_label_broadcasts_both_ways(self, _name, xs, ys):
        gen = torch.Generator().manual_seed(4)
        x = torch.randn(xs, generator=gen, dtype=torch.float64)
        y = torch.randint(-1, 2, ys, generator=gen).double()
        for reduction in REDUCTIONS:
            ours = _run(M.hinge_embedding_loss, (x, y), (True, False), reduction=reduction)
            theirs = _run(F.hinge_embedding_loss, (x, y), (True, False), reduction=reduction)
            _assert_same(ours, theirs)

    @parameterized.expand(
        [
            ("int_sum", torch.int64, 2.5, "sum"),  # the margin truncated to 2
            ("int_none", torch.int32, -1.7, "none"),
            ("int_mean", torch.int64, 1.0, "mean"),  # torch.mean of integers raises
            ("uint8_negative_margin", torch.uint8, -1.0, "sum"),  # fill_ overflows
            ("bool", torch.bool, 1.0, "sum"),
            ("half_overflow", torch.float16, 1e5, "sum"),
            ("half_inf_margin", torch.float16, INF, "sum"),
            ("float_overflow", torch.float32, 1e39, "none"),
            ("complex", torch.complex64, 1.0, "mean"),
        ]
    )
    def test_input_dtypes_and_margin_conversion(self, _name, dtype, margin, reduction):
        x = torch.tensor([3, 0, 1, 5]).to(dtype)
        y = torch.tensor([-1, -1, 1, 0])
        theirs = assert_same_exception(
            lambda: M.hinge_embedding_loss(x, y, margin=margin, reduction=reduction),
            lambda: F.hinge_embedding_loss(x, y, margin=margin, reduction=reduction),
            match_message=True,
        )
        if theirs is None:
            ours = M.hinge_embedding_loss(x, y, margin=margin, reduction=reduction)
            self.assertEqual(
                ours.dtype, F.hinge_embedding_loss(x, y, margin=margin, reduction=reduction).dtype
            )
            assert_close_to_torch(
                ours, F.hinge_embedding_loss(x, y, margin=margin, reduction=reduction)
            )

    def test_one_element_margin_overflow_is_no_error(self):
        """torch's fill_ skips its conversion check on one element (the result is inf)."""
        x, y = torch.ones(1, dtype=torch.float16), -torch.ones(1, dtype=torch.float16)
        self.assertEqual(float(M.hinge_embedding_loss(x, y, margin=1e5)), INF)
        self.assertEqual(float(F.hinge_embedding_loss(x, y, margin=1e5)), INF)

    def test_result_has_input_dtype(self):
        x = torch.tensor([0.25, 2.0], dtype=torch.float16, requires_grad=True)
        y = torch.tensor([-1.0, 1.0], dtype=torch.float64)
        out = M.hinge_embedding_loss(x, y)
        self.assertEqual(out.dtype, torch.float16)
        out.backward()
        self.assertEqual(x.grad.dtype, torch.float16)

    @parameterized.expand([(n,) for n in SIZES])
    def test_retained_graph_backward_twice(self, reps):
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(9 * reps, generator=gen, requires_grad=True)
        y = torch.randint(-1, 2, (9 * reps,), generator=gen).float()
        loss = M.hinge_embedding_loss(x, y, margin=0.5)
        first = torch.autograd.grad(loss, x, retain_graph=True)[0]
        second = torch.autograd.grad(loss, x)[0]
        self.assertTrue(torch.equal(first, second))

    def test_fused_and_composed_paths_agree(self):
        gen = torch.Generator().manual_seed(6)
        x = torch.randn(3 * hinge_embedding.BLOCK + 5, generator=gen, dtype=torch.float64)
        y = torch.randint(-1, 3, x.shape, generator=gen).double()
        for reduction in (1, 2):
            fused, grad = hinge_embedding._fused(x, y, 0.7, reduction, True)
            assert_close_to_torch(fused, hinge_embedding._loss(x, y, 0.7, reduction))
            assert grad is not None
            composed = hinge_embedding._derivative(x, y, 0.7) / (x.numel() if reduction == 1 else 1)
            assert_close_to_torch(grad, composed)

    def test_module(self):
        x, y = torch.rand(4), torch.tensor([1.0, -1.0, -1.0, 1.0])
        ours = mylosses.HingeEmbeddingLoss(margin=0.5, reduction="sum")(x, y)
        assert_close_to_torch(ours, torch.nn.HingeEmbeddingLoss(margin=0.5, reduction="sum")(x, y))


if __name__ == "__main__":
    unittest.main()
