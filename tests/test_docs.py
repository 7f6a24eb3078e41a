"""Documentation that runs: the doctests of every module under ``mylosses/``, and the Python
example of README.md.

The module classes carry torch's own docstrings (``__doc__ = torch.nn.MSELoss.__doc__``),
whose examples say ``nn.MSELoss()`` and assume torch's doctest globals; here ``nn`` is a
namespace in which the registry's losses are mylosses' own (anything else falls through to
``torch.nn``), so those examples exercise our modules.
"""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re
import types
import unittest
import warnings
from typing import Any

import torch
from parameterized import parameterized

import mylosses
from tests._support import ENTRIES, safe_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

MODULES = sorted(
    [mylosses.__name__]
    + [info.name for info in pkgutil.walk_packages(mylosses.__path__, f"{mylosses.__name__}.")]
)


class _OurNN(types.ModuleType):
    """``torch.nn`` with the registry's loss classes replaced by mylosses'."""

    def __getattr__(self, name: str) -> Any:
        for e in ENTRIES:
            if e.name == name:
                return e.module
        return getattr(torch.nn, name)


def _globals() -> dict[str, Any]:
    return {"torch": torch, "nn": _OurNN("nn"), "F": mylosses.functional, "mylosses": mylosses}


def _drop_skipped(test: doctest.DocTest) -> None:
    """Honour torch's ``# xdoctest: +SKIP`` (its docstrings are run by xdoctest): the examples
    after that directive are illustrations (``torch.manual_seed(283)`` prints a Generator,
    printed floats are one platform's), not tests."""
    lines = (test.docstring or "").splitlines()
    skip = next((i for i, line in enumerate(lines) if "xdoctest: +SKIP" in line), None)
    if skip is not None:
        test.examples = [e for e in test.examples if e.lineno < skip]


class TestDoctests(unittest.TestCase):
    @parameterized.expand([(m,) for m in MODULES], name_func=safe_name)
    def test_module(self, module_name: str) -> None:
        module = importlib.import_module(module_name)
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        failures = []
        for test in finder.find(module, module_name, globs=_globals()):
            _drop_skipped(test)
            if not test.examples:
                continue
            out: list[str] = []
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a doc example should not warn
                result = runner.run(test, out=out.append)
            if result.failed:
                failures.append("".join(out))
        self.assertEqual(failures, [], "\n".join(failures))

    @parameterized.expand([(e.name,) for e in ENTRIES], name_func=safe_name)
    def test_every_functional_has_an_example(self, name: str) -> None:
        """Each loss's functional shows a call and its value (and so is checked above)."""
        e = next(e for e in ENTRIES if e.name == name)
        examples = doctest.DocTestParser().get_examples(e.function.__doc__ or "")
        self.assertTrue(examples, f"{e.functional_name} has no doctest example")
        self.assertTrue(any(ex.want for ex in examples), "the example shows no value")

    def test_doctests_can_fail(self) -> None:
        """The runner above reports a wrong docstring value (so the tests are not vacuous)."""
        wrong = """
        >>> import torch, mylosses
        >>> mylosses.functional.mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.4000)
        """
        test = doctest.DocTestParser().get_doctest(wrong, _globals(), "wrong", None, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        self.assertEqual(runner.run(test, out=lambda s: None).failed, 1)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


class TestReadme(unittest.TestCase):
    @unittest.skipUnless(README.exists(), "README.md is not written yet")
    def test_python_examples_run(self) -> None:
        blocks = _python_blocks(README.read_text(encoding="utf-8"))
        self.assertTrue(blocks, "README.md has no ```python block")
        namespace: dict[str, Any] = {"__name__": "readme"}
        for i, block in enumerate(blocks):
            with self.subTest(block=i):
                exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        # the example's patch_torch() block restored torch on the way out
        for e in ENTRIES:
            self.assertIs(getattr(torch.nn, e.name), e.torch_module)
            self.assertIs(getattr(torch.nn.functional, e.functional_name), e.torch_function)

    @unittest.skipUnless(README.exists(), "README.md is not written yet")
    def test_readme_lists_every_loss(self) -> None:
        text = README.read_text(encoding="utf-8")
        for e in ENTRIES:
            self.assertIn(f"`{e.name}`", text)


if __name__ == "__main__":
    unittest.main()
