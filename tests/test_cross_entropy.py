"""CrossEntropyLoss and NLLLoss: what the generic tests cannot express.

- gradcheck and gradgradcheck (float64) over a table of every option combination: reduction x
  weight x ignore_index (none / a hit inside [0, C)) x label_smoothing x target kind (class
  indices / probabilities) x shape ((C,), (N, C), (N, C, d1, d2), channels-last);
- the weight's gradient with probability targets (torch gives one) and the error torch raises
  for a weight that requires grad with class indices (none under no_grad);
- every target ignored: 'mean' is nan, 'sum' 0, the gradient 0; a zero total weight;
- torch's exact messages for bad calls;
- label_smoothing outside [0, 1]: negative and nan mean no smoothing, above 1 is an error;
- the fused kernel over several blocks of rows, and its one logits-sized buffer;
- the short paths of small plain calls (``_CEShort``, ``_NLLShort``): the Function they run,
  their fallbacks (targets out of range or ignored, non-finite log-probabilities, many
  classes, non-contiguous inputs), their backward (upstream gradient not 1, a retained graph's
  second backward, double backward, batched gradients) and the eval path.
"""

from __future__ import annotations

import itertools
import math
import unittest
import warnings
from typing import Any

import torch
from parameterized import parameterized

import mylosses
from compare.bench import peak_memory
from compare.parity import assert_same_exception
from mylosses import functional as M
from tests._support import assert_close_to_torch, safe_name

F = torch.nn.functional

SHAPES = {"unbatched": (5,), "2d": (4, 5), "4d": (2, 5, 3, 2), "channels_last": (2, 5, 3, 2)}


def _logits(shape_name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPES[shape_name], generator=g, dtype=torch.float64).to(dtype)
    if shape_name == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _classes(shape: tuple[int, ...], C: int = 5, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    return torch.randint(0, C, t_shape, generator=g)


def _probs(shape: tuple[int, ...], seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    dim = 0 if len(shape) == 1 else 1
    return (z - z.logsumexp(dim, keepdim=True)).exp()


GRAD_ROWS = [
    (loss, shape, reduction, weight, ignore, ls, kind)
    for loss in ("ce", "nll")
    for shape in SHAPES
    for reduction in ("none", "mean", "sum")
    for weight in ("noweight", "weight")
    for ignore in ("noignore", "ignore")
    for ls in ("0", "0.3")
    for kind in ("classes", "probs")
    if not (loss == "nll" and (ls != "0" or kind == "probs"))
    and not (kind == "probs" and ignore == "ignore")
]


class TestGradcheckTable(unittest.TestCase):
    @parameterized.expand(GRAD_ROWS, name_func=safe_name)
    def test_gradcheck(
        self, loss: str, shape: str, reduction: str, weight: str, ignore: str, ls: str, kind: str
    ) -> None:
        x = _logits(shape)
        if loss == "nll":  # log-probabilities
            x = (x - x.logsumexp(1 if x.dim() > 1 else 0, keepdim=True)).detach()
            if shape == "channels_last":
                x = x.contiguous()  # (torch's 2-d kernel cannot differentiate that layout)
        kwargs: dict[str, Any] = {"reduction": reduction}
        if weight == "weight":
            kwargs["weight"] = torch.rand(5, generator=torch.Generator().manual_seed(3)).double()
        if ignore == "ignore":
            kwargs["ignore_index"] = 2  # inside [0, C): hits some targets
        if loss == "ce":
            kwargs["label_smoothing"] = float(ls)
        fn = M.cross_entropy if loss == "ce" else M.nll_loss
        inputs: tuple[torch.Tensor, ...]
        if kind == "probs":
            y = _probs(x.shape)
            inputs = (x.requires_grad_(), y.requires_grad_())
            if "weight" in kwargs:
                inputs += (kwargs.pop("weight").requires_grad_(),)

            def f(*t: torch.Tensor) -> torch.Tensor:
                w = t[2] if len(t) > 2 else None
                return fn(t[0], t[1], weight=w, **kwargs)
        else:
            target = _classes(x.shape)
            if ignore == "ignore" and target.numel() > 1:  # one ignored, one not
                target.view(-1)[0] = 2
                target.view(-1)[-1] = 4
            inputs = (x.requires_grad_(),)

            def f(*t: torch.Tensor) -> torch.Tensor:
                return fn(t[0], target, **kwargs)

        # gradcheck perturbs a contiguous copy's values; keep the layout by re-laying inside
        if shape == "channels_last" and loss == "ce":
            g = f

            def f(*t: torch.Tensor) -> torch.Tensor:  # type: ignore[no-redef]
                return g(t[0].contiguous(memory_format=torch.channels_last), *t[1:])

        self.assertTrue(torch.autograd.gradcheck(f, inputs))
        self.assertTrue(torch.autograd.gradgradcheck(f, inputs))


class TestWeightGradient(unittest.TestCase):
    def test_probability_targets_give_the_weight_a_gradient(self) -> None:
        for reduction, ls in itertools.product(("none", "mean", "sum"), (0.0, 0.2)):
            x = _logits("4d")
            y = _probs(x.shape)
            w = torch.rand(5, dtype=torch.float64)
            grads = []
            for fn in (M.cross_entropy, F.cross_entropy):
                a, b, c = (t.clone().requires_grad_() for t in (x, y, w))
                out = fn(a, b, weight=c, reduction=reduction, label_smoothing=ls)
                up = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).double()
                grads.append(torch.autograd.grad(out, (a, b, c), up))
            for ours, theirs in zip(*grads, strict=True):
                assert_close_to_torch(ours, theirs)

    @parameterized.expand([("ce",), ("nll",), ("ce_smooth",)], name_func=safe_name)
    def test_class_indices_reject_a_weight_that_requires_grad(self, which: str) -> None:
        x = _logits("2d").requires_grad_()
        t = _classes(x.shape)
        w = torch.rand(5, dtype=torch.float64, requires_grad=True)
        kw = {"label_smoothing": 0.1} if which == "ce_smooth" else {}
        ours = M.nll_loss if which == "nll" else M.cross_entropy
        theirs = F.nll_loss if which == "nll" else F.cross_entropy
        err = assert_same_exception(
            lambda: ours(x, t, weight=w, **kw),
            lambda: theirs(x, t, weight=w, **kw),
            match_message=True,
        )
        self.assertIsInstance(err, RuntimeError)
        with torch.no_grad():
            assert_close_to_torch(ours(x, t, weight=w, **kw), theirs(x, t, weight=w, **kw))


class TestIgnored(unittest.TestCase):
    @parameterized.expand(
        [
            (loss, r, ls)
            for loss in ("ce", "nll")
            for r in ("mean", "sum", "none")
            for ls in (0, 1)
            if not (loss == "nll" and ls)
        ],
        name_func=safe_name,
    )
    def test_all_targets_ignored(self, loss: str, reduction: str, ls: int) -> None:
        for ignore in (-100, 3):
            x = _logits("4d").requires_grad_()
            t = torch.full(_classes(x.shape).shape, ignore)
            kw: dict[str, Any] = {
                "reduction": reduction,
                "ignore_index": ignore,
                "weight": torch.rand(5, dtype=torch.float64),
            }
            if ls:
                kw["label_smoothing"] = 0.3
            fn = M.cross_entropy if loss == "ce" else M.nll_loss
            out = fn(x, t, **kw)
            if reduction == "mean":
                self.assertTrue(out.isnan().item())
            elif reduction == "sum":
                self.assertEqual(out.item(), 0.0)
            (g,) = torch.autograd.grad(out.sum(), x)
            self.assertTrue(bool((g == 0).all()), "the gradient of ignored targets is 0")

    def test_zero_total_weight_is_torchs_nan(self) -> None:
        x = _logits("2d").requires_grad_()
        t = torch.tensor([1, 1, 0, 1])
        w = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
        for ours, theirs in ((M.cross_entropy, F.cross_entropy), (M.nll_loss, F.nll_loss)):
            res = []
            for fn in (ours, theirs):
                a = x.detach().clone().requires_grad_()
                out = fn(a, t, weight=w, ignore_index=0)
                res.append((out, torch.autograd.grad(out, a)[0]))
            assert_close_to_torch(res[0][0], res[1][0])
            assert_close_to_torch(res[0][1], res[1][1])


BAD_CALLS = {
    "batch": lambda f, x: f(x, torch.tensor([1, 2])),
    "oob": lambda f, x: f(x, torch.tensor([1, 2, 5, 0])),
    "negative": lambda f, x: f(x, torch.tensor([1, 2, -1, 0])),
    "int32": lambda f, x: f(x, torch.tensor([1, 2, 3, 0], dtype=torch.int32)),
    "float_target_1d": lambda f, x: f(x, torch.rand(4)),
    "weight_size": lambda f, x: f(x, torch.tensor([1, 2, 3, 0]), weight=torch.rand(4)),
    "weight_dtype": lambda f, x: f(
        x.float(), torch.tensor([1, 2, 3, 0]), weight=torch.rand(5, dtype=torch.float64)
    ),
    "2d_target": lambda f, x: f(x, torch.zeros(4, 2, dtype=torch.long)),
    "kdim_target": lambda f, x: f(x.view(4, 5, 1), torch.zeros(4, 2, dtype=torch.long)),
    "4d_target_dims": lambda f, x: f(x.view(2, 5, 2, 1), torch.zeros(2, 2, dtype=torch.long)),
    "0d_input": lambda f, x: f(x[0, 0], torch.tensor(0)),
    "1d_input_long_target": lambda f, x: f(x[0], torch.tensor([1, 2])),
    "long_input": lambda f, x: f(x.long(), torch.tensor([1, 2, 3, 0])),
    "ignore_index_float": lambda f, x: f(x, torch.tensor([1, 2, 3, 0]), ignore_index=1.0),
}
CE_BAD_CALLS = {
    "smoothing_above_1": lambda f, x: f(x, torch.tensor([1, 2, 3, 0]), label_smoothing=1.5),
    "prob_long_target": lambda f, x: f(x, torch.ones(4, 5, dtype=torch.long)),
    "prob_ignore_index": lambda f, x: f(x, torch.rand(4, 5), ignore_index=0),
    "prob_weight_size": lambda f, x: f(x, torch.rand(4, 5, dtype=x.dtype), weight=torch.rand(4)),
    "smoothing_str": lambda f, x: f(x, torch.tensor([1, 2, 3, 0]), label_smoothing="a"),
    "smoothing_unbatched_1d_target": lambda f, x: f(x[0], torch.tensor([1]), label_smoothing=0.1),
    "0d_probabilities": lambda f, x: f(x[0, 0], x[1, 1]),
}


class TestMessages(unittest.TestCase):
    @parameterized.expand(
        [(loss, bad) for loss in ("ce", "nll") for bad in BAD_CALLS], name_func=safe_name
    )
    def test_bad_call(self, loss: str, bad: str) -> None:
        x = _logits("2d")
        ours = M.cross_entropy if loss == "ce" else M.nll_loss
        theirs = F.cross_entropy if loss == "ce" else F.nll_loss
        call = BAD_CALLS[bad]
        err = assert_same_exception(
            lambda: call(ours, x), lambda: call(theirs, x), match_message=True
        )
        self.assertIsNotNone(err, "torch accepts this call: the table is wrong")

    @parameterized.expand([(bad,) for bad in CE_BAD_CALLS], name_func=safe_name)
    def test_bad_cross_entropy_call(self, bad: str) -> None:
        x = _logits("2d")
        call = CE_BAD_CALLS[bad]
        err = assert_same_exception(
            lambda: call(M.cross_entropy, x), lambda: call(F.cross_entropy, x), match_message=True
        )
        self.assertIsNotNone(err, "torch accepts this call: the table is wrong")


class TestSmoothingValues(unittest.TestCase):
    @parameterized.expand(
        [(v, k) for v in ("-0.5", "nan", "1.0", "0.0") for k in ("classes", "probs")],
        name_func=safe_name,
    )
    def test_value(self, value: str, kind: str) -> None:
        x = _logits("2d")
        t = _classes(x.shape) if kind == "classes" else _probs(x.shape)
        ls = float(value)
        res = [fn(x, t, label_smoothing=ls) for fn in (M.cross_entropy, F.cross_entropy)]
        assert_close_to_torch(res[0], res[1])


class TestFusedKernel(unittest.TestCase):
    @parameterized.expand(
        [
            (k, r, ls)
            for k in ("classes", "probs")
            for r in ("none", "mean", "sum")
            for ls in (0.0, 0.2)
        ],
        name_func=safe_name,
    )
    def test_many_blocks(self, kind: str, reduction: str, ls: float) -> None:
        """(300, 2000) float32: 65 rows per block, the last one short; and a retained graph's
        second backward gives the same bits as the first (forward's computation again)."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(300, 2000, generator=g) * 3
        t = (
            torch.randint(0, 2000, (300,), generator=g)
            if kind == "classes"
            else _probs((300, 2000)).float()
        )
        w = torch.rand(2000, generator=g)
        outs = []
        for fn in (M.cross_entropy, F.cross_entropy):
            a = x.clone().requires_grad_()
            out = fn(a, t, weight=w, reduction=reduction, label_smoothing=ls)
            up = torch.rand(out.shape, generator=torch.Generator().manual_seed(1))
            first = torch.autograd.grad(out, a, up, retain_graph=True)[0]
            outs.append((out, first))
            if fn is M.cross_entropy:
                second = torch.autograd.grad(out, a, up)[0]
                torch.testing.assert_close(second, first, rtol=0, atol=0)
        assert_close_to_torch(outs[0][0], outs[1][0])
        assert_close_to_torch(outs[0][1], outs[1][1])

    def test_one_logits_sized_buffer(self) -> None:
        """Forward + backward allocate one logits-sized buffer (the gradient) and little else:
        no softmax is kept."""
        x = torch.randn(256, 4096, requires_grad=True)
        t = torch.randint(0, 4096, (256,))

        def step() -> None:
            M.cross_entropy(x, t).backward()
            x.grad = None

        step()
        logits = x.numel() * x.element_size()
        self.assertLess(peak_memory(step, "cpu"), 1.1 * logits)


def _short_call(loss: str, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> list[Any]:
    """Ours and torch's (output, gradient) for the same call, upstream gradient ``up``."""
    up = kw.pop("up", None)
    res = []
    for fn in (M, F):
        f = fn.cross_entropy if loss == "ce" else fn.nll_loss
        a = x.detach().clone().requires_grad_()
        out = f(a, t, **kw)
        g = torch.ones_like(out) if up is None else torch.full_like(out, up)
        res.append((out, torch.autograd.grad(out, a, g)[0], out.grad_fn))
    return res


SHORT_ROWS = [
    (loss, red, dtype)
    for loss in ("ce", "nll")
    for red in ("mean", "sum")
    for dtype in ("32", "64")
]


class TestShortPath(unittest.TestCase):
    """Small plain calls: a Function of their own, and every way out of it."""

    def _same(self, loss: str, x: torch.Tensor, t: torch.Tensor, short: bool, **kw: Any) -> None:
        (out, grad, node), (t_out, t_grad, _) = _short_call(loss, x, t, **kw)
        assert_close_to_torch(out, t_out)
        assert_close_to_torch(grad, t_grad)
        name = type(node).__name__
        self.assertEqual("Short" in name, short, f"{name}: short path expected: {short}")

    @parameterized.expand(SHORT_ROWS, name_func=safe_name)
    def test_plain(self, loss: str, reduction: str, dtype: str) -> None:
        x = _logits("2d", getattr(torch, f"float{dtype}"))
        if loss == "nll":
            x = x.log_softmax(1)
        t = _classes(x.shape)
        self._same(loss, x, t, True, reduction=reduction)
        self._same(loss, x, t, True, reduction=reduction, up=0.5)
        with torch.no_grad():
            ours = (M.cross_entropy if loss == "ce" else M.nll_loss)(x, t, reduction=reduction)
        theirs = (F.cross_entropy if loss == "ce" else F.nll_loss)(x, t, reduction=reduction)
        assert_close_to_torch(ours, theirs)

    @parameterized.expand([("ce",), ("nll",)], name_func=safe_name)
    def test_targets_out_of_range_or_ignored(self, loss: str) -> None:
        x = _logits("2d")
        ours = M.cross_entropy if loss == "ce" else M.nll_loss
        theirs = F.cross_entropy if loss == "ce" else F.nll_loss
        for bad in (5, -1, 99):
            t = _classes(x.shape)
            t[2] = bad
            err = assert_same_exception(
                lambda t=t: ours(x, t), lambda t=t: theirs(x, t), match_message=True
            )
            self.assertIsNotNone(err)
        t = _classes(x.shape)
        t[1] = -100  # the default ignore_index: the general path
        self._same(loss, x, t, False)
        t = torch.tensor([1, 2, 2, 3])
        self._same(loss, x, t, False, ignore_index=2)  # an ignore_index that is there
        self._same(loss, x, t, loss == "ce", ignore_index=4)  # (CE looks: not there)
        self._same(loss, x, t, True, ignore_index=7)  # beyond the classes: never a target

    @parameterized.expand(
        [(k, d) for k in ("-inf", "inf", "nan", "target -inf") for d in ("32", "64")],
        name_func=safe_name,
    )
    def test_nll_non_finite_log_probabilities(self, kind: str, dtype: str) -> None:
        """0 * inf must not reach the loss: a log-probability of -inf elsewhere than at the
        target leaves it finite (as torch), one at the target makes it inf."""
        x = _logits("2d", getattr(torch, f"float{dtype}")).log_softmax(1)
        t = _classes(x.shape)
        value = {"-inf": -math.inf, "inf": math.inf, "nan": math.nan}.get(kind, -math.inf)
        x[0, (int(t[0]) + 1) % 5] = value
        if kind == "target -inf":
            x[1, int(t[1])] = -math.inf
        for reduction in ("mean", "sum"):
            self._same("nll", x, t, True, reduction=reduction)

    def test_nll_many_classes_and_layouts(self) -> None:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(6, 300, generator=g, dtype=torch.float64).log_softmax(1)
        t = torch.randint(0, 300, (6,), generator=g)
        self._same("nll", x, t, True)  # (zeros with -r scattered in, the loss gathered)
        xt = torch.randn(5, 6, generator=g, dtype=torch.float64).log_softmax(0).t()
        self._same("nll", xt, torch.randint(0, 5, (6,), generator=g), True)  # transposed
        self._same("ce", xt, torch.randint(0, 5, (6,), generator=g), False)

    @parameterized.expand([("ce",), ("nll",)], name_func=safe_name)
    def test_second_backward_and_double_backward(self, loss: str) -> None:
        x = _logits("2d").requires_grad_()
        t = _classes(x.shape)
        f = M.cross_entropy if loss == "ce" else M.nll_loss
        out = f(x, t)
        self.assertIn("Short", type(out.grad_fn).__name__)
        first = torch.autograd.grad(out, x, retain_graph=True)[0]
        first_copy = first.clone()
        first.mul_(3.0)  # (the stashed gradient was handed out: ours no more)
        second = torch.autograd.grad(out, x, retain_graph=True)[0]
        torch.testing.assert_close(second, first_copy, rtol=0, atol=0)
        (g,) = torch.autograd.grad(f(x, t), x, create_graph=True)
        (g_t,) = torch.autograd.grad(
            F.cross_entropy(x, t) if loss == "ce" else F.nll_loss(x, t), x, create_graph=True
        )
        assert_close_to_torch(g, g_t)
        v = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(4))
        if loss == "ce":  # (NLL's gradient does not depend on the input: no second derivative)
            hv = torch.autograd.grad((g * v).sum(), x)[0]
            hv_t = torch.autograd.grad((g_t * v).sum(), x)[0]
            assert_close_to_torch(hv, hv_t)
        self.assertTrue(
            torch.autograd.gradgradcheck(lambda a: f(a, t), (x.detach().requires_grad_(),))
        )

    @parameterized.expand([("ce",), ("nll",)], name_func=safe_name)
    def test_batched_upstream_gradients(self, loss: str) -> None:
        x = _logits("2d").requires_grad_()
        t = _classes(x.shape)
        f = M.cross_entropy if loss == "ce" else M.nll_loss
        ups = torch.tensor([1.0, 2.0, -0.5], dtype=x.dtype)
        ours = torch.autograd.grad(f(x, t), x, ups, is_grads_batched=True)[0]
        g_t = F.cross_entropy if loss == "ce" else F.nll_loss
        theirs = torch.autograd.grad(g_t(x, t), x, ups, is_grads_batched=True)[0]
        assert_close_to_torch(ours, theirs)


class TestModules(unittest.TestCase):
    def test_module_options(self) -> None:
        x = _logits("4d")
        t = _classes(x.shape)
        w = torch.rand(5, dtype=torch.float64)
        for ctor in (
            {"weight": w, "ignore_index": 1, "label_smoothing": 0.2},
            {"reduction": "sum"},
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = mylosses.CrossEntropyLoss(**ctor)(x, t)
                theirs = torch.nn.CrossEntropyLoss(**ctor)(x, t)
            assert_close_to_torch(ours, theirs)


if __name__ == "__main__":
    unittest.main()
