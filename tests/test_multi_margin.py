"""MultiMarginLoss and MultiLabelMarginLoss: what the generic tests cannot express.

- arguments torch accepts in odd forms (``p=2.0``, ``p=True``, a 0-d tensor margin) and the
  errors it raises (p, weight dim/size/dtype/requires_grad, margin type, target range and
  dtype), with torch's types and messages;
- exact ties at the margin (gradient 0, as torch's ``z > 0``), NaN scores (skipped by torch);
- duplicated labels and junk after the -1 terminator; the blocked walks (many rows, many
  pairs) and the dense path of transforms agree with torch;
- an empty batch: 'mean' is nan and 'sum' 0 (torch returns uninitialised memory);
- beyond torch: gradgradcheck in float64, and a planted second-order bug is caught by the
  harness through the spec's reference;
- a retained graph's second backward, and evaluation without an autograd node.
"""

from __future__ import annotations

import dataclasses
import unittest
from typing import Any

import torch
import torch.nn.functional as F
from parameterized import parameterized

import mylosses
import mylosses.functional as M
from compare.parity import run_case
from compare.registry import REGISTRY
from mylosses.losses import multi_margin as mm
from mylosses.losses import multilabel_margin as mlm
from tests._support import assert_close_to_torch

f64 = torch.float64


def _raises(fn: Any) -> BaseException | None:
    try:
        fn()
    except Exception as e:
        return e
    return None


def _labels(n: int, c: int, seed: int, most: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.full((n, c), -1, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(0, (most or c) + 1, (), generator=g))
        t[i, :k] = torch.randint(0, c, (k,), generator=g)
    return t


def _both(ours: Any, theirs: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    """Forward and input gradient of ours against torch's under one upstream gradient."""
    results = []
    for fn in (ours, theirs):
        xx = x.detach().clone().requires_grad_()
        out = fn(xx, *args, **kwargs)
        up = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7))
        (g,) = torch.autograd.grad(out, xx, up)
        results.append((out, g))
    (a, ga), (b, gb) = results
    assert_close_to_torch(a, b, "output")
    assert_close_to_torch(ga, gb, "grad input")


class TestMultiMarginArguments(unittest.TestCase):
    def setUp(self) -> None:
        self.x = torch.randn(4, 5, requires_grad=True)
        self.t = torch.tensor([0, 1, 4, 2])

    @parameterized.expand([(2.0,), (True,), (1,), (2,)])
    def test_p_forms_torch_accepts(self, p: Any) -> None:
        _both(M.multi_margin_loss, F.multi_margin_loss, self.x, self.t, p=p)

    def test_p_tensor(self) -> None:
        _both(M.multi_margin_loss, F.multi_margin_loss, self.x, self.t, p=torch.tensor(2))

    @parameterized.expand([(3,), (1.5,), (0,), ("1",)])
    def test_bad_p(self, p: Any) -> None:
        for fn in (M.multi_margin_loss, F.multi_margin_loss):
            with self.assertRaisesRegex(ValueError, "only p == 1 and p == 2 supported"):
                fn(self.x, self.t, p=p)
        with self.assertRaisesRegex(ValueError, "only p == 1 and p == 2 supported"):
            mylosses.MultiMarginLoss(p=p)

    def test_margin_forms(self) -> None:
        for margin in (torch.tensor(0.5, dtype=f64), 2, True, -1.0, 0.0):
            with self.subTest(margin=margin):
                _both(M.multi_margin_loss, F.multi_margin_loss, self.x, self.t, margin=margin)

    @parameterized.expand([("str", "a"), ("none", None), ("vector", torch.ones(1))])
    def test_bad_margin(self, _: str, margin: Any) -> None:
        ours = _raises(lambda: M.multi_margin_loss(self.x, self.t, margin=margin))
        theirs = _raises(lambda: F.multi_margin_loss(self.x, self.t, margin=margin))
        self.assertIs(type(ours), type(theirs))
        self.assertEqual(str(ours), str(theirs))

    @parameterized.expand(
        [
            ("2d", torch.ones(1, 5)),
            ("0d", torch.tensor(1.0)),
            ("size", torch.ones(4)),
            ("dtype", torch.ones(5, dtype=f64)),
            ("int", torch.ones(5, dtype=torch.long)),
            ("requires_grad", torch.ones(5, requires_grad=True)),
        ]
    )
    def test_bad_weight(self, _: str, weight: torch.Tensor) -> None:
        ours = _raises(lambda: M.multi_margin_loss(self.x, self.t, weight=weight))
        theirs = _raises(lambda: F.multi_margin_loss(self.x, self.t, weight=weight))
        self.assertIsNotNone(theirs)
        self.assertIs(type(ours), type(theirs))
        self.assertEqual(str(ours), str(theirs))

    def test_weight_requiring_grad_without_grad_mode(self) -> None:
        w = torch.rand(5, requires_grad=True)
        with torch.no_grad():
            assert_close_to_torch(
                M.multi_margin_loss(self.x, self.t, weight=w),
                F.multi_margin_loss(self.x, self.t, weight=w),
            )

    @parameterized.expand(
        [
            ("high", torch.tensor([0, 1, 5, 2])),
            ("negative", torch.tensor([0, -1, 4, 2])),
            ("int32", torch.tensor([0, 1, 4, 2], dtype=torch.int32)),
            ("float", torch.tensor([0.0, 1.0, 4.0, 2.0])),
            ("2d", torch.tensor([[0], [1], [4], [2]])),
            ("short", torch.tensor([0, 1, 4])),
        ]
    )
    def test_bad_target(self, _: str, target: torch.Tensor) -> None:
        for weight in (None, torch.ones(5)):
            ours = _raises(lambda w=weight: M.multi_margin_loss(self.x, target, weight=w))
            theirs = _raises(lambda w=weight: F.multi_margin_loss(self.x, target, weight=w))
            self.assertIsNotNone(theirs)
            self.assertIs(type(ours), type(theirs))
            self.assertEqual(str(ours), str(theirs))

    @parameterized.expand([("half", torch.float16), ("long", torch.long)])
    def test_bad_input_dtype(self, _: str, dtype: torch.dtype) -> None:
        x = self.x.detach().to(dtype)
        ours = _raises(lambda: M.multi_margin_loss(x, self.t))
        theirs = _raises(lambda: F.multi_margin_loss(x, self.t))
        self.assertIs(type(ours), type(theirs))
        self.assertEqual(str(ours), str(theirs))


class TestMultiMarginValues(unittest.TestCase):
    @parameterized.expand([(1,), (2,)])
    def test_tie_at_the_margin_has_gradient_zero(self, p: int) -> None:
        # target 0, margin 1: z = 1 - 1 + 0 = 0 exactly for class 1
        x = torch.tensor([[1.0, 0.0, 0.5], [2.0, 1.0, 1.5]], dtype=f64)
        t = torch.tensor([0, 0])
        _both(M.multi_margin_loss, F.multi_margin_loss, x, t, p=p, reduction="sum")
        xx = x.clone().requires_grad_()
        M.multi_margin_loss(xx, t, p=p, reduction="sum").backward()
        self.assertEqual(float(xx.grad[0, 1]), 0.0)

    @parameterized.expand([(1,), (2,)])
    def test_nan_and_inf_as_torch(self, p: int) -> None:
        nan, inf = float("nan"), float("inf")
        x = torch.tensor(
            [[1.0, 0.0, nan], [inf, 0.0, 1.0], [1.0, inf, 0.0], [inf, inf, 0.0], [nan, 1, 2]]
        )
        _both(
            M.multi_margin_loss,
            F.multi_margin_loss,
            x,
            torch.zeros(5, dtype=torch.long),
            p=p,
            reduction="none",
        )

    @parameterized.expand([("none",), ("mean",), ("sum",)])
    def test_blocks_and_weight(self, reduction: str) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(300, 700, generator=g)  # several row blocks
        t = torch.randint(0, 700, (300,), generator=g)
        w = torch.rand(700, generator=g)
        for p in (1, 2):
            for weight in (None, w):
                _both(
                    M.multi_margin_loss,
                    F.multi_margin_loss,
                    x,
                    t,
                    p=p,
                    weight=weight,
                    reduction=reduction,
                )

    def test_empty_batch(self) -> None:
        x = torch.randn(0, 4, requires_grad=True)
        t = torch.zeros(0, dtype=torch.long)
        self.assertTrue(torch.isnan(M.multi_margin_loss(x, t)))
        self.assertEqual(float(M.multi_margin_loss(x, t, reduction="sum").detach()), 0.0)
        out = M.multi_margin_loss(x, t, reduction="none")
        self.assertEqual(out.shape, (0,))
        (g,) = torch.autograd.grad(out.sum(), x)
        self.assertEqual(g.shape, (0, 4))

    def test_no_autograd_node_in_evaluation(self) -> None:
        x, t = torch.randn(3, 4), torch.tensor([0, 1, 3])
        self.assertIsNone(M.multi_margin_loss(x, t).grad_fn)
        with torch.no_grad():
            self.assertIsNone(M.multi_margin_loss(x.requires_grad_(), t).grad_fn)


class TestMultiMarginShortPath(unittest.TestCase):
    """Small plain calls (no weight, 'mean'/'sum', int p, float margin) take a cached plan."""

    @parameterized.expand([(p, r) for p in (1, 2) for r in ("mean", "sum")])
    def test_short_path_is_taken_and_agrees(self, p: int, reduction: str) -> None:
        g = torch.Generator().manual_seed(3)
        for dtype in (torch.float32, f64):
            x = torch.randn(8, 64, generator=g, dtype=dtype)
            t = torch.randint(0, 64, (8,), generator=g)
            out = M.multi_margin_loss(x.clone().requires_grad_(), t, p=p, reduction=reduction)
            self.assertIs(out.grad_fn._forward_cls, mm._MMShort)
            for margin in (1.0, 0.0, -0.5, 2.5):
                _both(
                    M.multi_margin_loss,
                    F.multi_margin_loss,
                    x,
                    t,
                    p=p,
                    margin=margin,
                    reduction=reduction,
                )

    @parameterized.expand([(1,), (2,)])
    def test_nan_and_inf_fall_back_to_the_kernels_semantics(self, p: int) -> None:
        nan, inf = float("nan"), float("inf")
        x = torch.tensor(
            [[1.0, 0.0, nan], [inf, 0.0, 1.0], [1.0, inf, 0.0], [-inf, inf, 0.0], [nan, 1, 2]]
        )
        t = torch.zeros(5, dtype=torch.long)
        for reduction in ("mean", "sum"):
            _both(M.multi_margin_loss, F.multi_margin_loss, x, t, p=p, reduction=reduction)
            _both(M.multi_margin_loss, F.multi_margin_loss, x[:1], t[:1], p=p, reduction=reduction)

    def test_cached_plan_still_checks_the_target(self) -> None:
        x = torch.randn(4, 5, requires_grad=True)
        M.multi_margin_loss(x, torch.tensor([0, 1, 4, 2]))  # the plan of this signature
        for target in (
            torch.tensor([0, 1, 5, 2]),
            torch.tensor([0, -1, 4, 2]),
            torch.tensor([0, 1, 4, 2], dtype=torch.int32),
        ):
            ours = _raises(lambda t=target: M.multi_margin_loss(x, t))
            theirs = _raises(lambda t=target: F.multi_margin_loss(x, t))
            self.assertIsNotNone(theirs)
            self.assertIs(type(ours), type(theirs))
            self.assertEqual(str(ours), str(theirs))

    def test_retained_graph_and_upstream(self) -> None:
        x = torch.randn(6, 7, requires_grad=True)
        t = torch.tensor([0, 6, 3, 3, 1, 2])
        out = M.multi_margin_loss(x, t, p=2)
        (first,) = torch.autograd.grad(out, x, retain_graph=True)
        kept = first.clone()
        first.zero_()
        (second,) = torch.autograd.grad(out, x, torch.tensor(3.0))
        self.assertTrue(torch.equal(second, kept * 3.0))
        xx = x.detach().clone().requires_grad_()
        (theirs,) = torch.autograd.grad(F.multi_margin_loss(xx, t, p=2), xx, torch.tensor(3.0))
        assert_close_to_torch(second, theirs)


class TestMultiLabelMargin(unittest.TestCase):
    def test_duplicates_and_junk_after_terminator(self) -> None:
        x = torch.randn(3, 4, dtype=f64)
        for t in (
            torch.tensor([[1, 1, -1, 0], [3, 3, 3, 3], [-1, 2, 2, 2]]),
            torch.tensor([[0, -1, 3, 3], [2, 1, -1, -1], [1, -1, -1, 0]]),
        ):
            for reduction in ("none", "mean", "sum"):
                _both(M.multilabel_margin_loss, F.multilabel_margin_loss, x, t, reduction=reduction)

    @parameterized.expand(
        [
            ("high", torch.tensor([[4, 0, -1, 1]] * 3)),
            ("high_after_terminator", torch.tensor([[0, -1, 5, 1]] * 3)),
            ("below_minus_one", torch.tensor([[0, -1, -2, 1]] * 3)),
            ("int32", torch.tensor([[0, -1, 1, 1]] * 3, dtype=torch.int32)),
            ("shape", torch.tensor([[0, -1, 1, 1]] * 2)),
            ("1d_for_2d", torch.tensor([0, -1, 1, 1])),
        ]
    )
    def test_bad_target(self, _: str, target: torch.Tensor) -> None:
        x = torch.randn(3, 4, requires_grad=True)
        ours = _raises(lambda: M.multilabel_margin_loss(x, target))
        theirs = _raises(lambda: F.multilabel_margin_loss(x, target))
        self.assertIsNotNone(theirs)
        self.assertIs(type(ours), type(theirs))
        self.assertEqual(str(ours), str(theirs))

    def test_ties_nan_inf(self) -> None:
        nan, inf = float("nan"), float("inf")
        x = torch.tensor([[0.5, -0.5, nan, 3.0], [inf, 0.0, 1.0, -inf], [-inf, inf, 0, 1]])
        t = torch.tensor([[0, -1, 0, 0], [0, 3, -1, 0], [0, 1, -1, 0]])
        _both(M.multilabel_margin_loss, F.multilabel_margin_loss, x, t, reduction="none")

    @parameterized.expand([("none",), ("mean",), ("sum",)])
    def test_many_pairs_blocked_and_dense(self, reduction: str) -> None:
        x = torch.randn(60, 300, generator=torch.Generator().manual_seed(1))
        t = _labels(60, 300, seed=2)  # thousands of pairs: several blocks
        _both(M.multilabel_margin_loss, F.multilabel_margin_loss, x, t, reduction=reduction)
        xd, td = x[:6, :40].contiguous(), _labels(6, 40, seed=3)
        red = {"none": 0, "mean": 1, "sum": 2}[reduction]
        shape = torch.Size([6]) if reduction == "none" else torch.Size()
        dense = mlm._dense(xd.double(), td, red, shape, True)
        walk = mlm._walk(xd.double(), td, red, shape, True)
        assert_close_to_torch(dense[0], walk[0], "loss, dense vs walk")
        assert_close_to_torch(dense[1], walk[1], "grad, dense vs walk")

    @parameterized.expand([("mean", 8, 6), ("sum", 8, 6), ("mean", 300, 120), ("sum", 300, 120)])
    def test_nonfinite_short_and_walk(self, reduction: str, n: int, c: int) -> None:
        """NaN and +-inf scores on the short path (few rows) and the walk (many): torch skips a
        NaN z (NaN score, inf - inf), also at listed classes."""
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, c, generator=g)
        flat = x.view(-1)
        spots = torch.randperm(n * c, generator=g)[: max(6, n * c // 50)]
        vals = torch.tensor([float("nan"), float("inf"), -float("inf")])
        flat[spots] = vals[torch.arange(spots.numel()) % 3]
        t = _labels(n, c, seed=n + 1, most=4)
        _both(M.multilabel_margin_loss, F.multilabel_margin_loss, x, t, reduction=reduction)

    def test_short_path_agrees_with_walk(self) -> None:
        x = torch.randn(8, 64, dtype=f64, generator=torch.Generator().manual_seed(3))
        t = _labels(8, 64, seed=6, most=8)
        t[2] = -1  # a row listing nothing
        t[3, 5] = -1  # junk after the terminator
        t[3, 6:9] = torch.tensor([1, 2, 3])
        for red in (1, 2):
            plan = mlm._short_plan(x.requires_grad_(), t, red)
            assert plan is not None
            short = mlm._short(x.detach(), t, plan)
            walk = mlm._walk(x.detach(), t, red, torch.Size(), True)
            assert_close_to_torch(short[0], walk[0], "loss, short vs walk")
            assert_close_to_torch(short[1], walk[1], "grad, short vs walk")

    def test_empty_batch(self) -> None:
        x = torch.randn(0, 4, requires_grad=True)
        t = torch.zeros(0, 4, dtype=torch.long)
        self.assertTrue(torch.isnan(M.multilabel_margin_loss(x, t)))
        self.assertEqual(float(M.multilabel_margin_loss(x, t, reduction="sum")), 0.0)

    def test_retained_graph_second_backward(self) -> None:
        x = torch.randn(5, 6, requires_grad=True)
        t = _labels(5, 6, seed=4)
        out = M.multilabel_margin_loss(x, t)
        (a,) = torch.autograd.grad(out, x, retain_graph=True)
        a.mul_(3)  # the stash was handed out: the second backward must recompute
        (b,) = torch.autograd.grad(out, x)
        assert_close_to_torch(b, a / 3, "second backward")


class TestBeyondTorch(unittest.TestCase):
    @parameterized.expand([(p, r) for p in (1, 2) for r in ("none", "mean", "sum")])
    def test_multi_margin_gradgradcheck(self, p: int, reduction: str) -> None:
        g = torch.Generator().manual_seed(p)
        x = torch.randn(5, 6, dtype=f64, generator=g).requires_grad_()
        t = torch.randint(0, 6, (5,), generator=g)
        w = torch.rand(6, dtype=f64, generator=g)
        for weight in (None, w):
            fn = lambda a, w=weight: M.multi_margin_loss(  # noqa: E731
                a, t, p=p, margin=0.7, weight=w, reduction=reduction
            )
            self.assertTrue(torch.autograd.gradcheck(fn, (x,)))
            self.assertTrue(torch.autograd.gradgradcheck(fn, (x,)))

    def test_multi_margin_second_derivative_is_the_references(self) -> None:
        spec = REGISTRY["MultiMarginLoss"]
        x = torch.randn(4, 5, dtype=f64, requires_grad=True)
        t = torch.tensor([0, 1, 4, 2])
        for p in (1, 2):
            hs = []
            for fn in (M.multi_margin_loss, spec.reference):
                assert fn is not None
                (g,) = torch.autograd.grad(fn(x, t, p=p), x, create_graph=True)
                if g.requires_grad:
                    (h,) = torch.autograd.grad(g.pow(2).sum(), x, allow_unused=True)
                else:  # the gradient does not depend on x: a second derivative of 0
                    h = None
                hs.append(torch.zeros_like(x) if h is None else h)
            assert_close_to_torch(hs[0], hs[1], f"second order, p={p}")
            if p == 2:
                self.assertGreater(float(hs[0].abs().sum()), 0.0)

    def test_multilabel_gradgradcheck(self) -> None:
        x = torch.randn(5, 6, dtype=f64, requires_grad=True)
        t = _labels(5, 6, seed=5)
        for reduction in ("none", "mean", "sum"):
            fn = lambda a, r=reduction: M.multilabel_margin_loss(a, t, reduction=r)  # noqa: E731
            self.assertTrue(torch.autograd.gradcheck(fn, (x,)))
            self.assertTrue(torch.autograd.gradgradcheck(fn, (x,)))

    def test_planted_second_order_bug_in_backward_is_caught(self) -> None:
        """p = 2: the gradient's value kept, its derivative scaled by 1.001."""
        spec = REGISTRY["MultiMarginLoss"]
        x = torch.randn(4, 5, dtype=f64, requires_grad=True)
        t = torch.tensor([0, 1, 4, 2])
        # the general Function and the short path's (small plain calls)
        fn_classes = {M.multi_margin_loss(x, t, p=2).grad_fn._forward_cls, mm._MultiMargin}
        self.assertEqual(len(fn_classes), 2)
        case = next(
            c
            for seed in range(400)
            if (c := spec.make_case(seed, "cpu")).args[0].requires_grad
            and c.args[0].dtype == f64
            and c.kwargs.get("p") == 2
            and "invalid" not in c.label
            and "nonfinite" not in c.label
            and c.args[0].numel() > 1
        )
        case = dataclasses.replace(case, double_backward=True)
        self.assertTrue(run_case(spec, case).ok)
        originals = {cls: cls.__dict__["backward"] for cls in fn_classes}

        def planted(original: Any) -> Any:
            def wrong(ctx: Any, *grads: Any) -> Any:
                out = original.__func__(ctx, *grads)
                first = out[0] + 1e-3 * (out[0] - out[0].detach())
                return (first, *out[1:])

            return staticmethod(wrong)

        for cls, original in originals.items():
            cls.backward = planted(original)
        try:
            failures = run_case(spec, case).failures
        finally:
            for cls, original in originals.items():
                cls.backward = original
        self.assertTrue(any("grad-grad" in f for f in failures), failures)
        self.assertFalse(any(" grad input" in f for f in failures), failures)


if __name__ == "__main__":
    unittest.main()
