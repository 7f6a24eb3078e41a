"""BCELoss and BCEWithLogitsLoss: the corners the generic tests cannot express.

- input and target of different shapes (a ValueError in both, never drawn by the generator);
- a weight or pos_weight requiring grad (torch raises while grad mode is on, not under no_grad);
- BCE's range checks (input and target, NaN included) and their messages;
- BCE at probabilities of exactly 0 and 1: clamped forward, unclamped (huge, infinite) first
  and second derivatives, as torch's;
- BCEWithLogits at logits of ±1e4 and with a pos_weight broadcast over several layouts, in
  blocks (a large input) and in one piece;
- a second backward through a retained graph gives the first one's bits.
"""

from __future__ import annotations

import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

import mylosses.functional as M
from compare.parity import assert_same_exception
from compare.tolerances import compare_tensors
from tests._support import assert_close_to_torch

f64 = torch.float64


def _grads(fn, x, t, create_graph=False, **kw):
    x = x.clone().requires_grad_()
    t = t.clone().requires_grad_()
    out = fn(x, t, **kw)
    up = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view(out.shape)
    g = torch.autograd.grad(out, (x, t), up, create_graph=create_graph)
    return out, g, (x, t)


class TestErrors(unittest.TestCase):
    @parameterized.expand([("bce",), ("logits",)])
    def test_size_mismatch(self, which: str) -> None:
        ours, theirs = (
            (M.binary_cross_entropy, F.binary_cross_entropy)
            if which == "bce"
            else (M.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits)
        )
        x, t = torch.rand(3, 1), torch.rand(3)
        err = assert_same_exception(lambda: ours(x, t), lambda: theirs(x, t), match_message=True)
        self.assertIsInstance(err, ValueError)

    @parameterized.expand([("weight",), ("pos_weight",)])
    def test_weight_requiring_grad(self, name: str) -> None:
        x, t = torch.randn(4, 3), torch.rand(4, 3)
        w = torch.rand(3, requires_grad=True)
        kw = {name: w}
        err = assert_same_exception(
            lambda: M.binary_cross_entropy_with_logits(x, t, **kw),
            lambda: F.binary_cross_entropy_with_logits(x, t, **kw),
            match_message=True,
        )
        self.assertIsInstance(err, RuntimeError)
        with torch.no_grad():
            assert_close_to_torch(
                M.binary_cross_entropy_with_logits(x, t, **kw),
                F.binary_cross_entropy_with_logits(x, t, **kw),
            )
        if name == "weight":
            p = torch.rand(4, 3)
            err = assert_same_exception(
                lambda: M.binary_cross_entropy(p, t, weight=w),
                lambda: F.binary_cross_entropy(p, t, weight=w),
                match_message=True,
            )
            self.assertIsInstance(err, RuntimeError)

    @parameterized.expand(
        [
            ("input_high", 1.5, 0.5),
            ("input_low", -0.1, 0.5),
            ("input_nan", float("nan"), 0.5),
            ("target_high", 0.5, 1.5),
            ("target_nan", 0.5, float("nan")),
        ]
    )
    def test_range(self, _: str, xv: float, tv: float) -> None:
        for n in (5, 300_000):  # one piece, and blocks
            x, t = torch.full((n,), 0.5), torch.full((n,), 0.5)
            x[n // 2], t[n // 2] = xv, tv
            err = assert_same_exception(
                lambda x=x, t=t: M.binary_cross_entropy(x, t),
                lambda x=x, t=t: F.binary_cross_entropy(x, t),
                match_message=True,
            )
            self.assertIsInstance(err, RuntimeError)


class TestExtremes(unittest.TestCase):
    @parameterized.expand([(r, n) for r in ("none", "mean", "sum") for n in (6, 300_000)])
    def test_bce_at_zero_and_one(self, reduction: str, n: int) -> None:
        x = torch.rand(n, dtype=f64)
        x[0::3], x[1::3] = 0.0, 1.0
        t = torch.rand(n, dtype=f64)
        a, ga, _ = _grads(M.binary_cross_entropy, x, t, reduction=reduction)
        b, gb, _ = _grads(F.binary_cross_entropy, x, t, reduction=reduction)
        assert_close_to_torch(a, b)
        for u, v in zip(ga, gb, strict=True):
            assert_close_to_torch(u, v)

    def test_bce_double_backward_at_zero_and_one(self) -> None:
        x = torch.tensor([0.0, 0.3, 1.0, 0.5], dtype=f64)
        t = torch.tensor([0.2, 0.7, 0.4, 1.0], dtype=f64)
        results = []
        for fn in (M.binary_cross_entropy, F.binary_cross_entropy):
            _, (gx, gt), (xl, tl) = _grads(fn, x, t, create_graph=True, reduction="sum")
            results.append(torch.autograd.grad(gx.sum() + gt.sum(), (xl, tl)))
        for u, v in zip(*results, strict=True):
            assert_close_to_torch(u, v)

    @parameterized.expand(
        [
            (shape, pw_shape, r)
            for shape, pw_shape in (
                ((5, 4), (4,)),
                ((300, 1000), (1000,)),
                ((300, 1000), (300, 1)),
                ((3, 200_000), (200_000,)),
                ((2, 3, 50_000), (3, 1)),
            )
            for r in ("none", "mean", "sum")
        ]
    )
    def test_logits_extreme_and_pos_weight(self, shape, pw_shape, reduction) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g, dtype=f64) * 3
        x.view(-1)[0::7] = 1e4
        x.view(-1)[3::7] = -1e4
        t = torch.rand(shape, generator=g, dtype=f64)
        pw = torch.rand(pw_shape, generator=g, dtype=f64) * 2
        w = torch.rand(shape[-1], generator=g, dtype=f64)
        for kw in ({"pos_weight": pw}, {"pos_weight": pw, "weight": w}):
            a, ga, _ = _grads(M.binary_cross_entropy_with_logits, x, t, reduction=reduction, **kw)
            b, gb, _ = _grads(F.binary_cross_entropy_with_logits, x, t, reduction=reduction, **kw)
            assert_close_to_torch(a, b)
            for u, v in zip(ga, gb, strict=True):
                assert_close_to_torch(u, v)

    @parameterized.expand([("bce",), ("logits",)])
    def test_retained_graph_second_backward(self, which: str) -> None:
        fn = M.binary_cross_entropy if which == "bce" else M.binary_cross_entropy_with_logits
        x = torch.rand(400, 500).clamp(0.01, 0.99).requires_grad_()
        t = torch.rand(400, 500).requires_grad_()
        loss = fn(x, t)
        first = torch.autograd.grad(loss, (x, t), retain_graph=True)
        first[0].mul_(3)  # the caller owns the first gradient
        second = torch.autograd.grad(loss, (x, t))
        torch.testing.assert_close(second[0] * 3, first[0], rtol=0, atol=0)
        torch.testing.assert_close(second[1], first[1], rtol=0, atol=0)


def _bce_small_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities where the short path must fall back or clamp: exactly 0 and 1, below the
    gradient's 1e-12, below e^-100 (float32 subnormals, float64 1e-50), next to 1."""
    tiny = 1e-45 if dtype == torch.float32 else 1e-50
    near_one = 1 - torch.finfo(dtype).eps / 2
    x = torch.tensor([0.0, 1.0, tiny, 1e-13, near_one, 0.3, 0.7, 0.5], dtype=dtype)
    t = torch.tensor([0.0, 1.0, 0.25, 0.0, 1.0, 0.6, 0.1, 1.0], dtype=dtype)
    return x, t


class TestCancellation(unittest.TestCase):
    @parameterized.expand([(n, pw) for n in (11, 300_000) for pw in (False, True)])
    def test_big_logits_do_not_cancel_in_the_sum(self, n: int, pos_weight: bool) -> None:
        """Logits of +-4e3 whose loss is 0 beside ordinary ones: the 'mean' must keep the
        ordinary ones' digits in float32 (a sum of (1 - y) x minus a sum of log sigma(x)
        cancels to a few; compare check case 123200192). Judged against the float64 truth."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, generator=g)
        x[0::3] = -4000.0 - torch.rand(len(x[0::3]), generator=g)
        t = (torch.rand(3 * n, generator=g) > 0.5).float()[::3]  # strided: not the short path
        t[0::3] = 0.0
        kw = {"pos_weight": torch.rand(n, generator=g) + 0.5} if pos_weight else {}
        ours = M.binary_cross_entropy_with_logits(x.requires_grad_(), t, **kw)
        theirs = F.binary_cross_entropy_with_logits(x.detach(), t, **kw)
        kw64 = {k: v.double() for k, v in kw.items()}
        truth = F.binary_cross_entropy_with_logits(x.detach().double(), t.double(), **kw64)
        failure = compare_tensors("mean", ours.detach(), theirs, truth)
        self.assertIsNone(failure, failure)


class TestShortPath(unittest.TestCase):
    """The short paths of small reduced calls (``_small`` in both files): their fallbacks,
    their skipped multiplication by an upstream gradient of 1, and evaluation without a graph."""

    @parameterized.expand(
        [
            (dt, r, keep)
            for dt in (torch.float32, f64)
            for r in ("mean", "sum")
            for keep in range(8)  # each special value alone, among ordinary ones
        ]
    )
    def test_bce_special_values(self, dtype: torch.dtype, reduction: str, keep: int) -> None:
        xs, ts = _bce_small_inputs(dtype)
        x = torch.full((4, 3), 0.4, dtype=dtype)
        t = torch.full((4, 3), 0.8, dtype=dtype)
        x[1, 2], t[1, 2] = xs[keep], ts[keep]
        a, ga, _ = _grads(M.binary_cross_entropy, x, t, reduction=reduction)
        b, gb, _ = _grads(F.binary_cross_entropy, x, t, reduction=reduction)
        assert_close_to_torch(a, b)
        for u, v in zip(ga, gb, strict=True):
            assert_close_to_torch(u, v)
        with torch.no_grad():
            assert_close_to_torch(M.binary_cross_entropy(x, t, reduction=reduction), b)

    @parameterized.expand(
        [
            ("target_inf", float("inf"), 1.0),
            ("target_minus_inf", float("-inf"), 0.5),
            ("target_nan", float("nan"), 2.0),
            ("pos_weight_inf", 0.5, float("inf")),
            ("logit_inf", 0.5, 1.5),
        ]
    )
    def test_logits_nonfinite(self, name: str, tv: float, pv: float) -> None:
        """Where the short path's lambda differs from torch's, it hands over to torch's form."""
        x = torch.randn(4, 3, dtype=f64)
        t = torch.rand(4, 3, dtype=f64)
        pw = torch.rand(3, dtype=f64) + 0.5
        t[2, 1], pw[1] = tv, pv
        if name == "logit_inf":
            x[0, 0], x[3, 2] = float("inf"), float("-inf")
        for kw in ({"pos_weight": pw}, {}):
            for reduction in ("mean", "sum"):
                a, ga, _x = _grads(
                    M.binary_cross_entropy_with_logits, x, t, reduction=reduction, **kw
                )
                b, gb, _x = _grads(
                    F.binary_cross_entropy_with_logits, x, t, reduction=reduction, **kw
                )
                assert_close_to_torch(a, b)
                for u, v in zip(ga, gb, strict=True):
                    assert_close_to_torch(u, v)

    @parameterized.expand([("bce", False), ("logits", False), ("logits", True)])
    def test_upstream_of_one_and_retained_graph(self, which: str, pos: bool) -> None:
        if which == "bce":
            fn, ref = M.binary_cross_entropy, F.binary_cross_entropy
            x0 = torch.rand(8, 5).clamp(0.01, 0.99)
        else:
            fn, ref = M.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits
            x0 = torch.randn(8, 5) * 3
        t0 = torch.rand(8, 5)
        kw = {"pos_weight": torch.rand(5) + 0.5} if pos else {}
        grads = []
        for f in (fn, ref):
            x, t = x0.clone().requires_grad_(), t0.clone().requires_grad_()
            loss = f(x, t, **kw)
            loss.backward(retain_graph=True)  # an upstream gradient of exactly 1
            first = (x.grad.clone(), t.grad.clone())
            x.grad = t.grad = None
            (loss * 3).backward()  # the retained graph again, an upstream gradient of 3
            grads.append((first, (x.grad, t.grad)))
        (f_ours, s_ours), (f_torch, s_torch) = grads
        for u, v in zip(f_ours + s_ours, f_torch + s_torch, strict=True):
            assert_close_to_torch(u, v)
        torch.testing.assert_close(s_ours[0], f_ours[0] * 3, rtol=0, atol=0)
