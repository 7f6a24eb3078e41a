"""Exception and warning parity with torch for bad input, for every loss where it applies.

Each test starts from a valid call of the loss (a case compare's generator draws and torch runs
cleanly) and breaks one thing: an invalid reduction, shapes that do not broadcast, a weight of
the wrong size, integer/bool/complex tensors, a bad scalar option (delta, beta, ...), a
broadcast that torch warns about. mylosses must then do what torch does: raise the same
exception type at the same moment (construction or call) with torch's message or one that names
the problem, emit the same warnings, or, where torch accepts the input (L1 on complex or on
integers with 'sum'/'none', an integer input with a float target, ...), return the same values.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import unittest
import warnings
from collections.abc import Callable
from typing import Any

import torch
from parameterized import parameterized

from compare.cases import Case
from compare.parity import assert_same_exception
from compare.tolerances import compare_tensors
from tests._support import (
    ENTRIES,
    LOSS_NAMES,
    broadcasts,
    entry,
    failure_message,
    find_cases,
    fresh,
    has_tag,
    iter_cases,
    ordinary,
    param_rows,
    params_label,
    safe_name,
    scalar_params,
    torch_runs_cleanly,
)

REDUCTIONS = ("none", "mean", "sum")


# -- the valid calls each test breaks ----------------------------------------------------------


def _plain(case: Case) -> bool:
    """A clean float32 call with a module form, no weight, and a last dim of at least 2."""
    a = case.args
    return (
        ordinary(case)
        and case.ctor is not None
        and "weight" not in case.kwargs
        and len(a) >= 2
        and all(isinstance(t, torch.Tensor) for t in a[:2])
        and a[0].dtype == torch.float32
        and a[0].dim() >= 1
        and a[0].shape[-1] >= 2
        and (a[1].shape == a[0].shape or not a[1].is_floating_point())
        and torch_runs_cleanly(case)
    )


@functools.cache
def broadcasting(name: str) -> bool:
    """Whether input and target broadcast against each other for this loss (its generator
    draws broadcast cases): then torch warns about, or rejects, shapes that differ."""
    return any(has_tag(c, "bcast") and broadcasts(c) for c in iter_cases(name, 300))


def _weighted(case: Case) -> bool:
    a = case.args
    return (
        ordinary(case)
        and "weight" in case.kwargs
        and a[0].dtype == torch.float32
        and a[0].dim() >= 2
        and a[0].shape[-1] >= 2
        and torch_runs_cleanly(case)
    )


@functools.cache
def _base(name: str) -> Case:
    return find_cases(name, _plain)[0]


@functools.cache
def _weighted_base(name: str) -> Case:
    return find_cases(name, _weighted)[0]


def base(name: str) -> Case:
    return fresh(_base(name))


def weighted_base(name: str) -> Case:
    return fresh(_weighted_base(name))


def _takes(name: str, parameter: str) -> bool:
    """Whether the installed torch's functional takes ``parameter`` (and so it is compared)."""
    return parameter in inspect.signature(entry(name).torch_function).parameters


WEIGHTED = [e.name for e in ENTRIES if _takes(e.name, "weight")]


def _float_params(name: str) -> list[str]:
    params = inspect.signature(entry(name).torch_function).parameters.values()
    return [p.name for p in params if isinstance(p.default, float)]


def _fresh(shape: tuple[int, ...], like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if like.is_floating_point():
        return torch.randn(shape, generator=g, dtype=torch.float64).to(like.dtype)
    return torch.randint(0, 2, shape, generator=g).to(like.dtype)


# -- the comparison ----------------------------------------------------------------------------


def _outcome(call: Callable[[], Any]) -> tuple[Any, Exception | None, list[tuple[type, str]]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error = call(), None
        except Exception as e:
            result, error = None, e
    return result, error, [(w.category, str(w.message)) for w in caught]


class _Parity(unittest.TestCase):
    def assert_same_behaviour(
        self,
        ours: Callable[[], Any],
        theirs: Callable[[], Any],
        case: Case,
        *,
        names: tuple[str, ...] = (),
        torch_raises: bool | None = None,
        note: str = "",
    ) -> Exception | None:
        """Same exception type (message torch's, or naming each of ``names``), same warnings,
        or the same result. ``torch_raises`` states what the test expects of torch, so that a
        test cannot pass vacuously."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # compared below
                torch_error = assert_same_exception(ours, theirs)
        except AssertionError as e:
            self.fail(failure_message(case, [str(e)], note))
        r_ours, e_ours, w_ours = _outcome(ours)
        r_theirs, e_theirs, w_theirs = _outcome(theirs)
        if torch_raises is not None:
            self.assertEqual(
                torch_error is not None, torch_raises, f"torch's behaviour changed: {torch_error!r}"
            )
        self.assertEqual(w_ours, w_theirs, failure_message(case, ["warnings differ"], note))
        if torch_error is not None:
            m_ours, m_theirs = str(e_ours), str(e_theirs)
            if m_ours != m_theirs:
                missing = [n for n in names if n.lower() not in m_ours.lower()]
                self.assertTrue(
                    names and not missing,
                    failure_message(
                        case,
                        [
                            f"message {m_ours!r} is not torch's {m_theirs!r} and does not name "
                            f"{missing or 'the problem'}"
                        ],
                        note,
                    ),
                )
            return e_ours
        message = compare_tensors("output", r_ours, r_theirs)
        if message:
            self.fail(failure_message(case, [message], note))
        return None


def _calls(name: str, case: Case) -> tuple[Callable[[], Any], Callable[[], Any]]:
    e = entry(name)

    def ours() -> Any:
        c = case.clone()
        return e.function(*c.args, **c.kwargs)

    def theirs() -> Any:
        c = case.clone()
        return e.torch_function(*c.args, **c.kwargs)

    return ours, theirs


def _module_calls(
    name: str, ctor: dict[str, Any], case: Case
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    e = entry(name)

    def ours() -> Any:
        c = case.clone()
        return e.module(**ctor)(*c.args)

    def theirs() -> Any:
        c = case.clone()
        return e.torch_module(**ctor)(*c.args)

    return ours, theirs


# -- the tests ---------------------------------------------------------------------------------


class TestReduction(_Parity):
    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_invalid_reduction(self, name: str) -> None:
        for bad in ("foo", "Mean", "batchmean", ""):
            with self.subTest(reduction=bad):
                case = base(name)
                case.kwargs["reduction"] = bad
                if _outcome(_calls(name, case)[1])[1] is None:
                    # A name this loss defines ('batchmean' of KLDivLoss): the same result.
                    self.assert_same_behaviour(*_calls(name, case), case, torch_raises=False)
                    continue
                self.assert_same_behaviour(
                    *_calls(name, case), case, names=(bad,), torch_raises=True
                )
                # The module raises when called, like torch's (construction accepts anything).
                ours_ctor, theirs_ctor = _module_calls(name, {"reduction": bad}, case)
                self.assert_same_behaviour(
                    ours_ctor, theirs_ctor, case, names=(bad,), torch_raises=True
                )
                self.assertEqual(entry(name).module(reduction=bad).reduction, bad)

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_elementwise_mean_warns_and_means(self, name: str) -> None:
        case = base(name)
        case.kwargs["reduction"] = "elementwise_mean"
        if _outcome(_calls(name, case)[1])[1] is not None:
            # A loss composed in Python that compares the name itself (as the weighted paths
            # do) rejects the deprecated name: then so must ours, functional and module.
            self.assert_same_behaviour(
                *_calls(name, case), case, names=("elementwise_mean",), torch_raises=True
            )
            self.assert_same_behaviour(
                *_module_calls(name, {"reduction": "elementwise_mean"}, case),
                case,
                names=("elementwise_mean",),
                torch_raises=True,
            )
            return
        self.assert_same_behaviour(*_calls(name, case), case, torch_raises=False)
        self.assert_same_behaviour(
            *_module_calls(name, {"reduction": "elementwise_mean"}, case), case, torch_raises=False
        )
        # ... and it is the mean (the maths, not just torch's say-so).
        mean = case.clone()
        mean.kwargs["reduction"] = "mean"
        ours, _ = _calls(name, case)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = ours()
        self.assertTrue(any("elementwise_mean" in str(w.message) for w in caught))
        expected = entry(name).function(*mean.args, **mean.kwargs)
        torch.testing.assert_close(value, expected, rtol=0, atol=0)

    @parameterized.expand([(n,) for n in WEIGHTED], name_func=safe_name)
    def test_weighted_invalid_reductions_raise(self, name: str) -> None:
        for bad in ("elementwise_mean", "foo"):
            with self.subTest(reduction=bad):
                case = weighted_base(name)
                case.kwargs["reduction"] = bad
                # (torch's Python weighted paths reject 'elementwise_mean'; a native weighted
                # kernel, nll_loss's, takes it with the deprecation warning: parity decides)
                self.assert_same_behaviour(
                    *_calls(name, case),
                    case,
                    names=(bad,),
                    torch_raises=True if bad == "foo" else None,
                )


class TestShapes(_Parity):
    @parameterized.expand(
        [(n, which) for n in LOSS_NAMES for which in ("input", "target")], name_func=safe_name
    )
    def test_non_broadcastable(self, name: str, which: str) -> None:
        case = base(name)
        i = 0 if which == "input" else 1
        shape = list(case.args[i].shape)
        other = case.args[1 - i].shape[-1]
        shape[-1] = other + 1
        args = list(case.args)
        args[i] = _fresh(tuple(shape), args[i]).requires_grad_(args[i].requires_grad)
        case.args = tuple(args)
        sizes = (str(other + 1), str(other))
        raises = True if broadcasting(name) else None
        self.assert_same_behaviour(*_calls(name, case), case, names=sizes, torch_raises=raises)
        self.assert_same_behaviour(
            *_module_calls(name, case.ctor, case), case, names=sizes, torch_raises=raises
        )

    @parameterized.expand(
        [(n, how) for n in LOSS_NAMES for how in ("leading", "suffix", "ones")],
        name_func=safe_name,
    )
    def test_size_mismatch_warning(self, name: str, how: str) -> None:
        """A target that broadcasts but differs in size: what torch does (the elementwise
        losses warn, word for word, pointing at the caller's line, then broadcast; others raise,
        or take the shapes without a word), ours does too."""
        case = base(name)
        t = case.args[1].detach()
        if how == "leading":
            t = t.unsqueeze(0)
        elif how == "suffix":
            t = t[0]
        else:
            t = t[..., :1]
        rest = case.args[2:]  # a third argument (a pair loss's target) stays as it is
        case.args = (case.args[0], t.clone().requires_grad_(case.args[1].requires_grad), *rest)
        # Where input and target broadcast, torch takes a smaller target (SoftMargin raises
        # on a larger one). (Of a loss with more arguments, expect only parity with torch.)
        expected = False if broadcasting(name) and how != "leading" and not rest else None
        self.assert_same_behaviour(*_calls(name, case), case, torch_raises=expected)
        self.assert_same_behaviour(
            *_module_calls(name, case.ctor, case), case, torch_raises=expected
        )
        places: dict[str, list[str]] = {}
        for side, call in zip(("ours", "torch"), _calls(name, case), strict=True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with contextlib.suppress(Exception):  # its parity is checked above
                    call()
            places[side] = [w.filename for w in caught if "target size" in str(w.message)]
        self.assertEqual(places["ours"], places["torch"], "the warning should point at the caller")
        self.assertIn(places["torch"], ([], [__file__]), "torch warns once, or not at all")

    @parameterized.expand([(n,) for n in WEIGHTED], name_func=safe_name)
    def test_weight_of_the_wrong_size(self, name: str) -> None:
        base_case = weighted_base(name)
        w = base_case.kwargs["weight"]
        shapes = {
            "longer": (*w.shape[:-1], w.shape[-1] + 1),
            "extra dim": (*w.shape, 2),
            "broadcastable": (1, *w.shape[1:]),
            "fewer dims": tuple(w.shape[1:]),
        }
        for what, shape in shapes.items():
            if tuple(shape) == tuple(w.shape):
                continue
            with self.subTest(weight=what, shape=shape):
                case = base_case.clone()
                case.kwargs["weight"] = _fresh(tuple(shape), w).abs()
                self.assert_same_behaviour(
                    *_calls(name, case),
                    case,
                    names=("weight",),
                    torch_raises=None if _broadcasts_into(shape, case.args[0].shape) else True,
                )


def _broadcasts_into(shape: tuple[int, ...], into: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``into`` without growing it (a weight that
    does is valid for the losses that broadcast their weight, and torch need not raise)."""
    try:
        return torch.broadcast_shapes(shape, into) == into
    except RuntimeError:
        return False


DTYPE_ROWS = [
    (n, dtype, where, reduction, params_label(params))
    for n in LOSS_NAMES
    for dtype in ("int64", "int32", "uint8", "bool", "complex64", "complex128")
    for where in ("both", "input", "target")
    for reduction in REDUCTIONS
    for params in param_rows(n)
]


def _with_params(case: Case, label: str) -> Case:
    """``case`` with its scalar options (delta, beta, ...) replaced by the row's."""
    params = next(p for p in param_rows(case.loss) if params_label(p) == label)
    old = scalar_params(case)
    case.kwargs = {k: v for k, v in case.kwargs.items() if k not in old} | params
    if case.ctor is not None:
        case.ctor = {k: v for k, v in case.ctor.items() if k not in old} | params
    return case


class TestDtypes(_Parity):
    @parameterized.expand(DTYPE_ROWS, name_func=safe_name)
    def test_dtype(
        self, name: str, dtype_name: str, where: str, reduction: str, params: str
    ) -> None:
        """Integer, bool and complex tensors: torch's exception (NotImplementedError or
        RuntimeError, message naming the kernel and type) or torch's result; under each value
        class of the scalar options (SmoothL1's beta=0 takes another path)."""
        dtype = getattr(torch, dtype_name)
        case = _with_params(base(name), params)
        case.kwargs["reduction"] = reduction
        args = list(case.args)
        for i in {"both": (0, 1), "input": (0,), "target": (1,)}[where]:
            t = args[i].detach()
            if dtype.is_complex:
                t = t.to(torch.float64)  # (an integer tensor, a class index, too)
                t = torch.complex(t, t.flip(-1)).to(dtype)
            elif dtype == torch.bool:
                t = t > 0
            elif not (t.is_floating_point() or t.is_complex()):
                # already integral (class indices, CTC labels): keep the values, which a loss
                # may not check (torch's ctc_loss reads out of bounds for labels >= C)
                t = t.abs().to(dtype) if dtype == torch.uint8 else t.to(dtype)
            elif dtype == torch.uint8:
                t = (t * 4).abs().round().to(dtype)
            else:
                t = (t * 4).round().to(dtype)
            args[i] = t
        for i in range(2):
            if args[i].requires_grad and not args[i].is_floating_point():
                args[i] = args[i].detach()
        case.args = tuple(args)
        type_names = {
            torch.int64: "Long",
            torch.int32: "Int",
            torch.uint8: "Byte",
            torch.bool: "Bool",
            torch.complex64: "ComplexFloat",
            torch.complex128: "ComplexDouble",
        }
        self.assert_same_behaviour(
            *_calls(name, case),
            case,
            names=(type_names[dtype],),
            note=f"{where} cast to {dtype_name}, reduction={reduction!r}, {params}",
        )


class TestScalarOptions(_Parity):
    @parameterized.expand(
        [
            (n, p, v)
            for n in LOSS_NAMES
            for p in _float_params(n)
            for v in ("0.0", "-1.0", "-0.5", "1e-12", "nan", "inf")
        ],
        name_func=safe_name,
    )
    def test_functional_value(self, name: str, param: str, value: str) -> None:
        """delta <= 0 (Huber) and beta < 0 (SmoothL1) raise RuntimeError; what torch accepts
        (beta = 0, tiny values, inf...) computes torch's numbers."""
        case = base(name)
        case.kwargs[param] = float(value)
        self.assert_same_behaviour(*_calls(name, case), case, names=(param,))

    @parameterized.expand(
        [
            (n, p, v)
            for n in LOSS_NAMES
            for p in _float_params(n)
            for v in ("a", "None", "0", "-1", "2", "True")
        ],
        name_func=safe_name,
    )
    def test_module_value(self, name: str, param: str, value: str) -> None:
        """HuberLoss(delta="a") is a TypeError at construction, as in torch; whatever torch
        constructs behaves as torch's when called."""
        v = {"a": "a", "None": None, "0": 0, "-1": -1, "2": 2, "True": True}[value]
        e = entry(name)
        case = base(name)
        _, e_theirs, _ = _outcome(lambda: e.torch_module(**{param: v}))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert_same_exception(
                    lambda: e.module(**{param: v}), lambda: e.torch_module(**{param: v})
                )
        except AssertionError as err:
            self.fail(f"{name}({param}={v!r}) at construction: {err}")
        if e_theirs is None:
            self.assert_same_behaviour(*_module_calls(name, {param: v}, case), case, names=(param,))


if __name__ == "__main__":
    unittest.main()
