"""PoissonNLLLoss: the corners of torch's semantics that the generic tests cannot express (the
Stirling mask and its NaN target gradients, exp overflow, broadcast 0-d inputs, promotion of
integer inputs, the fused path against the composed one over block boundaries, retained and
double backward, argument errors at torch's moment)."""

from __future__ import annotations

import itertools
import math
import unittest
import warnings

import torch
import torch.nn.functional as F
from parameterized import parameterized

import mylosses
import mylosses.functional as M
from compare.parity import assert_same_exception
from mylosses.losses import poisson_nll
from tests._support import assert_close_to_torch

INF, NAN = math.inf, math.nan
REDUCTIONS = ("none", "mean", "sum")
# One block, and the blocked loop (two and a half blocks, with a short last one).
SIZES = (7, 5 * poisson_nll.BLOCK // 2 + 3)


def _run(fn, tensors, wants, upstream_seed=0, **kw):
    """``fn(*tensors, **kw)`` on fresh leaves (those flagged in ``wants`` require grad): the
    result and the gradients of a random upstream."""
    leaves = [t.detach().clone().requires_grad_(w) for t, w in zip(tensors, wants, strict=True)]
    out = fn(*leaves, **kw)
    gen = torch.Generator().manual_seed(upstream_seed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    wanted = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(out, wanted, g) if wanted else ()
    return out.detach(), grads


def _assert_same(ours, theirs):
    assert_close_to_torch(ours[0], theirs[0], "loss")
    for i, (a, b) in enumerate(zip(ours[1], theirs[1], strict=True)):
        assert_close_to_torch(a, b, f"gradient {i}")


def _data(n, dtype, log_input, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    if not log_input:
        x = x.abs() * 2
    t = torch.poisson(torch.rand(n, generator=gen, dtype=torch.float64) * 5, generator=gen)
    return x.to(dtype), t.to(dtype)


_OPTIONS = list(itertools.product((True, False), (False, True), REDUCTIONS))
_WANTS = [(True, False), (False, True), (True, True)]


class TestPoissonNLL(unittest.TestCase):
    @parameterized.expand(
        [
            (n, dt, li, full, red, w)
            for n in SIZES
            for dt in (torch.float32, torch.float64)
            for li, full, red in _OPTIONS
            for w in _WANTS
            if n == SIZES[0] or (dt == torch.float32 and w != (False, True))
        ]
    )
    def test_fused_matches_torch(self, n, dtype, log_input, full, reduction, wants):
        """The one-pass path (one block and the blocked loop) against torch, every option."""
        x, t = _data(n, dtype, log_input)
        kw = {"log_input": log_input, "full": full, "reduction": reduction}
        _assert_same(
            _run(M.poisson_nll_loss, (x, t), wants, **kw),
            _run(F.poisson_nll_loss, (x, t), wants, **kw),
        )

    @parameterized.expand([(li, full) for li in (True, False) for full in (False, True)])
    def test_extremes(self, log_input, full):
        """Targets 0, 1, in (0, 1), negative, nan, inf; exp overflow; zero/negative rates."""
        x = torch.tensor([0.0, 1.0, 2.0, -1.0, 100.0, 1e4, -1e4, 0.5, NAN, INF, -INF, 3.0])
        t = torch.tensor([0.0, 1.0, 0.5, -3.0, 2.0, 5.0, 5.0, NAN, 1.0, 2.0, 3.0, INF])
        for dtype in (torch.float32, torch.float64):
            for red in REDUCTIONS:
                kw = {"log_input": log_input, "full": full, "reduction": red}
                args = (x.to(dtype), t.to(dtype))
                _assert_same(
                    _run(M.poisson_nll_loss, args, (True, True), **kw),
                    _run(F.poisson_nll_loss, args, (True, True), **kw),
                )

    @parameterized.expand([(li, full) for li in (True, False) for full in (False, True)])
    def test_broadcast_zero_dim(self, log_input, full):
        """A 0-d input against many targets: torch sums the upstream before multiplying by
        exp(x), so an overflowing exp gives inf (not inf - inf = nan)."""
        t = torch.poisson(torch.rand(3, 4, dtype=torch.float64) * 4)
        for value in (0.3, 1e4, -1e4):
            x = torch.tensor(value, dtype=torch.float64)
            kw = {"log_input": log_input, "full": full, "reduction": "sum"}
            _assert_same(
                _run(M.poisson_nll_loss, (x, t), (True, True), **kw),
                _run(F.poisson_nll_loss, (x, t), (True, True), **kw),
            )

    @parameterized.expand(
        [
            (a, b, li, full)
            for a, b in (
                (torch.int64, torch.int64),
                (torch.int64, torch.float16),
                (torch.bool, torch.float32),
                (torch.float16, torch.bool),
                (torch.float32, torch.float64),
                (torch.bfloat16, torch.float32),
            )
            for li in (True, False)
            for full in (False, True)
        ]
    )
    def test_promotion(self, a, b, log_input, full):
        """Integer/bool inputs promote to float32 (bool with log_input=False is torch's
        subtraction error); 0-d targets do not lift a dimensioned input's dtype."""
        x = torch.tensor([0, 1, 2, 3]).to(a)
        for t in (torch.tensor([0, 1, 2, 5]).to(b), torch.tensor(2).to(b)):
            kw = {"log_input": log_input, "full": full}
            err = assert_same_exception(
                lambda x=x, t=t, kw=kw: M.poisson_nll_loss(x, t, **kw),
                lambda x=x, t=t, kw=kw: F.poisson_nll_loss(x, t, **kw),
                match_message=True,
            )
            if err is None:
                ours, theirs = M.poisson_nll_loss(x, t, **kw), F.poisson_nll_loss(x, t, **kw)
                self.assertEqual(ours.dtype, theirs.dtype)
                if torch.float16 in (a, b) or torch.bfloat16 in (a, b):
                    # torch rounds each op to half; ours rounds once: judge by the truth
                    xd, td = x.double(), t.double()
                    theirs = F.poisson_nll_loss(xd, td, **kw).to(ours.dtype)
                assert_close_to_torch(ours, theirs)

    def test_gradcheck(self):
        gen = torch.Generator().manual_seed(3)
        x = torch.rand(4, 3, generator=gen, dtype=torch.float64) + 0.2
        t = (torch.rand(4, 3, generator=gen, dtype=torch.float64) * 4 + 1.2).requires_grad_()
        for li, full, red in _OPTIONS:
            xi = x.detach().clone().requires_grad_()

            def f(a, b, li=li, full=full, red=red):
                return M.poisson_nll_loss(a, b, log_input=li, full=full, reduction=red)

            self.assertTrue(torch.autograd.gradcheck(f, (xi, t)))
            self.assertTrue(torch.autograd.gradgradcheck(f, (xi, t)))

    def test_retained_graph_and_double_backward(self):
        """The stash is used once: a second backward recomputes; create_graph differentiates."""
        x, t = _data(50, torch.float64, True)
        x.requires_grad_()
        t.requires_grad_()
        loss = M.poisson_nll_loss(x, t, full=True)
        g1 = torch.autograd.grad(loss, (x, t), retain_graph=True)
        g2 = torch.autograd.grad(loss, (x, t))
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        ref = F.poisson_nll_loss(x, t, full=True)
        (gx,) = torch.autograd.grad(M.poisson_nll_loss(x, t, full=True), x, create_graph=True)
        (rx,) = torch.autograd.grad(ref, x, create_graph=True)
        assert_close_to_torch(
            torch.autograd.grad(gx.sum(), x)[0], torch.autograd.grad(rx.sum(), x)[0]
        )

    @parameterized.expand(
        [
            ({"reduction": "elementwise_mean"},),
            ({"reduction": "bad"},),
            ({"log_input": 1},),
            ({"full": None},),
            ({"eps": "a"},),
            ({"eps": None},),
            ({"eps": True},),
            ({"eps": torch.tensor(0.5)},),
        ]
    )
    def test_argument_errors(self, kw):
        x, t = torch.rand(3), torch.rand(3)
        assert_same_exception(
            lambda: M.poisson_nll_loss(x, t, **kw),
            lambda: F.poisson_nll_loss(x, t, **kw),
            match_message=True,
        )

    def test_shape_error_and_legacy(self):
        assert_same_exception(
            lambda: M.poisson_nll_loss(torch.rand(3), torch.rand(4)),
            lambda: F.poisson_nll_loss(torch.rand(3), torch.rand(4)),
            match_message=True,
        )
        x, t = torch.rand(3), torch.rand(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ours = M.poisson_nll_loss(x, t, size_average=False)
        self.assertTrue(any("size_average" in str(w.message) for w in caught))
        assert_close_to_torch(ours, F.poisson_nll_loss(x, t, reduction="sum"))

    def test_module(self):
        m = mylosses.PoissonNLLLoss(log_input=False, full=True, eps=1e-3, reduction="sum")
        ref = torch.nn.PoissonNLLLoss(log_input=False, full=True, eps=1e-3, reduction="sum")
        self.assertIsInstance(m, torch.nn.PoissonNLLLoss)
        self.assertEqual(repr(m), repr(ref))
        x, t = _data(20, torch.float32, False)
        assert_close_to_torch(m(x, t), ref(x, t))

    def test_half_in_float32(self):
        """Half inputs: computed in float32 and rounded once; closer to the truth than torch."""
        x, t = _data(100, torch.float64, True)
        truth = F.poisson_nll_loss(x, t, reduction="none")
        for dtype in (torch.float16, torch.bfloat16):
            ours = M.poisson_nll_loss(x.to(dtype), t.to(dtype), reduction="none")
            self.assertEqual(ours.dtype, dtype)
            err = (ours.double() - truth).abs().max()
            theirs = F.poisson_nll_loss(x.to(dtype), t.to(dtype), reduction="none").double() - truth
            self.assertLessEqual(float(err), 2 * float(theirs.abs().max()) + 1e-3)


if __name__ == "__main__":
    unittest.main()
