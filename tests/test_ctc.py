"""CTCLoss edge cases the generic tests cannot express: torch's gradient convention checked
numerically through a log_softmax, impossible alignments with and without zero_infinity,
repeated labels, zero-length targets and inputs, blank anywhere, padded against concatenated
targets, tensor against tuple lengths, unbatched input, torch's errors; and both of our ways to
the gradient (the stacked recursion for small inputs, the blocked beta for large ones) on the
harness's cases."""

from __future__ import annotations

import unittest
from unittest import mock

import torch
from parameterized import parameterized

import mylosses
import mylosses.functional as M
from compare.parity import run_case
from compare.registry import REGISTRY
from mylosses.losses import ctc
from tests._support import assert_close_to_torch, find_cases

F = torch.nn.functional
f64 = torch.float64


def _log_probs(t: int, n: int, c: int, seed: int = 0, dtype: torch.dtype = f64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, n, c, generator=g, dtype=f64)
    return (x - x.logsumexp(-1, keepdim=True)).to(dtype)


def _both(lp: torch.Tensor, *args: object, **kwargs: object) -> None:
    """Forward and gradient of ours against torch's (the same convention)."""
    results = []
    for fn in (M.ctc_loss, F.ctc_loss):
        x = lp.detach().clone().requires_grad_()
        out = fn(x, *args, **kwargs)
        weights = torch.arange(1, out.numel() + 1, dtype=out.dtype).reshape(out.shape)
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad))
    assert_close_to_torch(results[0][0], results[1][0], "loss")
    assert_close_to_torch(results[0][1], results[1][1], "grad log_probs")


REDUCTIONS = ("none", "mean", "sum")


class TestCTC(unittest.TestCase):
    @parameterized.expand([(r, z) for r in REDUCTIONS for z in (False, True)])
    def test_gradcheck_through_log_softmax(self, reduction: str, zero_infinity: bool) -> None:
        """torch's convention (exp(log_probs) - occupancy) is the right logit gradient through
        a log_softmax: gradcheck and gradgradcheck there (torch itself has no double backward);
        sample 2 is impossible (3 repeated labels need 5 steps, it has 4)."""
        targets = torch.tensor([[1, 2, 2, 3], [1, 1, 1, 1], [4, 4, 4, 0]])
        il, tl = (6, 5, 4), (4, 3, 3)
        z = torch.randn(6, 3, 5, dtype=f64, generator=torch.Generator().manual_seed(1))
        z.requires_grad_()

        def f(z: torch.Tensor) -> torch.Tensor:
            lp = z - z.logsumexp(-1, keepdim=True)
            return M.ctc_loss(lp, targets, il, tl, reduction=reduction, zero_infinity=zero_infinity)

        if not zero_infinity:
            self.assertTrue(torch.isinf(f(z.detach())).any())
            targets = targets[:2]
            il, tl = il[:2], tl[:2]
            z = z[:, :2].detach().requires_grad_()
        self.assertTrue(torch.autograd.gradcheck(f, (z,)))
        self.assertTrue(torch.autograd.gradgradcheck(f, (z,)))

    @parameterized.expand([(r, z) for r in REDUCTIONS for z in (False, True)])
    def test_impossible_and_empty_targets(self, reduction: str, zero_infinity: bool) -> None:
        targets = torch.tensor([[1, 1, 1, 1], [2, 2, 0, 0], [3, 1, 2, 0], [1, 0, 0, 0]])
        _both(
            _log_probs(6, 4, 5),
            targets,
            (6, 3, 4, 0),
            (4, 2, 0, 1),
            reduction=reduction,
            zero_infinity=zero_infinity,
        )

    @parameterized.expand([(b,) for b in (0, 2, 4)])
    def test_blank_anywhere_concatenated_and_tuples(self, blank: int) -> None:
        labels = [k for k in range(5) if k != blank]
        padded = torch.tensor([[labels[0], labels[1], labels[1]], [labels[2], labels[3], 0]])
        flat = torch.tensor([labels[0], labels[1], labels[1], labels[2], labels[3]])
        lp = _log_probs(7, 2, 5, seed=blank)
        _both(lp, padded, torch.tensor([7, 6]), torch.tensor([3, 2]), blank=blank)
        _both(lp, flat, (7, 6), (3, 2), blank=blank, reduction="sum")

    def test_unbatched(self) -> None:
        lp = _log_probs(8, 1, 4)[:, 0]
        for reduction in REDUCTIONS:
            _both(
                lp, torch.tensor([1, 2, 2]), torch.tensor(8), torch.tensor(3), reduction=reduction
            )

    def test_float32_long(self) -> None:
        lp = _log_probs(200, 4, 12, dtype=torch.float32)
        targets = torch.randint(1, 12, (4, 40), generator=torch.Generator().manual_seed(3))
        _both(lp, targets, (200, 180, 150, 120), (40, 30, 20, 10))

    def test_confident_blank(self) -> None:
        """A label far less likely than the blank at every step still carries every alignment:
        its gradient is -1/T per step, not 0 (the occupancy must be shifted by the largest
        posterior, not by the largest alpha + beta)."""
        for dtype, low in ((torch.float32, -120.0), (f64, -800.0)):
            lp = torch.full((4, 1, 3), -1.0, dtype=dtype)
            lp[:, 0, 0] = 0.0
            lp[:, 0, 1] = low
            _both(lp, torch.tensor([[1]]), (4,), (1,), reduction="sum")

    def test_nan_where_no_skip_is_allowed(self) -> None:
        """torch never reads a state it may not skip from: a NaN there stays out of the loss
        (repeated labels: no skip between them; the target is impossible, zero_infinity)."""
        lp = _log_probs(2, 2, 3)
        lp[0, 0, 1] = float("nan")
        targets = torch.tensor([[1, 1], [2, 1]])
        _both(lp, targets, (2, 2), (2, 2), zero_infinity=True, reduction="none")

    def test_last_step_counts_end_states_only(self) -> None:
        """At t = T_n - 1 torch's gradient takes the two end states only: a NaN that has
        reached other states by then (but not the end states, so the loss is finite) stays out
        of it."""
        lp = _log_probs(8, 2, 6)
        lp[5, 0, 1] = float("nan")
        targets = torch.tensor([[1, 2, 3, 4], [2, 3, 4, 5]])
        _both(lp, targets, (8, 8), (4, 4), reduction="none")

    def test_positive_infinity(self) -> None:
        """torch's log-sum-exp subtracts its largest term: a +inf it reads becomes NaN, a +inf
        in the last step stays, and an empty target's loss is -inf there (no log-sum-exp)."""
        inf = float("inf")
        for values in ([1.0, inf], [inf, 1.0], [inf, inf], [inf], [2.0, -inf], [-inf, inf]):
            for blank_only in (True, False):
                with self.subTest(values=values, empty_target=blank_only):
                    lp = torch.tensor(values, dtype=f64)[:, None, None].expand(-1, 1, 2).clone()
                    lp[:, 0, 1] = 0.5
                    targets = torch.zeros(0 if blank_only else 1, dtype=torch.long) + 1
                    tl = (0,) if blank_only else (1,)
                    _both(lp, targets, (len(values),), tl, reduction="none")

    def test_half_before_empty(self) -> None:
        """torch checks the dtype before the size: empty half input is NotImplementedError."""
        lp = torch.zeros(0, 2, 5, dtype=torch.float16)
        for fn in (F.ctc_loss, M.ctc_loss):
            with self.assertRaises(NotImplementedError):
                fn(lp, torch.zeros(2, dtype=torch.long), (0, 0), (1, 1))

    @parameterized.expand([("stacked", 1 << 62), ("blocked", 0)])
    def test_both_paths_on_drawn_cases(self, _: str, limit: int) -> None:
        """Each way to the gradient on the same drawn cases (forced, whatever their size)."""
        spec = REGISTRY["CTCLoss"]
        cases = find_cases("CTCLoss", lambda c: c.grad_inputs() != [], count=60)
        with mock.patch.object(ctc, "_STACKED", limit):
            for case in cases:
                with self.subTest(seed=case.seed, label=case.label):
                    result = run_case(spec, case)
                    self.assertTrue(result.ok, result.failures)

    def test_module(self) -> None:
        lp = _log_probs(6, 2, 5).requires_grad_()
        targets = torch.tensor([[1, 2], [3, 3]])
        ours = mylosses.CTCLoss(blank=0, reduction="sum", zero_infinity=True)
        theirs = torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)
        self.assertIsInstance(ours, torch.nn.CTCLoss)
        assert_close_to_torch(
            ours(lp, targets, (6, 6), (2, 2)), theirs(lp, targets, (6, 6), (2, 2))
        )

    @parameterized.expand(
        [
            ("il_too_long", (7, 6), (2, 2), 0, RuntimeError),
            ("il_negative", (-1, 6), (2, 2), 0, RuntimeError),
            ("tl_negative", (6, 6), (-1, 2), 0, RuntimeError),
            ("tl_too_long", (6, 6), (3, 2), 0, RuntimeError),
            ("blank_too_big", (6, 6), (2, 2), 5, RuntimeError),
            ("blank_negative", (6, 6), (2, 2), -1, RuntimeError),
            ("sizes", (6,), (2, 2), 0, RuntimeError),
        ]
    )
    def test_errors(self, _: str, il: tuple, tl: tuple, blank: int, error: type) -> None:
        lp = _log_probs(6, 2, 5)
        targets = torch.tensor([[1, 2], [3, 3]])
        with self.assertRaises(error) as theirs:
            F.ctc_loss(lp, targets, il, tl, blank=blank)
        with self.assertRaises(error) as ours:
            M.ctc_loss(lp, targets, il, tl, blank=blank)
        self.assertEqual(str(ours.exception), str(theirs.exception))

    def test_type_errors(self) -> None:
        lp = _log_probs(6, 2, 5)
        targets = torch.tensor([[1, 2], [3, 3]])
        for il, tl, error in (
            (torch.tensor([6, 6]), (2, 2), TypeError),
            (torch.tensor([6.0, 6.0]), torch.tensor([2, 2]), RuntimeError),
            (6, 2, TypeError),
        ):
            with self.assertRaises(error):
                F.ctc_loss(lp, targets, il, tl)
            with self.assertRaises(error):
                M.ctc_loss(lp, targets, il, tl)
        for dtype in (torch.float16, torch.bfloat16):
            with self.assertRaises(NotImplementedError):
                M.ctc_loss(lp.to(dtype), targets, (6, 6), (2, 2))


if __name__ == "__main__":
    unittest.main()
