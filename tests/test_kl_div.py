"""KLDivLoss: the corners of torch's semantics that the generic tests cannot express (target
entries of exactly 0 and negative ones, 'batchmean' after the legacy arguments, the 'mean'
warning, broadcasting both ways without a warning, both gradients on every path)."""

from __future__ import annotations

import math
import unittest
import warnings

import torch
import torch.nn.functional as F
from parameterized import parameterized

import mylosses
import mylosses.functional as M
from tests._support import assert_close_to_torch

INF, NAN = math.inf, math.nan
REDUCTIONS = ("none", "sum", "mean", "batchmean")


def _run(fn, x, y, upstream_seed=0, **kw):
    """The loss and the gradients of input and target (None where not asked)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(x, y, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed)).to(out)
    wanted = [t for t in (x, y) if t.requires_grad]
    grads = iter(torch.autograd.grad(out, wanted, g))
    return out.detach(), *(next(grads) if t.requires_grad else None for t in (x, y))


def _fresh(*ts, grads=(True, True)):
    return tuple(t.detach().clone().requires_grad_(g) for t, g in zip(ts, grads, strict=True))


class TestKLDiv(unittest.TestCase):
    def assert_like_torch(self, x, y, grads=(True, True), **kw):
        ours = _run(M.kl_div, *_fresh(x, y, grads=grads), **kw)
        theirs = _run(F.kl_div, *_fresh(x, y, grads=grads), **kw)
        for what, a, b in zip(("loss", "grad input", "grad target"), ours, theirs, strict=True):
            if b is None:
                self.assertIsNone(a, what)
            else:
                assert_close_to_torch(a, b, f"{what} {kw}")

    @parameterized.expand(
        [(r, d, lt) for r in REDUCTIONS for d in ("float32", "float64") for lt in (False, True)]
    )
    def test_extremes_match_torch(self, reduction, dtype_name, log_target):
        """Zero targets (loss 0, NaN target gradient), negative ones, nan/inf anywhere, big
        values (exp of a log target overflows), on the fused path and the broadcast one."""
        dtype = getattr(torch, dtype_name)
        x = torch.tensor([-1.0, -2.0, 0.5, -1.0, INF, -INF, -1.0, -1.0, 1e4, -3.0], dtype=dtype)
        y = torch.tensor([0.0, 0.3, -0.5, NAN, 0.2, 0.0, INF, -0.0, 0.7, 1e2], dtype=dtype)
        for grads in ((True, True), (True, False), (False, True)):
            self.assert_like_torch(x, y, grads, reduction=reduction, log_target=log_target)
            self.assert_like_torch(
                x[:5].reshape(5, 1), y[5:], grads, reduction=reduction, log_target=log_target
            )

    def test_zero_target_contributes_zero(self):
        x = torch.tensor([[-1.0, -0.5]], requires_grad=True)
        y = torch.tensor([[1.0, 0.0]])
        loss = M.kl_div(x, y, reduction="none")
        self.assertEqual(loss[0, 1].item(), 0.0)
        loss.sum().backward()
        self.assertEqual(x.grad.tolist(), [[-1.0, -0.0]])

    @parameterized.expand([(sa, r) for sa in (None, False, True) for r in (None, False, True)])
    def test_batchmean_after_legacy(self, size_average, reduce):
        """torch divides by input.size(0) whenever reduction='batchmean', also after the legacy
        arguments chose 'none', 'sum' or 'mean'; the same warnings."""
        x = torch.randn(4, 3).log_softmax(-1)
        y = torch.randn(4, 3).softmax(-1)
        kw = {"size_average": size_average, "reduce": reduce, "reduction": "batchmean"}
        self.assert_like_torch(x, y, **kw)
        for fn in (M.kl_div, F.kl_div):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn(x, y, **kw)
            messages = [str(w.message) for w in caught]
            if fn is M.kl_div:
                ours = messages
        self.assertEqual(ours, messages)

    @parameterized.expand([("mean",), ("batchmean",), ("sum",), ("none",)])
    def test_mean_warning(self, reduction):
        x, y = torch.randn(2, 3), torch.rand(2, 3)
        caught = {}
        for name, fn in (("ours", M.kl_div), ("torch", F.kl_div)):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                fn(x, y, reduction=reduction)
            caught[name] = [(x.category, str(x.message)) for x in w]
        self.assertEqual(caught["ours"], caught["torch"])
        self.assertEqual(bool(caught["ours"]), reduction == "mean")

    @parameterized.expand([((3, 4), (4,)), ((4,), (3, 4)), ((3, 1), (1, 4)), ((), (2, 3))])
    def test_broadcasting_both_ways(self, in_shape, t_shape):
        x = torch.randn(in_shape, dtype=torch.float64)
        y = torch.rand(t_shape, dtype=torch.float64)
        for reduction in REDUCTIONS:
            for log_target in (False, True):
                self.assert_like_torch(x, y, reduction=reduction, log_target=log_target)

    @parameterized.expand([(lt, r) for lt in (False, True) for r in REDUCTIONS])
    def test_gradcheck_and_gradgradcheck(self, log_target, reduction):
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(3, 4, dtype=torch.float64, generator=gen).requires_grad_()
        y = torch.rand(3, 4, dtype=torch.float64, generator=gen) + 0.1
        y = (y.log() if log_target else y).requires_grad_()
        yb = y[:1].detach().clone().requires_grad_()  # broadcast target

        def fn(a, b):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return M.kl_div(a, b, reduction=reduction, log_target=log_target)

        for args in ((x, y), (x, yb)):
            self.assertTrue(torch.autograd.gradcheck(fn, args))
            self.assertTrue(torch.autograd.gradgradcheck(fn, args))

    @parameterized.expand([(lt,) for lt in (False, True)])
    def test_retained_graph_backward_twice(self, log_target):
        x = torch.randn(300, 700).log_softmax(-1).requires_grad_()
        y = torch.randn(300, 700).softmax(-1).requires_grad_()
        if log_target:
            y = y.detach().log().requires_grad_()
        loss = M.kl_div(x, y, reduction="batchmean", log_target=log_target)
        first = torch.autograd.grad(loss, (x, y), retain_graph=True)
        second = torch.autograd.grad(loss, (x, y))
        for a, b in zip(first, second, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        theirs = _run(F.kl_div, x, y, reduction="batchmean", log_target=log_target)
        assert_close_to_torch(loss.detach(), theirs[0])

    @parameterized.expand(
        [
            ("complex", torch.complex64, torch.complex64, "Complex"),
            ("int_input", torch.int64, torch.float32, "Integral"),
            ("bool_target", torch.float32, torch.bool, "Integral"),
            ("complex_first", torch.int64, torch.complex64, "Complex"),
        ]
    )
    def test_dtype_errors(self, _name, in_dtype, t_dtype, word):
        x, y = torch.ones(3, dtype=in_dtype), torch.ones(3, dtype=t_dtype)
        for fn in (M.kl_div, F.kl_div):
            with self.assertRaisesRegex(RuntimeError, f"kl_div: {word} inputs not supported."):
                fn(x, y, reduction="sum")

    def test_module(self):
        x, y = torch.randn(2, 5).log_softmax(-1), torch.randn(2, 5)
        ours = mylosses.KLDivLoss(reduction="batchmean", log_target=True)(x, y)
        theirs = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)(x, y)
        assert_close_to_torch(ours, theirs)


if __name__ == "__main__":
    unittest.main()
