"""Module and functional parity with torch.nn, for every loss in the registry.

A drop-in replacement must be indistinguishable where code looks: ``isinstance``, the
constructor's, ``forward``'s and the functional's signatures, buffers and ``state_dict`` (both
ways through ``load_state_dict``), pickling, ``repr``, the legacy ``size_average``/``reduce``
arguments with torch's warnings, and the module call agreeing with the functional call.

Constructor arguments come from compare's case generators (each case with a ``ctor`` is a
valid module construction), so a weighted loss is constructed with a weight buffer without this
file knowing which losses have one.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import pickle
import unittest
import warnings
from typing import Any

import torch
from parameterized import parameterized

import mylosses
import mylosses.functional
from compare.cases import Case
from compare.tolerances import compare_tensors
from tests._support import (
    ENTRIES,
    LOSS_NAMES,
    assert_tensors_equal,
    entry,
    failure_message,
    find_cases,
    fresh,
    iter_cases,
    safe_name,
    spec,
    torch_runs_cleanly,
)

LEGACY = [
    (size_average, reduce)
    for size_average in (None, True, False)
    for reduce in (None, True, False)
    if (size_average, reduce) != (None, None)
]
CTOR_SCAN = 400


def _key(ctor: dict[str, Any]) -> str:
    """A constructor's class: its argument names, strings and booleans by value, numbers by
    sign, tensors by shape (different deltas are one class, a weight of another shape not)."""

    def cls(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return f"tensor{list(v.shape)}"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return "zero" if v == 0 else "pos" if v > 0 else "neg"
        return repr(v)

    return repr(sorted((k, cls(v)) for k, v in ctor.items()))


@functools.cache
def ctors(name: str) -> tuple[dict[str, Any], ...]:
    """Constructor kwargs of loss ``name`` that torch accepts without a warning, one of each
    class: ``{}`` and the ``ctor`` of compare's generated cases (weights, deltas, reductions)."""
    found: dict[str, dict[str, Any]] = {_key({}): {}}
    for case in iter_cases(name, CTOR_SCAN):
        if case.ctor is None or _key(case.ctor) in found:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                spec(name).torch_module(**case.ctor)
            except Exception:
                continue
        if not caught:
            found[_key(case.ctor)] = case.ctor
    return tuple(found.values())


def _ctor_rows() -> list[tuple[str, int]]:
    return [(name, i) for name in LOSS_NAMES for i in range(len(ctors(name)))]


def _both(name: str, ctor: dict[str, Any]) -> tuple[torch.nn.Module, torch.nn.Module]:
    e = entry(name)
    return e.module(**copy.deepcopy(ctor)), e.torch_module(**copy.deepcopy(ctor))


def _signature(fn: Any) -> inspect.Signature:
    # Annotations as objects: ours are strings under `from __future__ import annotations`.
    return inspect.signature(fn, eval_str=True)


def _valid_module_cases(name: str, count: int = 3) -> list[Case]:
    """The first ``count`` cases with a module form that torch runs without complaint."""
    return [fresh(c) for c in _valid_module_cases_cached(name, count)]


@functools.cache
def _valid_module_cases_cached(name: str, count: int) -> tuple[Case, ...]:
    return tuple(find_cases(name, lambda c: c.ctor is not None and torch_runs_cleanly(c), count))


class TestExports(unittest.TestCase):
    @parameterized.expand([(e.name,) for e in ENTRIES], name_func=safe_name)
    def test_exported_names(self, name: str) -> None:
        e = entry(name)
        self.assertIs(getattr(mylosses, e.name), e.module)
        self.assertIs(getattr(mylosses.functional, e.functional_name), e.function)
        self.assertIn(e.name, mylosses.__all__)
        self.assertIn(e.functional_name, mylosses.functional.__all__)
        self.assertEqual(e.module.__name__, e.torch_module.__name__)
        self.assertEqual(e.function.__name__, e.torch_function.__name__)

    @parameterized.expand([(e.name,) for e in ENTRIES], name_func=safe_name)
    def test_pairs_with_torch(self, name: str) -> None:
        e = entry(name)
        self.assertIs(e.torch_module, getattr(torch.nn, name))
        self.assertIs(e.torch_function, getattr(torch.nn.functional, e.functional_name))
        self.assertIsNot(e.module, e.torch_module)
        self.assertIsNot(e.function, e.torch_function)


class TestSignatures(unittest.TestCase):
    @parameterized.expand([(e.name,) for e in ENTRIES], name_func=safe_name)
    def test_isinstance(self, name: str) -> None:
        e = entry(name)
        for ctor in ctors(name):
            with self.subTest(ctor=ctor):
                ours, _ = _both(name, ctor)
                self.assertIsInstance(ours, e.torch_module)
                self.assertIsInstance(ours, torch.nn.Module)
                self.assertTrue(issubclass(e.module, e.torch_module))

    @parameterized.expand(
        [(e.name, what) for e in ENTRIES for what in ("__init__", "forward", "functional")],
        name_func=safe_name,
    )
    def test_signature(self, name: str, what: str) -> None:
        e = entry(name)
        if what == "functional":
            ours, theirs = e.function, e.torch_function
        else:
            ours, theirs = getattr(e.module, what), getattr(e.torch_module, what)
        a, b = _signature(ours), _signature(theirs)
        # Names, kinds and defaults first (the clearer message), then the whole signature.
        self.assertEqual(
            [(p.name, p.kind, p.default) for p in a.parameters.values()],
            [(p.name, p.kind, p.default) for p in b.parameters.values()],
        )
        self.assertEqual(a, b)


class TestStateAndBuffers(unittest.TestCase):
    @parameterized.expand(_ctor_rows(), name_func=safe_name)
    def test_buffers_parameters_attributes(self, name: str, i: int) -> None:
        ours, theirs = _both(name, ctors(name)[i])
        self.assertEqual(
            [n for n, _ in ours.named_buffers()], [n for n, _ in theirs.named_buffers()]
        )
        for (n, a), (_, b) in zip(ours.named_buffers(), theirs.named_buffers(), strict=True):
            with self.subTest(buffer=n):
                assert_tensors_equal(self, n, a, b)
        self.assertEqual(
            [n for n, _ in ours.named_parameters()], [n for n, _ in theirs.named_parameters()]
        )
        self.assertEqual(list(ours.state_dict()), list(theirs.state_dict()))
        public = {k: v for k, v in vars(theirs).items() if not k.startswith("_")}
        self.assertEqual(
            sorted(k for k in vars(ours) if not k.startswith("_")), sorted(public), "attributes"
        )
        for k, v in public.items():
            if not isinstance(v, torch.Tensor):
                self.assertEqual(getattr(ours, k), v, k)
        self.assertEqual(ours.training, theirs.training)

    @parameterized.expand(_ctor_rows(), name_func=safe_name)
    def test_repr(self, name: str, i: int) -> None:
        ours, theirs = _both(name, ctors(name)[i])
        self.assertEqual(repr(ours), repr(theirs))
        self.assertEqual(ours.extra_repr(), theirs.extra_repr())

    @parameterized.expand(_ctor_rows(), name_func=safe_name)
    def test_state_dict_round_trip_both_ways(self, name: str, i: int) -> None:
        ctor = ctors(name)[i]
        # torch -> ours: a torch module's state (buffers changed after construction) loads
        # into ours strictly and reads back the same.
        ours, theirs = _both(name, ctor)
        with torch.no_grad():
            for b in theirs.buffers():
                if b.is_floating_point():
                    b.mul_(1.5).add_(0.25)
        missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
        self.assertEqual((missing, unexpected), ([], []))
        self._same_state(ours.state_dict(), theirs.state_dict())
        # ours -> torch, through torch.save/torch.load as a checkpoint would.
        ours2, theirs2 = _both(name, ctor)
        with torch.no_grad():
            for b in ours2.buffers():
                if b.is_floating_point():
                    b.mul_(0.5).sub_(0.125)
        buffer = io.BytesIO()
        torch.save(ours2.state_dict(), buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)
        missing, unexpected = theirs2.load_state_dict(loaded, strict=True)
        self.assertEqual((missing, unexpected), ([], []))
        self._same_state(theirs2.state_dict(), ours2.state_dict())

    def _same_state(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        self.assertEqual(list(a), list(b))
        for k in a:
            assert_tensors_equal(self, k, a[k], b[k])

    @parameterized.expand(_ctor_rows(), name_func=safe_name)
    def test_pickle_round_trip(self, name: str, i: int) -> None:
        ctor = ctors(name)[i]
        ours, _ = _both(name, ctor)
        for how, clone in (
            ("pickle", pickle.loads(pickle.dumps(ours))),
            ("deepcopy", copy.deepcopy(ours)),
        ):
            with self.subTest(how=how):
                self.assertIs(type(clone), type(ours))
                self.assertEqual(repr(clone), repr(ours))
                self._same_state(clone.state_dict(), ours.state_dict())
                for case in _valid_module_cases(name, 1):
                    c = case.clone()
                    module = type(ours)(**case.ctor)
                    again = pickle.loads(pickle.dumps(module))
                    assert_tensors_equal(
                        self, "output after pickling", again(*c.args), module(*c.clone().args)
                    )

    def test_pickled_module_is_ours_by_reference(self) -> None:
        """Unpickling looks the class up by name: ours must be importable where it says it is."""
        for e in ENTRIES:
            with self.subTest(loss=e.name):
                data = pickle.dumps(e.module())
                self.assertIn(e.module.__module__.encode(), data)
                self.assertIs(type(pickle.loads(data)), e.module)


class TestLegacyArguments(unittest.TestCase):
    """size_average/reduce: torch's reduction and torch's warnings, at construction and call."""

    @parameterized.expand(
        [
            (e.name, str(sa), str(r))
            for e in ENTRIES
            if "size_average" in inspect.signature(e.torch_module.__init__).parameters
            for sa, r in LEGACY
        ],
        name_func=safe_name,
    )
    def test_module(self, name: str, size_average: str, reduce: str) -> None:
        kwargs = _legacy_kwargs(size_average, reduce)
        e = entry(name)
        with warnings.catch_warnings(record=True) as theirs_w:
            warnings.simplefilter("always")
            theirs = e.torch_module(**kwargs, reduction="sum")
        with warnings.catch_warnings(record=True) as ours_w:
            warnings.simplefilter("always")
            ours = e.module(**kwargs, reduction="sum")
        self.assertEqual(ours.reduction, theirs.reduction)
        self.assertEqual(_warning_list(ours_w), _warning_list(theirs_w))
        self.assertTrue(theirs_w, "torch warns about legacy arguments; the test expects that")

    @parameterized.expand(
        [
            (e.name, str(sa), str(r))
            for e in ENTRIES
            if "size_average" in inspect.signature(e.torch_function).parameters
            for sa, r in LEGACY
        ],
        name_func=safe_name,
    )
    def test_functional(self, name: str, size_average: str, reduce: str) -> None:
        kwargs = _legacy_kwargs(size_average, reduce)
        e = entry(name)
        case = _valid_module_cases(name, 1)[0]
        case.kwargs = {k: v for k, v in case.kwargs.items() if k != "reduction"}
        a, b = case.clone(), case.clone()
        with warnings.catch_warnings(record=True) as theirs_w:
            warnings.simplefilter("always")
            theirs = e.torch_function(*b.args, **b.kwargs, **kwargs, reduction="none")
        with warnings.catch_warnings(record=True) as ours_w:
            warnings.simplefilter("always")
            ours = e.function(*a.args, **a.kwargs, **kwargs, reduction="none")
        self.assertEqual(_warning_list(ours_w), _warning_list(theirs_w))
        self.assertTrue(theirs_w)
        message = compare_tensors("output", ours, theirs)
        if message:
            self.fail(failure_message(case, [message], f"legacy {kwargs}"))

    def test_legacy_warning_category_is_torchs(self) -> None:
        """Whatever category torch uses (UserWarning today), pytest.warns sees ours too."""
        for e in ENTRIES:
            if "size_average" not in inspect.signature(e.torch_module.__init__).parameters:
                continue
            with self.subTest(loss=e.name):
                with warnings.catch_warnings(record=True) as theirs_w:
                    warnings.simplefilter("always")
                    e.torch_module(size_average=False)
                category = theirs_w[0].category
                with self.assertWarns(category):
                    e.module(size_average=False)


def _legacy_kwargs(size_average: str, reduce: str) -> dict[str, bool]:
    values = {"None": None, "True": True, "False": False}
    kwargs = {"size_average": values[size_average], "reduce": values[reduce]}
    return {k: v for k, v in kwargs.items() if v is not None}


def _warning_list(caught: list[warnings.WarningMessage]) -> list[tuple[type, str]]:
    return [(w.category, str(w.message)) for w in caught]


class TestModuleCallsFunctional(unittest.TestCase):
    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_module_equals_functional(self, name: str) -> None:
        """``Module(**ctor)(*args)`` gives exactly ``functional(*args, **kwargs)``, gradients
        included, on every case the generator says is both."""
        e = entry(name)
        for case in _valid_module_cases(name, 8):
            with self.subTest(seed=case.seed, label=case.label):
                a, b = case.clone(), case.clone()
                out_m = e.module(**case.ctor)(*a.args)
                out_f = e.function(*b.args, **b.kwargs)
                assert_tensors_equal(self, f"seed {case.seed} output", out_m, out_f)
                if a.grad_inputs():
                    g = torch.randn_like(out_f)
                    grads_m = torch.autograd.grad(out_m, [t for _, t in a.grad_inputs()], g)
                    grads_f = torch.autograd.grad(out_f, [t for _, t in b.grad_inputs()], g)
                    for (n, _), gm, gf in zip(a.grad_inputs(), grads_m, grads_f, strict=True):
                        assert_tensors_equal(self, f"seed {case.seed} grad {n}", gm, gf)

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_module_in_a_model_trains_like_torchs(self, name: str) -> None:
        """One optimiser step of a tiny model under our loss and under torch's gives the same
        parameters (within the float32 tolerance)."""
        e = entry(name)

        def usable(c: Case, same_shape: bool) -> bool:
            return (
                c.ctor is not None
                and torch_runs_cleanly(c)
                and c.args[0].dtype == torch.float32
                and c.args[0].dim() >= 1
                and c.args[0].numel() > 0
                and (not same_shape or c.args[0].shape == c.args[1].shape)
            )

        try:
            case = find_cases(name, lambda c: usable(c, True))[0]
        except AssertionError:  # a loss whose target never has the input's shape (CTC)
            case = find_cases(name, lambda c: usable(c, False))[0]
        results = []
        for cls in (e.module, e.torch_module):
            torch.manual_seed(0)
            c = case.clone()
            features = c.args[0].shape[-1]
            layer = torch.nn.Linear(features, features)
            criterion = cls(**case.ctor)
            opt = torch.optim.SGD(layer.parameters(), lr=0.1)
            loss = criterion(layer(c.args[0].detach()), *c.args[1:])
            loss.sum().backward()
            opt.step()
            results.append([p.detach().clone() for p in layer.parameters()])
        for a, b in zip(*results, strict=True):
            message = compare_tensors("parameter after one step", a, b)
            if message:
                self.fail(failure_message(case, [message]))


if __name__ == "__main__":
    unittest.main()
