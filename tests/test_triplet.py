"""TripletMarginLoss and TripletMarginWithDistanceLoss: what the generic tests cannot express.

gradcheck and gradgradcheck for every p (the fractional, negative and infinite ones too), the
subgradient conventions at the singular points (zero distances, ties at the margin, ties of the
swap, tied maxima of the inf-norm) against torch to second order, p = 0's missing gradient,
torch's errors, and the paths of the fused pass (stashed, retained graph, 'none').
"""

from __future__ import annotations

import math
import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

import mylosses
import mylosses.functional as M
from compare.registry import REGISTRY  # noqa: F401  (imports the specs first)
from compare.specs.triplet import cosine_distance, linf_distance
from tests._support import assert_close_to_torch

NORMS = (2.0, 1.0, 3.0, 1.5, 0.5, -1.0, 2.5, math.inf, -math.inf)
f64 = torch.float64


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


def _first_and_second(fn, tensors, **kwargs):
    """The loss, its gradients under a fixed upstream, and the gradients of <grads, v>."""
    leaves = _leaves(*tensors)
    out = fn(*leaves, **kwargs)
    gen = torch.Generator().manual_seed(1)
    up = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, up, create_graph=True, allow_unused=True)
    dots = [(g * torch.randn(g.shape, generator=gen, dtype=g.dtype)).sum() for g in grads]
    total = sum(dots[1:], dots[0])
    if total.requires_grad:
        second = torch.autograd.grad(total, leaves, allow_unused=True)
    else:
        second = (None,) * len(leaves)
    return out, grads, second


def _assert_same(test, ours, theirs):
    (lo, go, so), (lt, gt, st) = ours, theirs
    assert_close_to_torch(lo, lt, "loss")
    for i, (a, b) in enumerate(zip(go, gt, strict=True)):
        assert_close_to_torch(a, b, f"grad {i}")
    for i, (a, b) in enumerate(zip(so, st, strict=True)):
        zeros = torch.zeros_like(lo.new_zeros(()))
        a = zeros if a is None else a
        b = zeros if b is None else b
        if a.shape != b.shape:
            a, b = torch.broadcast_tensors(a, b)
        assert_close_to_torch(a, b, f"grad-grad {i}")


class TestGradcheck(unittest.TestCase):
    @parameterized.expand(
        [(p, swap, red) for p in NORMS for swap in (False, True) for red in ("none", "sum")]
    )
    def test_gradcheck_and_gradgradcheck(self, p: float, swap: bool, reduction: str) -> None:
        gen = torch.Generator().manual_seed(3)
        tensors = [torch.randn(4, 5, generator=gen, dtype=f64) for _ in range(3)]

        def fn(a, pos, n):
            return M.triplet_margin_loss(a, pos, n, margin=2.0, p=p, swap=swap, reduction=reduction)

        leaves = _leaves(*tensors)
        self.assertTrue(torch.autograd.gradcheck(fn, leaves))
        self.assertTrue(torch.autograd.gradgradcheck(fn, leaves))

    @parameterized.expand([("cosine",), ("linf",), ("default",)])
    def test_with_distance_gradgradcheck(self, which: str) -> None:
        distance = {"cosine": cosine_distance, "linf": linf_distance, "default": None}[which]
        gen = torch.Generator().manual_seed(4)
        leaves = _leaves(*(torch.randn(3, 4, generator=gen, dtype=f64) for _ in range(3)))

        def fn(a, p, n):
            return M.triplet_margin_with_distance_loss(
                a, p, n, distance_function=distance, margin=1.5, swap=True
            )

        self.assertTrue(torch.autograd.gradcheck(fn, leaves))
        self.assertTrue(torch.autograd.gradgradcheck(fn, leaves))


class TestSingularPoints(unittest.TestCase):
    """torch's values at the points where a derivative is undefined, to second order."""

    @parameterized.expand([(p,) for p in NORMS])
    def test_zero_distance(self, p: float) -> None:
        # a == p with eps = 0: d(a, p) = 0 exactly (and one zero component in another row)
        a = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 3.0]], dtype=f64)
        pos = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, 2.0]], dtype=f64)
        neg = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=f64)
        kw = dict(p=p, eps=0.0, margin=3.0, reduction="none")
        ours = _first_and_second(M.triplet_margin_loss, (a, pos, neg), **kw)
        theirs = _first_and_second(F.triplet_margin_loss, (a, pos, neg), **kw)
        _assert_same(self, ours, theirs)

    @parameterized.expand([(p,) for p in (1.0, 2.0, math.inf)])
    def test_ties(self, p: float) -> None:
        # the hinge's argument exactly 0; d(a, n) == d(p, n) under swap; tied inf-norm maxima
        a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=f64)
        pos = torch.tensor([[1.0, 0.0], [4.0, 0.0], [1.0, -1.0]], dtype=f64)
        neg = torch.tensor([[2.0, 0.0], [2.0, 0.0], [3.0, 3.0]], dtype=f64)
        for swap in (False, True):
            kw = dict(p=p, eps=0.0, margin=1.0, swap=swap, reduction="sum")
            ours = _first_and_second(M.triplet_margin_loss, (a, pos, neg), **kw)
            theirs = _first_and_second(F.triplet_margin_loss, (a, pos, neg), **kw)
            _assert_same(self, ours, theirs)

    def test_p0_has_no_gradient(self) -> None:
        leaves = _leaves(*(torch.randn(3, 4) for _ in range(3)))
        out = M.triplet_margin_loss(*leaves, p=0.0)
        self.assertEqual(torch.autograd.grad(out, leaves, allow_unused=True), (None,) * 3)


class TestPaths(unittest.TestCase):
    """The fused pass: forward's stashed gradients, a retained graph's second backward, and
    'none' (gradients in backward) all agree with torch."""

    @parameterized.expand(
        [(p, swap, red) for p in (1.0, 2.0) for swap in (False, True) for red in ("mean", "none")]
    )
    def test_fused_paths(self, p: float, swap: bool, reduction: str) -> None:
        gen = torch.Generator().manual_seed(5)
        tensors = [torch.randn(64, 33, generator=gen) for _ in range(3)]
        ours, theirs = _leaves(*tensors), _leaves(*tensors)
        kw = dict(p=p, swap=swap, reduction=reduction, margin=1.5)
        lo, lt = M.triplet_margin_loss(*ours, **kw), F.triplet_margin_loss(*theirs, **kw)
        up = torch.randn(lt.shape, generator=gen)
        for _ in range(2):  # the second one through the retained graph
            go = torch.autograd.grad(lo, ours, up, retain_graph=True)
            gt = torch.autograd.grad(lt, theirs, up, retain_graph=True)
            for a, b in zip(go, gt, strict=True):
                assert_close_to_torch(a, b, "grad")

    def test_some_inputs(self) -> None:
        gen = torch.Generator().manual_seed(6)
        a, p, n = (torch.randn(8, 16, generator=gen) for _ in range(3))
        p.requires_grad_()
        out = M.triplet_margin_loss(a, p, n, swap=True)
        (gp,) = torch.autograd.grad(out, [p])
        p2 = p.detach().clone().requires_grad_()
        (gt,) = torch.autograd.grad(F.triplet_margin_loss(a, p2, n, swap=True), [p2])
        assert_close_to_torch(gp, gt, "grad positive")

    def test_module_default_distance_is_fused(self) -> None:
        leaves = _leaves(*(torch.randn(4, 5) for _ in range(3)))
        out = mylosses.TripletMarginWithDistanceLoss()(*leaves)
        self.assertEqual(type(out.grad_fn).__name__, "_TripletShortBackward")
        out = mylosses.TripletMarginWithDistanceLoss(swap=True)(*leaves)
        self.assertEqual(type(out.grad_fn).__name__, "_TripletMarginBackward")
        module = torch.nn.PairwiseDistance(p=1.0, eps=0.0)
        out = mylosses.TripletMarginWithDistanceLoss(distance_function=module)(*leaves)
        theirs = torch.nn.TripletMarginWithDistanceLoss(distance_function=module)(*leaves)
        assert_close_to_torch(out, theirs)


def _short_inputs(shape: tuple, dtype: torch.dtype, eps: float) -> list[torch.Tensor]:
    """Random triplets with a zero distance (a - p = -eps exactly) in the first row, an exact
    tie at the margin (z = 0) in the second where there are rows enough."""
    gen = torch.Generator().manual_seed(7)
    a, p, n = (torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3))
    rows = a.view(-1, shape[-1])
    prow, nrow = p.view(-1, shape[-1]), n.view(-1, shape[-1])
    prow[0] = rows[0] + eps
    if rows.shape[0] > 1:  # d(a, p) = 0, d(a, n) = 1 = margin (eps = 0: exact)
        prow[1], nrow[1] = rows[1], rows[1]
        nrow[1, 0] += 1.0
    return [a, p, n]


class TestShortPath(unittest.TestCase):
    """The short path of small calls (p = 2, no swap, 'mean'/'sum'): taken where it should be,
    torch's values and gradients under every upstream, to second order, through a retained
    graph and for some inputs only."""

    def test_taken(self) -> None:
        leaves = _leaves(*(torch.randn(8, 64) for _ in range(3)))
        for out in (
            M.triplet_margin_loss(*leaves),
            M.triplet_margin_loss(*leaves, p=2.0, margin=0.5, reduction="sum"),
            M.triplet_margin_with_distance_loss(*leaves),
            mylosses.TripletMarginWithDistanceLoss()(*leaves),
        ):
            self.assertEqual(type(out.grad_fn).__name__, "_TripletShortBackward")
        for kwargs in ({"swap": True}, {"p": 1}, {"reduction": "none"}, {"margin": 1}):
            out = M.triplet_margin_loss(*leaves, **kwargs)
            self.assertNotEqual(type(out.grad_fn).__name__, "_TripletShortBackward", kwargs)

    @parameterized.expand(
        [
            (shape, dtype, red, eps)
            for shape in ((8, 64), (5,), (3, 2, 4))
            for dtype in (torch.float32, f64)
            for red in ("mean", "sum")
            for eps in (0.0, 1e-6)
        ]
    )
    def test_against_torch(self, shape: tuple, dtype: torch.dtype, red: str, eps: float) -> None:
        tensors = _short_inputs(shape, dtype, eps)
        kw = dict(eps=eps, margin=1.0, reduction=red)
        ours = _first_and_second(M.triplet_margin_loss, tensors, **kw)
        theirs = _first_and_second(F.triplet_margin_loss, tensors, **kw)
        _assert_same(self, ours, theirs)
        for up in (1.0, -2.5):
            lo, lt = _leaves(*tensors), _leaves(*tensors)
            out = M.triplet_margin_loss(*lo, **kw)
            ref = F.triplet_margin_loss(*lt, **kw)
            self.assertEqual(type(out.grad_fn).__name__, "_TripletShortBackward")
            assert_close_to_torch(out, ref, "loss")
            for i in range(2):  # the second one through the retained graph
                go = torch.autograd.grad(out, lo, torch.tensor(up, dtype=dtype), retain_graph=True)
                gt = torch.autograd.grad(ref, lt, torch.tensor(up, dtype=dtype), retain_graph=True)
                for j, (a, b) in enumerate(zip(go, gt, strict=True)):
                    assert_close_to_torch(a, b, f"upstream {up}, backward {i}, grad {j}")

    @parameterized.expand([(i,) for i in range(3)])
    def test_one_input_requires_grad(self, which: int) -> None:
        tensors = _short_inputs((6, 7), torch.float32, 1e-6)
        leaves = [t.clone().requires_grad_(i == which) for i, t in enumerate(tensors)]
        (ours,) = torch.autograd.grad(M.triplet_margin_loss(*leaves), [leaves[which]])
        theirs_leaves = [t.clone().requires_grad_(i == which) for i, t in enumerate(tensors)]
        out = F.triplet_margin_loss(*theirs_leaves)
        (theirs,) = torch.autograd.grad(out, [theirs_leaves[which]])
        assert_close_to_torch(ours, theirs, "grad")

    def test_nonfinite(self) -> None:
        tensors = _short_inputs((4, 3), f64, 1e-6)
        tensors[0][2, 1] = math.nan
        tensors[1][3, 0] = math.inf
        tensors[2][3, 2] = math.inf
        ours = _first_and_second(M.triplet_margin_loss, tensors, reduction="sum")
        theirs = _first_and_second(F.triplet_margin_loss, tensors, reduction="sum")
        _assert_same(self, ours, theirs)
        lo, lt = _leaves(*tensors), _leaves(*tensors)  # and the gradients forward made
        go = torch.autograd.grad(M.triplet_margin_loss(*lo, reduction="sum"), lo)
        gt = torch.autograd.grad(F.triplet_margin_loss(*lt, reduction="sum"), lt)
        for j, (a, b) in enumerate(zip(go, gt, strict=True)):
            assert_close_to_torch(a, b, f"grad {j}")


class TestErrors(unittest.TestCase):
    def _same_error(self, ours, theirs) -> None:
        with self.assertRaises(Exception) as t:
            theirs()
        with self.assertRaises(type(t.exception)) as o:
            ours()
        self.assertEqual(str(o.exception), str(t.exception))

    @parameterized.expand(
        [
            ("ndim", {}, [(4, 5), (5,), (4, 5)]),
            ("nobroadcast", {}, [(4, 5), (3, 5), (4, 5)]),
            ("empty_inf", {"p": math.inf}, [(3, 0), (3, 0), (3, 0)]),
            ("empty_neg", {"p": -1.0}, [(0,), (0,), (0,)]),
            ("margin", {"margin": 0.0}, [(4, 5)] * 3),
            ("swap", {"swap": 1}, [(4, 5)] * 3),
            ("p_type", {"p": "x"}, [(4, 5)] * 3),
            ("reduction", {"reduction": "avg"}, [(4, 5)] * 3),
        ]
    )
    def test_triplet_errors(self, _name: str, kwargs: dict, shapes: list) -> None:
        tensors = [torch.randn(s) for s in shapes]
        self._same_error(
            lambda: M.triplet_margin_loss(*tensors, **kwargs),
            lambda: F.triplet_margin_loss(*tensors, **kwargs),
        )

    def test_bool(self) -> None:
        a = torch.randn(3, 4)
        b = a > 0
        self._same_error(
            lambda: M.triplet_margin_loss(a, b, a), lambda: F.triplet_margin_loss(a, b, a)
        )

    @parameterized.expand([({"margin": -1.0},), ({"reduction": "elementwise_mean"},)])
    def test_with_distance_errors(self, kwargs: dict) -> None:
        tensors = [torch.randn(3, 4) for _ in range(3)]
        self._same_error(
            lambda: M.triplet_margin_with_distance_loss(*tensors, **kwargs),
            lambda: F.triplet_margin_with_distance_loss(*tensors, **kwargs),
        )
        with self.assertRaises(ValueError):
            mylosses.TripletMarginWithDistanceLoss(margin=0.0)


if __name__ == "__main__":
    unittest.main()
