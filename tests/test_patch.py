"""Putting mylosses into existing code: ``swap_modules(model)`` and ``patch_torch()``.

Every registry entry takes part: the model below holds one torch loss module of each (built
with a constructor compare's generator draws), nested at several depths, one carrying an extra
buffer, one with hooks; torch loss classes mylosses does not have yet and a user's own subclass
of a torch loss must be left alone.

Which implementation computed a result is read off its autograd node: our Functions' nodes are
``_<Name>Backward``, torch's ``MseLossBackward0`` and the like.
"""

from __future__ import annotations

import copy
import functools
import inspect
import unittest
import warnings
from typing import Any

import torch
from parameterized import parameterized

import mylosses
from compare.cases import Case
from compare.tolerances import compare_tensors
from mylosses import _registry
from tests._support import (
    ENTRIES,
    LOSS_NAMES,
    entry,
    failure_message,
    find_cases,
    fresh,
    ordinary,
    safe_name,
    torch_runs_cleanly,
)


@functools.cache
def _module_case(name: str) -> Case:
    """A case with a module form, some input requiring grad, that torch runs cleanly."""
    return find_cases(
        name,
        lambda c: (
            c.ctor is not None and ordinary(c) and bool(c.grad_inputs()) and torch_runs_cleanly(c)
        ),
    )[0]


def module_case(name: str) -> Case:
    return fresh(_module_case(name))


def _node(out: torch.Tensor) -> str:
    return type(out.grad_fn).__name__


@functools.cache
def _nodes(name: str) -> tuple[str, str]:
    """The autograd node names of (ours, torch's) for loss ``name``: they must differ, or the
    tests below could not tell which implementation ran."""
    e, case = entry(name), module_case(name)
    a, b = case.clone(), case.clone()
    return _node(e.function(*a.args, **a.kwargs)), _node(e.torch_function(*b.args, **b.kwargs))


def _call_module(module: torch.nn.Module, case: Case) -> torch.Tensor:
    c = case.clone()
    return module(*c.args)


def _constructs_bare(cls: type) -> bool:
    params = inspect.signature(cls.__init__).parameters.values()
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self"
        for p in params
    )


def _unregistered_torch_losses() -> list[type]:
    """torch.nn loss classes mylosses has no entry for (yet) that construct without arguments
    (LinearCrossEntropyLoss needs its in_features and num_classes)."""
    ours = {e.torch_module for e in ENTRIES}
    found = []
    for n in dir(torch.nn):
        cls = getattr(torch.nn, n)
        if (
            isinstance(cls, type)
            and issubclass(cls, torch.nn.modules.loss._Loss)
            and cls not in ours
            and cls is not torch.nn.modules.loss._Loss
            and cls is not torch.nn.modules.loss._WeightedLoss
            and _constructs_bare(cls)
        ):
            found.append(cls)
    return found


class UserMSE(torch.nn.MSELoss):
    """A user's own subclass: its forward is theirs, swap_modules must leave it alone."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(input, target)


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
        self.criterion = entry(LOSS_NAMES[0]).torch_module(**module_case(LOSS_NAMES[0]).ctor)
        self.heads = torch.nn.ModuleDict(
            {
                name: torch.nn.Sequential(
                    torch.nn.Identity(), entry(name).torch_module(**module_case(name).ctor)
                )
                for name in LOSS_NAMES
            }
        )
        self.losses = torch.nn.ModuleList(
            [entry(name).torch_module(**module_case(name).ctor) for name in LOSS_NAMES]
        )
        self.user = UserMSE()
        self.others = torch.nn.ModuleList([cls() for cls in _unregistered_torch_losses()[:3]])
        # A weight-like buffer on a loss module: a weighted loss keeps its weight through a swap.
        self.losses[0].register_buffer("weight", torch.linspace(0.5, 2.0, 7))
        self.losses[0].register_buffer("scratch", torch.arange(3.0), persistent=False)


def _loss_modules(model: Model) -> list[tuple[str, torch.nn.Module]]:
    registered = {e.torch_module for e in ENTRIES} | {e.module for e in ENTRIES}
    return [(n, m) for n, m in model.named_modules() if type(m) in registered]


class TestSwapModules(unittest.TestCase):
    def test_swaps_every_loss_in_place_and_keeps_state(self) -> None:
        model = Model()
        before = _loss_modules(model)
        self.assertEqual(len(before), 2 * len(LOSS_NAMES) + 1)
        identities = {n: id(m) for n, m in before}
        state = copy.deepcopy(model.state_dict())
        buffers = {n: b for n, b in model.named_buffers()}
        others = [type(m) for m in model.others]

        self.assertIs(mylosses.swap_modules(model), model)

        after = _loss_modules(model)
        self.assertEqual([n for n, _ in after], [n for n, _ in before])
        ours = {e.module for e in ENTRIES}
        for n, m in after:
            with self.subTest(module=n):
                self.assertIn(type(m), ours, f"{n} is still {type(m)}")
                self.assertEqual(id(m), identities[n], "the module object must be kept")
                self.assertIsInstance(m, _registry.by_name(type(m).__name__).torch_module)
        self.assertIs(type(model.user), UserMSE, "a user's subclass must be left alone")
        self.assertEqual([type(m) for m in model.others], others)
        self.assertEqual(list(model.state_dict()), list(state))
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)
        for n, b in model.named_buffers():
            self.assertIs(b, buffers[n], f"buffer {n} must be the same tensor")
        self.assertIn("scratch", dict(model.losses[0].named_buffers()))
        self.assertNotIn("losses.0.scratch", model.state_dict())

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_swapped_module_gives_the_same_numbers(self, name: str) -> None:
        case = module_case(name)
        torch_module = entry(name).torch_module(**case.ctor)
        expected = _call_module(torch_module, case)
        fired = []
        torch_module.register_forward_hook(lambda m, args, out: fired.append("post"))
        torch_module.register_forward_pre_hook(lambda m, args: fired.append("pre"))
        mylosses.swap_modules(torch_module)
        self.assertIs(type(torch_module), entry(name).module)
        got = _call_module(torch_module, case)
        self.assertEqual(fired, ["pre", "post"], "hooks must survive the swap")
        self.assertEqual(_node(got), _nodes(name)[0], "the swapped module must run ours")
        message = compare_tensors("output", got, expected)
        if message:
            self.fail(failure_message(case, [message], "module after swap_modules"))

    def test_swapping_twice_and_a_bare_loss(self) -> None:
        for e in ENTRIES:
            with self.subTest(loss=e.name):
                m = e.torch_module()
                self.assertIs(mylosses.swap_modules(m), m)
                self.assertIs(type(m), e.module)
                mylosses.swap_modules(m)
                self.assertIs(type(m), e.module)

    def test_model_still_trains_after_the_swap(self) -> None:
        """A training step through the swapped model equals one through an unswapped copy."""
        self.assertIn("MSELoss", LOSS_NAMES)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        model.criterion = torch.nn.MSELoss()
        twin = copy.deepcopy(model)
        mylosses.swap_modules(model)
        x, y = torch.randn(5, 4), torch.randn(5, 4)
        for m in (model, twin):
            m.criterion(m[0](x), y).backward()
        for (n, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            message = compare_tensors(f"grad {n}", p.grad, q.grad)
            self.assertIsNone(message, message)


def _originals() -> dict[tuple[Any, str], Any]:
    """Every name patch_torch may replace, with what it is bound to now."""
    spaces = (torch.nn, torch.nn.modules, torch.nn.modules.loss)
    names: dict[tuple[Any, str], Any] = {}
    for e in ENTRIES:
        for space in spaces:
            if hasattr(space, e.name):
                names[(space, e.name)] = getattr(space, e.name)
        names[(torch.nn.functional, e.functional_name)] = getattr(
            torch.nn.functional, e.functional_name
        )
    return names


class TestPatchTorch(unittest.TestCase):
    def setUp(self) -> None:
        self.originals = _originals()
        for (space, name), value in self.originals.items():
            self.assertFalse(
                value.__module__.startswith("mylosses"),
                f"{space.__name__}.{name} is already patched before the test",
            )

    def assert_restored(self) -> None:
        for (space, name), value in self.originals.items():
            self.assertIs(getattr(space, name), value, f"{space.__name__}.{name} not restored")

    def test_inside_everything_is_ours(self) -> None:
        with mylosses.patch_torch():
            for e in ENTRIES:
                with self.subTest(loss=e.name):
                    self.assertIs(getattr(torch.nn, e.name), e.module)
                    self.assertIs(getattr(torch.nn.modules.loss, e.name), e.module)
                    self.assertIs(getattr(torch.nn.functional, e.functional_name), e.function)
                    from torch.nn import functional as F

                    self.assertIs(getattr(F, e.functional_name), e.function)
                    instance = getattr(torch.nn, e.name)()
                    self.assertIsInstance(instance, e.module)
                    self.assertIsInstance(instance, e.torch_module)
        self.assert_restored()

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_code_built_inside_runs_ours(self, name: str) -> None:
        """A model built inside the block uses our module; torch's own module classes and
        F-calls made inside the block compute with ours; the numbers are torch's."""
        e, case = entry(name), module_case(name)
        ours_node, torch_node = _nodes(name)
        self.assertNotEqual(ours_node, torch_node)
        built_before = e.torch_module(**case.ctor)
        expected = _call_module(built_before, case)
        self.assertEqual(_node(expected), torch_node)
        with mylosses.patch_torch():
            model = torch.nn.Sequential(torch.nn.Identity())
            model.criterion = getattr(torch.nn, name)(**case.ctor)
            self.assertIs(type(model.criterion), e.module)
            inside = _call_module(model.criterion, case)
            c = case.clone()
            functional = getattr(torch.nn.functional, e.functional_name)(*c.args, **c.kwargs)
            # torch's own module class calls F.<fn>, which is ours now
            via_torch_module = _call_module(built_before, case)
        for what, out in (
            ("model built inside", inside),
            ("torch.nn.functional inside", functional),
            ("torch's module inside", via_torch_module),
        ):
            with self.subTest(what=what):
                self.assertEqual(_node(out), ours_node, f"{what} did not run ours")
                message = compare_tensors(what, out, expected)
                if message:
                    self.fail(failure_message(case, [message]))
        after = _call_module(built_before, case)
        self.assertEqual(_node(after), torch_node, "after the block torch's runs again")
        self.assert_restored()

    def test_restored_after_an_exception(self) -> None:
        class Boom(Exception):
            pass

        with self.assertRaises(Boom), mylosses.patch_torch():
            self.assertIs(getattr(torch.nn, LOSS_NAMES[0]), ENTRIES[0].module)
            raise Boom
        self.assert_restored()

    def test_nested_blocks(self) -> None:
        e = ENTRIES[0]
        with mylosses.patch_torch():
            with mylosses.patch_torch():
                self.assertIs(getattr(torch.nn, e.name), e.module)
            self.assertIs(getattr(torch.nn, e.name), e.module, "the outer block is still on")
            self.assertIs(getattr(torch.nn.functional, e.functional_name), e.function)
        self.assert_restored()

    def test_names_imported_before_keep_their_binding(self) -> None:
        """``from torch.nn import MSELoss`` before the block keeps torch's class (documented)."""
        name = LOSS_NAMES[0]
        imported_before = getattr(torch.nn, name)
        with mylosses.patch_torch():
            self.assertIs(imported_before, self.originals[(torch.nn, name)])
        self.assert_restored()

    def test_no_warnings_from_patching(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mylosses.patch_torch():
                pass
        self.assertEqual([str(w.message) for w in caught], [])
        self.assert_restored()


if __name__ == "__main__":
    unittest.main()
