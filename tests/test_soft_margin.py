"""SoftMarginLoss and MultiLabelSoftMarginLoss: the corners of torch's semantics that the
generic tests cannot express (torch's overflow in the naive soft margin formula, the nan/inf
fallback of the fused multi-label path, the summed dimension of the multi-label loss, errors
raised at torch's moment)."""

from __future__ import annotations

import math
import unittest
import warnings

import torch
import torch.nn.functional as F
from parameterized import parameterized

import mylosses
import mylosses.functional as M
from compare.parity import assert_same_exception
from compare.tolerances import compare_tensors

INF, NAN = math.inf, math.nan


def _grads(fn, x, y, reduction, upstream_seed=0, **kw):
    x = x.detach().clone().requires_grad_()
    out = fn(x, y, reduction=reduction, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed)).to(out)
    (gx,) = torch.autograd.grad(out, x, g)
    return out.detach(), gx


class TestSoftMargin(unittest.TestCase):
    def assertSame(self, what, ours, theirs):
        message = compare_tensors(what, ours, theirs)
        if message:
            self.fail(message)

    @parameterized.expand([(r, d) for r in ("none", "mean", "sum") for d in ("float32", "float64")])
    def test_overflow_matches_torch(self, reduction, dtype_name):
        """torch's log1p(exp(-x y)): inf where exp overflows, a nan gradient (inf / inf)."""
        dtype = getattr(torch, dtype_name)
        x = torch.tensor(
            [1e4, -1e4, 800.0, -800.0, 100.0, -100.0, 3.0, INF, -INF, NAN], dtype=dtype
        )
        y = torch.tensor([-1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -2.5, 1.0, 1.0, 1.0], dtype=dtype)
        for n in (1, 20_000):  # one block, and the blocked loop
            xs, ys = x.repeat(n), y.repeat(n)
            ours = _grads(M.soft_margin_loss, xs, ys, reduction)
            theirs = _grads(F.soft_margin_loss, xs, ys, reduction)
            self.assertSame("loss", ours[0], theirs[0])
            self.assertSame("grad", ours[1], theirs[1])

    def test_half_is_judged_against_the_truth(self):
        """float16 overflows at x y < -11.1 in torch; ours is finite up to float64's limit."""
        x = torch.tensor([30.6, 11.5, 800.0], dtype=torch.float16)
        y = -torch.ones(3, dtype=torch.float16)
        ours = M.soft_margin_loss(x, y, reduction="none")
        self.assertEqual(ours.dtype, torch.float16)
        self.assertAlmostEqual(float(ours[0]), 30.6, delta=0.05)
        self.assertEqual(float(ours[2]), INF)  # exp(800) overflows float64 too: the "truth"

    def test_target_requires_grad_is_an_error(self):
        x, y = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
        assert_same_exception(
            lambda: M.soft_margin_loss(x, y), lambda: F.soft_margin_loss(x, y), match_message=True
        )
        with torch.no_grad():
            self.assertSame("no_grad", M.soft_margin_loss(x, y), F.soft_margin_loss(x, y))

    def test_bool_target_fails_in_backward(self):
        x, y = torch.randn(4, requires_grad=True), torch.rand(4) > 0.5
        self.assertSame("forward", M.soft_margin_loss(x, y), F.soft_margin_loss(x, y).detach())
        assert_same_exception(
            lambda: M.soft_margin_loss(x, y).backward(),
            lambda: F.soft_margin_loss(x, y).backward(),
            match_message=True,
        )

    @parameterized.expand(
        [
            ("larger_target", (3, 1), (3, 4), torch.float32, torch.float32),
            ("no_broadcast", (3,), (4,), torch.float32, torch.float32),
            ("int_input", (3,), (3,), torch.int64, torch.float64),
            ("bool_input", (3,), (4,), torch.bool, torch.float32),
            ("complex_target", (3,), (3,), torch.float16, torch.complex64),
        ]
    )
    def test_errors_match_torch(self, _name, in_shape, t_shape, in_dtype, t_dtype):
        x = torch.ones(in_shape, dtype=in_dtype)
        y = torch.ones(t_shape, dtype=t_dtype)
        assert_same_exception(
            lambda: M.soft_margin_loss(x, y),
            lambda: F.soft_margin_loss(x, y),
            match_message=True,
        )

    def test_complex_input(self):
        x = torch.randn(5, dtype=torch.complex64)
        y = torch.randn(5)
        self.assertSame("complex", M.soft_margin_loss(x, y), F.soft_margin_loss(x, y))
        xr = x.clone().requires_grad_()
        assert_same_exception(
            lambda: M.soft_margin_loss(xr, y), lambda: F.soft_margin_loss(xr, y), match_message=True
        )

    def test_double_backward_fused_and_regular(self):
        x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
        y = torch.randn(6, 5, dtype=torch.float64).sign()
        torch.autograd.gradgradcheck(lambda t: M.soft_margin_loss(t, y), (x,))
        torch.autograd.gradgradcheck(lambda t: M.soft_margin_loss(t, y, reduction="none"), (x,))


class TestMultiLabelSoftMargin(unittest.TestCase):
    def assertSame(self, what, ours, theirs):
        message = compare_tensors(what, ours, theirs)
        if message:
            self.fail(message)

    def _parity(self, x, y, reduction="mean", weight=None, grads=("input",)):
        named = {"input": x, "target": y, "weight": weight}
        results = []
        for fn in (M.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss):
            leaves = {
                k: v.detach().clone().requires_grad_(k in grads)
                for k, v in named.items()
                if v is not None
            }
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = fn(
                    leaves["input"],
                    leaves["target"],
                    weight=leaves.get("weight"),
                    reduction=reduction,
                )
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
            wrt = [leaves[k] for k in grads]
            results.append((out.detach(), torch.autograd.grad(out, wrt, g)))
        (a, ga), (b, gb) = results
        self.assertSame("loss", a, b)
        for name, u, v in zip(grads, ga, gb, strict=True):
            self.assertSame(f"grad {name}", u, v)

    @parameterized.expand([("none",), ("mean",), ("sum",)])
    def test_summed_dimension(self, reduction):
        """1-d input: one sample; 3-d: the last dim averaged; a target with more dims than the
        input moves the summed dim (torch sums dim input.dim() - 1 of the broadcast loss)."""
        self._parity(torch.randn(7), (torch.rand(7) > 0.5).float(), reduction)
        self._parity(
            torch.randn(2, 3, 4), torch.rand(2, 3, 4), reduction, grads=("input", "target")
        )
        self._parity(torch.randn(4), torch.rand(3, 4), reduction, grads=("input", "target"))
        self._parity(
            torch.randn(3, 4),
            torch.rand(3, 4),
            reduction,
            weight=torch.rand(2, 3, 4),
            grads=("input", "target", "weight"),
        )

    @parameterized.expand([("none",), ("mean",), ("sum",)])
    def test_fused_path_with_class_weight(self, reduction):
        x = torch.randn(300, 1000)  # past one block: the blocked loop
        y = (torch.rand(300, 1000) > 0.5).float()
        self._parity(x, y, reduction, weight=torch.rand(1000))
        self._parity(x[:8, :64], y[:8, :64], reduction, weight=torch.rand(64))

    @parameterized.expand([("none",), ("mean",), ("sum",)])
    def test_nonfinite_fallback(self, reduction):
        """Infinite targets with saturated logits: torch's gradient is nan where sigma(x) - y is
        -inf; the fused path sees a non-finite loss and recomputes in torch's form."""
        x = torch.randn(4, 6) * 3
        y = (torch.rand(4, 6) > 0.5).float()
        x[0, 0], y[0, 0] = 200.0, INF
        x[1, 1], y[1, 1] = INF, 1.0
        x[2, 2], y[2, 2] = -INF, 0.0
        x[3, 3] = NAN
        self._parity(x, y, reduction)

    def test_zero_classes(self):
        self._parity(torch.randn(3, 0), torch.rand(3, 0), "none")
        self._parity(torch.randn(3, 0), torch.rand(3, 0), "sum")

    @parameterized.expand(
        [
            ("0d", torch.tensor(1.0), torch.tensor(1.0), None, "mean"),
            ("0d_bad_reduction", torch.tensor(1.0), torch.tensor(1.0), None, "foo"),
            ("bad_reduction", torch.randn(2, 3), torch.rand(2, 3), None, "elementwise_mean"),
            ("bool_target", torch.randn(2, 3), torch.ones(2, 3, dtype=torch.bool), None, "mean"),
            ("int_input", torch.ones(2, 3, dtype=torch.int64), torch.rand(2, 3), None, "mean"),
            ("shapes", torch.randn(2, 3), torch.rand(2, 4), None, "mean"),
            ("weight", torch.randn(2, 3), torch.rand(2, 3), torch.rand(4), "mean"),
        ]
    )
    def test_errors_match_torch(self, _name, x, y, weight, reduction):
        assert_same_exception(
            lambda: M.multilabel_soft_margin_loss(x, y, weight=weight, reduction=reduction),
            lambda: F.multilabel_soft_margin_loss(x, y, weight=weight, reduction=reduction),
            match_message=True,
        )

    def test_module_weight_buffer(self):
        w = torch.rand(5)
        ours, theirs = mylosses.MultiLabelSoftMarginLoss(w), torch.nn.MultiLabelSoftMarginLoss(w)
        self.assertEqual(list(ours.state_dict()), list(theirs.state_dict()))
        x, y = torch.randn(4, 5), torch.rand(4, 5)
        self.assertSame("module", ours(x, y), theirs(x, y))


if __name__ == "__main__":
    unittest.main()
