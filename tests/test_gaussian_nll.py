"""GaussianNLLLoss: the corners of torch's semantics that the generic tests cannot express (the
clamp at eps that the gradient passes straight through, every var shape torch accepts, a float
var, errors in torch's order with torch's messages, the fused path against the composed one and
its block boundaries, retained graphs, vmap and compile where torch's own check cannot run)."""

from __future__ import annotations

import math
import unittest

import torch
import torch.nn.functional as F
from parameterized import parameterized

import mylosses
import mylosses.functional as M
from compare.parity import assert_same_exception
from mylosses.losses import gaussian_nll
from tests._support import assert_close_to_torch

REDUCTIONS = ("none", "mean", "sum")
# One block, and the blocked loop (two and a half blocks, with a short last one).
SIZES = (7, 5 * gaussian_nll.BLOCK // 2 + 3)


def _run(fn, tensors, wants, **kw):
    """``fn(*tensors, **kw)`` on fresh leaves (those flagged in ``wants`` require grad): the
    result and the gradients of a random upstream."""
    leaves = [
        t.detach().clone().requires_grad_(w) if isinstance(t, torch.Tensor) else t
        for t, w in zip(tensors, wants, strict=True)
    ]
    out = fn(*leaves, **kw)
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    needed = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, needed, g) if needed else ()
    return out.detach(), grads


def _assert_same(ours, theirs):
    assert_close_to_torch(ours[0], theirs[0], "loss")
    for i, (a, b) in enumerate(zip(ours[1], theirs[1], strict=True)):
        assert_close_to_torch(a, b, f"gradient {i}")


def _data(shape, var_shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    t = torch.randn(shape, generator=gen, dtype=dtype)
    v = torch.rand(var_shape, generator=gen, dtype=dtype) + 0.1
    return x, t, v


class TestGaussianNLL(unittest.TestCase):
    @parameterized.expand([(r, f) for r in REDUCTIONS for f in (False, True)])
    def test_var_below_eps_gradient_passes_the_clamp(self, reduction, full):
        """torch clamps a clone under no_grad: the gradient w.r.t. var below eps is the formula
        at eps, not 0 (also for var == 0 and var == eps exactly)."""
        x, t, v = _data((4, 5), (4, 5))
        v[0, :4] = torch.tensor([0.0, 1e-9, 1e-3, 0.05])
        for eps in (1e-6, 1e-3, 0.1):
            kw = dict(full=full, eps=eps, reduction=reduction)
            wants = (True, True, True)
            _assert_same(
                _run(M.gaussian_nll_loss, (x, t, v), wants, **kw),
                _run(F.gaussian_nll_loss, (x, t, v), wants, **kw),
            )

    @parameterized.expand(
        [
            ("same", (3, 4, 5), (3, 4, 5)),
            ("short", (3, 4, 5), (3, 4)),
            ("last1", (3, 4, 5), (3, 4, 1)),
            ("one1", (3, 4, 5), (3, 1, 5)),
            ("first1", (3, 4, 5), (1, 4, 5)),
            ("scalar_var_1d", (6,), ()),
            ("zero_d", (), ()),
            ("empty", (0, 4), (0, 1)),
        ]
    )
    def test_var_shapes(self, _name, shape, var_shape):
        x, t, v = _data(shape, var_shape)
        for reduction in REDUCTIONS:
            for wants in ((True, False, True), (False, True, True), (True, True, False)):
                _assert_same(
                    _run(M.gaussian_nll_loss, (x, t, v), wants, reduction=reduction),
                    _run(F.gaussian_nll_loss, (x, t, v), wants, reduction=reduction),
                )

    @parameterized.expand([(r,) for r in REDUCTIONS])
    def test_float_var(self, reduction):
        for dtype in (torch.float64, torch.float32, torch.int64):
            x, t, _ = _data((3, 4), (3, 4))
            x, t = (x * 3).to(dtype), (t * 3).to(dtype)
            want = dtype.is_floating_point
            for var in (0.5, 0.0, 2.0):
                ours = _run(
                    M.gaussian_nll_loss, (x, t, var), (want, False, False), reduction=reduction
                )
                theirs = _run(
                    F.gaussian_nll_loss, (x, t, var), (want, False, False), reduction=reduction
                )
                _assert_same(ours, theirs)

    @parameterized.expand([(r, n) for r in REDUCTIONS for n in SIZES])
    def test_fused_path_matches_composition(self, reduction, n):
        """Every combination of requested gradients, across block boundaries, float32."""
        x, t, v = _data((n,), (n,), torch.float32, seed=n)
        v[::97] = 0.0  # some clamped
        for wants in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]:
            wants = tuple(bool(w) for w in wants)
            _assert_same(
                _run(M.gaussian_nll_loss, (x, t, v), wants, reduction=reduction, full=True),
                _run(F.gaussian_nll_loss, (x, t, v), wants, reduction=reduction, full=True),
            )

    def test_nonfinite(self):
        x, t, v = _data((2, 4), (2, 4))
        x[0, 0], t[0, 1], v[0, 2], v[0, 3] = math.inf, math.nan, math.inf, math.nan
        x[1, 0] = -math.inf
        for reduction in REDUCTIONS:
            wants = (True, True, True)
            _assert_same(
                _run(M.gaussian_nll_loss, (x, t, v), wants, reduction=reduction),
                _run(F.gaussian_nll_loss, (x, t, v), wants, reduction=reduction),
            )

    @parameterized.expand([(d,) for d in (torch.float16, torch.bfloat16)])
    def test_half_dtypes(self, dtype):
        x, t, v = _data((5, 6), (5, 6))
        ours = M.gaussian_nll_loss(x.to(dtype), t.to(dtype), v.to(dtype))
        self.assertEqual(ours.dtype, dtype)
        truth = F.gaussian_nll_loss(
            x.to(dtype).double(), t.to(dtype).double(), v.to(dtype).double()
        )
        self.assertLess(abs(ours.double() - truth).item(), 2e-2 * abs(truth).item() + 1e-2)

    def test_retained_graph_and_double_backward(self):
        x, t, v = _data((4, 3), (4, 3))
        for reduction in REDUCTIONS:
            a, c = x.clone().requires_grad_(), v.clone().requires_grad_()
            out = M.gaussian_nll_loss(a, t, c, reduction=reduction).sum()
            g1 = torch.autograd.grad(out, (a, c), retain_graph=True)
            g2 = torch.autograd.grad(out, (a, c), retain_graph=True)
            for p, q in zip(g1, g2, strict=True):
                torch.testing.assert_close(p, q, rtol=0, atol=0)
            gv = torch.autograd.grad(out, c, create_graph=True)[0]
            a2, c2 = x.clone().requires_grad_(), v.clone().requires_grad_()
            ref = F.gaussian_nll_loss(a2, t, c2, reduction=reduction).sum()
            gv2 = torch.autograd.grad(ref, c2, create_graph=True)[0]
            assert_close_to_torch(gv, gv2, "var gradient")
            for ours, theirs in zip(
                torch.autograd.grad(gv.sum(), (a, c)),
                torch.autograd.grad(gv2.sum(), (a2, c2)),
                strict=True,
            ):
                assert_close_to_torch(ours, theirs, "second derivative")

    def test_gradcheck_with_broadcast_var(self):
        x, t, v = _data((3, 4), (3, 1))
        for reduction in REDUCTIONS:
            inputs = tuple(z.clone().requires_grad_() for z in (x, t, v))
            fn = lambda a, b, c, r=reduction: M.gaussian_nll_loss(a, b, c, reduction=r)  # noqa: E731
            self.assertTrue(torch.autograd.gradcheck(fn, inputs))
            self.assertTrue(torch.autograd.gradgradcheck(fn, inputs))

    # -- errors ------------------------------------------------------------------------------

    @parameterized.expand(
        [
            ("negative_tensor", (3, 4), "neg"),
            ("negative_float", (3, 4), -1.0),
            ("int_var", (3, 4), 1),
            ("wrong_size", (3, 4), (3, 2)),
            ("two_mismatched", (3, 4), (1, 1)),
            ("extra_dim", (3, 4), (3, 4, 2)),
            ("zero_d_with_2d", (3, 4), ()),
            ("int_tensor", (3, 4), "long"),
            ("bool_tensor", (3, 4), "bool"),
            ("complex_tensor", (3, 4), "complex"),
        ]
    )
    def test_var_errors(self, _name, shape, var):
        x, t, v = _data(shape, shape)
        if var == "neg":
            var = v.clone()
            var[1, 1] = -0.5
        elif var in ("long", "bool", "complex"):
            var = v.to({"long": torch.int64, "bool": torch.bool, "complex": torch.complex64}[var])
        elif isinstance(var, tuple):
            var = torch.rand(var, dtype=torch.float64)
        exc = assert_same_exception(
            lambda: M.gaussian_nll_loss(x, t, var), lambda: F.gaussian_nll_loss(x, t, var)
        )
        self.assertIsNotNone(exc)
        if isinstance(exc, ValueError):
            assert_same_exception(
                lambda: M.gaussian_nll_loss(x, t, var),
                lambda: F.gaussian_nll_loss(x, t, var),
                match_message=True,
            )

    def test_error_order_and_reduction(self):
        x, t, v = _data((3, 4), (3, 4))
        # a negative var is reported before the bad reduction, the size before the reduction
        for var, reduction in (
            (-v, "avg"),
            (torch.ones(2), "avg"),
            (v, "avg"),
            (v, "elementwise_mean"),
        ):
            assert_same_exception(
                lambda var=var, r=reduction: M.gaussian_nll_loss(x, t, var, reduction=r),
                lambda var=var, r=reduction: F.gaussian_nll_loss(x, t, var, reduction=r),
                match_message=True,
            )
        # target that does not broadcast: torch's RuntimeError from the subtraction
        assert_same_exception(
            lambda: M.gaussian_nll_loss(x, t[:, :2], v), lambda: F.gaussian_nll_loss(x, t[:, :2], v)
        )
        # a bool input fails at the subtraction
        assert_same_exception(
            lambda: M.gaussian_nll_loss(x > 0, t, v),
            lambda: F.gaussian_nll_loss(x > 0, t, v),
            match_message=True,
        )

    def test_module(self):
        x, t, v = _data((3, 4), (3,))
        for kw in ({}, {"full": True, "eps": 0.5, "reduction": "sum"}):
            ours = mylosses.GaussianNLLLoss(**kw)
            theirs = torch.nn.GaussianNLLLoss(**kw)
            self.assertEqual(repr(ours), repr(theirs))
            assert_close_to_torch(ours(x, t, v), theirs(x, t, v))

    # -- transforms where torch's own check cannot run ------------------------------------------

    def test_vmap_and_compile_run_without_the_check(self):
        """torch's ``torch.any(var < 0)`` branch fails under vmap and compile(fullgraph=True);
        ours skips it there and gives the eager result."""
        x, t, v = _data((3, 4), (3, 4))
        got = torch.func.vmap(M.gaussian_nll_loss)(x, t, v)
        want = torch.stack([M.gaussian_nll_loss(x[i], t[i], v[i]) for i in range(3)])
        assert_close_to_torch(got, want)
        with self.assertRaises(RuntimeError):
            torch.func.vmap(F.gaussian_nll_loss)(x, t, v)
        torch._dynamo.reset()
        compiled = torch.compile(M.gaussian_nll_loss, fullgraph=True, backend="aot_eager")
        assert_close_to_torch(compiled(x, t, v), M.gaussian_nll_loss(x, t, v))
        # torch.func.grad can take the branch: the check still runs there
        with self.assertRaises(ValueError):
            torch.func.grad(M.gaussian_nll_loss)(x, t, -v)


if __name__ == "__main__":
    unittest.main()
