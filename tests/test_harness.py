"""The harness catches bugs, and its command line and reports work.

A harness that passes everything proves nothing, so a bug is planted in each loss in turn, in
the autograd.Function that mylosses runs (found through the autograd node of one of its
outputs, so nothing here names a loss file): a gradient off by 0.1 %, or a forward off by
0.1 %. ``compare.check.run_check`` must report failures; an unplanted run must pass and write
valid JSON, Markdown and JUnit XML. Then the command line: ``python -m compare check`` exits 0
with a closing ``N passed, 0 failed``, exits 1 on a planted bug with a replay command that
reproduces it, replays exactly one case with ``--case SEED``, and exits 2 on an unknown loss.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
import unittest
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from parameterized import parameterized

from compare.check import run_check
from compare.parity import run_case
from tests._support import (
    LOSS_NAMES,
    find_cases,
    ordinary,
    real_floating,
    safe_name,
    spec,
    torch_runs_cleanly,
    with_grads,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLANT_TRIALS = 12
CLOSING = re.compile(r"^(\d+) passed, (\d+) failed$")


def function_class(name: str) -> type[torch.autograd.Function]:
    """The autograd.Function our functional runs for loss ``name``, read off the grad_fn of
    one of its outputs."""
    case = find_cases(
        name,
        lambda c: (
            real_floating(c)
            and bool(c.grad_inputs())
            and c.args[0].numel() > 0
            and torch_runs_cleanly(c)
        ),
    )[0]
    c = with_grads(case, {case.arg_name(0)})
    out = spec(name).ours_fn(*c.args, **c.kwargs)
    assert out.grad_fn is not None, f"{name}: no autograd node to plant a bug in"
    return out.grad_fn._forward_cls


@contextmanager
def planted(name: str, where: str) -> Iterator[None]:
    """Inside: loss ``name``'s Function scales its first gradient ("backward") or its first
    output ("forward") by 1.001."""
    cls = function_class(name)
    attribute = "backward" if where == "backward" else "forward"
    original = cls.__dict__[attribute]
    call = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original

    def scale_first(values: Any) -> Any:
        if isinstance(values, tuple):
            first = values[0] * 1.001 if isinstance(values[0], torch.Tensor) else values[0]
            return (first, *values[1:])
        return values * 1.001

    if isinstance(original, classmethod):

        def wrong(kls: Any, *args: Any) -> Any:
            return scale_first(call(kls, *args))

        setattr(cls, attribute, classmethod(wrong))
    else:

        def wrong(*args: Any) -> Any:  # type: ignore[misc]
            return scale_first(call(*args))

        setattr(cls, attribute, staticmethod(wrong))
    try:
        yield
    finally:
        setattr(cls, attribute, original)


class TestPlantedBugs(unittest.TestCase):
    @parameterized.expand(
        [(n, where) for n in LOSS_NAMES for where in ("backward", "forward")],
        name_func=safe_name,
    )
    def test_planted_bug_is_caught(self, name: str, where: str) -> None:
        clean = run_check(losses=[name], trials=PLANT_TRIALS, seed=3)
        self.assertEqual(clean["failed"], 0, "the unplanted run must pass first")
        with planted(name, where):
            report = run_check(losses=[name], trials=PLANT_TRIALS, seed=3)
        self.assertGreater(report["failed"], 0, f"a wrong {where} went unnoticed")
        failing = [c for c in report["cases"] if not c["ok"]]
        kind = "grad" if where == "backward" else "output"
        self.assertTrue(
            any(kind in f for c in failing for f in c["failures"]),
            [c["failures"] for c in failing],
        )
        for c in failing:
            self.assertEqual(
                c["replay"],
                f"python -m compare check --losses {name} --device cpu --case {c['seed']}",
            )
        # the plant is gone again
        self.assertEqual(run_check(losses=[name], trials=PLANT_TRIALS, seed=3)["failed"], 0)

    def test_the_plant_changes_the_numbers(self) -> None:
        """Sanity of the plant itself: inside it, our gradient is 1.001 times what it was."""
        name = LOSS_NAMES[0]
        case = find_cases(
            name, lambda c: real_floating(c) and c.args[0].numel() > 0 and torch_runs_cleanly(c)
        )[0]
        c0 = with_grads(case, {case.arg_name(0)})
        x0 = c0.args[0]
        spec(name).ours_fn(*c0.args, **c0.kwargs).sum().backward()
        with planted(name, "backward"):
            c1 = with_grads(case, {case.arg_name(0)})
            spec(name).ours_fn(*c1.args, **c1.kwargs).sum().backward()
        torch.testing.assert_close(c1.args[0].grad, x0.grad * 1.001)

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_planted_module_bug_is_caught(self, name: str) -> None:
        """The module is compared on its own: a forward of our Module off by 0.1 % (the
        functional untouched) fails the check, with options in the constructor too."""
        module = spec(name).ours_module
        original = module.forward

        def wrong(self: Any, *args: Any) -> Any:
            return original(self, *args) * 1.001

        module.forward = wrong  # type: ignore[method-assign]
        try:
            report = run_check(losses=[name], trials=PLANT_TRIALS, seed=3)
        finally:
            module.forward = original  # type: ignore[method-assign]
        failing = [f for c in report["cases"] for f in c["failures"]]
        self.assertTrue(any(f.startswith("module output") for f in failing), failing)
        self.assertFalse(any(f.startswith("functional") for f in failing), failing)


# Losses whose spec names a second-order reference (torch has no double backward for them).
REFERENCED = [n for n in LOSS_NAMES if spec(n).reference is not None]


def _second_order_cases(name: str) -> list[Any]:
    """Ordinary float64 cases of loss ``name`` whose first argument requires grad, with
    double backward."""
    cases = find_cases(
        name,
        lambda c: (
            real_floating(c)
            and ordinary(c)
            and c.args[0].requires_grad
            and c.args[0].dtype == torch.float64
            and torch_runs_cleanly(c)
        ),
        count=4,
    )
    return [dataclasses.replace(c, double_backward=True) for c in cases]


@contextmanager
def planted_second_order(name: str) -> Iterator[None]:
    """Inside: our functional of loss ``name`` returns ``loss + 1e-3 * sum((x - x.detach())^2)``
    for its first argument x: the same value and gradient, a second derivative off by 2e-3."""
    module = importlib.import_module("mylosses.functional")
    functional = spec(name).functional
    original = getattr(module, functional)

    def wrong(*args: Any, **kwargs: Any) -> Any:
        x = args[0]
        return original(*args, **kwargs) + 1e-3 * ((x - x.detach()) ** 2).sum()

    setattr(module, functional, wrong)
    try:
        yield
    finally:
        setattr(module, functional, original)


@unittest.skipUnless(REFERENCED, "no spec names a second-order reference")
class TestSecondOrderReference(unittest.TestCase):
    """Where torch's double backward is not implemented, the spec's ``reference`` judges ours:
    without it the comparison could only report torch's error; with it, a second-order bug is
    caught."""

    @parameterized.expand([(n,) for n in REFERENCED], name_func=safe_name)
    def test_reference_judges_second_order(self, name: str) -> None:
        s = spec(name)
        for case in _second_order_cases(name):
            with self.subTest(seed=case.seed):
                result = run_case(s, case)
                self.assertTrue(result.ok, result.failures)
                bare = run_case(dataclasses.replace(s, reference=None), case)
                self.assertTrue(
                    any("double backward" in f for f in bare.failures),
                    f"torch's double backward works for {name}: the reference is not needed",
                )
                with planted_second_order(name):
                    planted = run_case(s, case)
                self.assertTrue(any("grad-grad" in f for f in planted.failures), planted.failures)
                self.assertFalse(
                    any(f.startswith("functional output") for f in planted.failures),
                    planted.failures,
                )

    @parameterized.expand([(n,) for n in REFERENCED], name_func=safe_name)
    def test_reference_judges_only_where_its_first_derivatives_are_torchs(self, name: str) -> None:
        """A reference whose gradient is not torch's (as where torch's is NaN and autograd's a
        number) is no witness of the second order: the case passes unjudged, planted bug and
        all, while ours must still run."""
        s = spec(name)
        reference = s.reference
        assert reference is not None

        def off(*args: Any, **kwargs: Any) -> Any:
            x = args[0]
            return reference(*args, **kwargs) + 0.5 * (x - x.detach()).sum()

        skewed = dataclasses.replace(s, reference=off)
        for case in _second_order_cases(name):
            with self.subTest(seed=case.seed):
                with planted_second_order(name):
                    self.assertFalse(run_case(s, case).ok)
                    result = run_case(skewed, case)
                self.assertTrue(result.ok, result.failures)


class TestReports(unittest.TestCase):
    def test_clean_run_writes_valid_reports(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            paths = {k: pathlib.Path(tmp, f"check.{k}") for k in ("json", "md", "xml")}
            report = run_check(
                trials=6,
                seed=11,
                md=paths["md"],
                json_path=paths["json"],
                junit=paths["xml"],
            )
            self.assertEqual(report["failed"], 0, [c for c in report["cases"] if not c["ok"]])
            self.assertEqual(report["passed"], 6 * len(LOSS_NAMES))

            data = json.loads(paths["json"].read_text())
            self.assertEqual(data["passed"], report["passed"])
            self.assertEqual(data["failed"], 0)
            self.assertEqual(sorted(data["losses"]), sorted(LOSS_NAMES))
            self.assertEqual(data["environment"]["torch"], torch.__version__)
            self.assertIn("mylosses", data["environment"])
            self.assertEqual(data["seed"], 11)
            self.assertEqual(len(data["cases"]), 6 * len(LOSS_NAMES))
            for case in data["cases"]:
                self.assertTrue(case["ok"])
                self.assertIn(case["loss"], LOSS_NAMES)
                self.assertIsInstance(case["seed"], int)

            md = paths["md"].read_text()
            self.assertIn(f"{report['passed']} passed, 0 failed", md)
            for name in LOSS_NAMES:
                self.assertIn(name, md)
            self.assertIn("| ---", md)

            root = ET.parse(paths["xml"]).getroot()
            self.assertEqual(root.tag, "testsuites")
            self.assertEqual(root.get("failures"), "0")
            suites = root.findall("testsuite")
            self.assertEqual(len(suites), len(LOSS_NAMES))
            testcases = root.iter("testcase")
            self.assertGreater(len(list(testcases)), 0)
            self.assertEqual(len(list(root.iter("failure"))), 0)

    def test_failing_run_reports_failures_everywhere(self) -> None:
        name = LOSS_NAMES[0]
        with tempfile.TemporaryDirectory() as tmp:
            paths = {k: pathlib.Path(tmp, f"check.{k}") for k in ("json", "md", "xml")}
            with planted(name, "backward"):
                report = run_check(
                    losses=name,
                    trials=PLANT_TRIALS,
                    seed=3,
                    md=paths["md"],
                    json_path=paths["json"],
                    junit=paths["xml"],
                )
            failed = report["failed"]
            self.assertGreater(failed, 0)
            data = json.loads(paths["json"].read_text())
            self.assertEqual(data["failed"], failed)
            self.assertEqual(sum(not c["ok"] for c in data["cases"]), failed)
            for c in data["cases"]:
                if not c["ok"]:
                    self.assertTrue(c["failures"])
                    self.assertIn(f"--case {c['seed']}", c["replay"])
            self.assertIn(f"{report['passed']} passed, {failed} failed", paths["md"].read_text())
            root = ET.parse(paths["xml"]).getroot()
            self.assertGreater(int(root.get("failures")), 0)
            self.assertTrue(list(root.iter("failure")))


def run_cli(*args: str, plant: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m compare <args>`` from the repository root (with a bug planted first, when
    asked, through the same helper the in-process tests use)."""
    if plant is None:
        command = [sys.executable, "-m", "compare", *args]
    else:
        script = textwrap.dedent(
            f"""
            import sys
            from tests.test_harness import planted
            from compare.__main__ import main
            with planted({plant[0]!r}, {plant[1]!r}):
                code = main({list(args)!r})
            sys.exit(code)
            """
        )
        command = [sys.executable, "-c", script]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def closing_line(output: str) -> tuple[int, int]:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    match = CLOSING.match(lines[-1].strip())
    assert match, f"no closing 'N passed, M failed' line; output ends with {lines[-3:]}"
    return int(match.group(1)), int(match.group(2))


@pytest.mark.slow
class TestCommandLine(unittest.TestCase):
    """Subprocesses of ``python -m compare`` (a few seconds each: each imports torch)."""

    def test_check_passes(self) -> None:
        name = LOSS_NAMES[0]
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp, "r.json")
            proc = run_cli("check", "--losses", name, "--trials", "5", "--json", str(out))
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            self.assertEqual(closing_line(proc.stdout), (5, 0))
            first = json.loads(out.read_text())["cases"][0]

            # Replay one case: exactly one case, the same one.
            replay = pathlib.Path(tmp, "one.json")
            proc = run_cli(
                "check", "--losses", name, "--case", str(first["seed"]), "--json", str(replay)
            )
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            self.assertEqual(closing_line(proc.stdout), (1, 0))
            cases = json.loads(replay.read_text())["cases"]
            self.assertEqual(len(cases), 1)
            self.assertEqual((cases[0]["seed"], cases[0]["label"]), (first["seed"], first["label"]))

    def test_check_fails_on_a_planted_bug_and_the_replay_reproduces_it(self) -> None:
        name = LOSS_NAMES[0]
        proc = run_cli(
            "check",
            "--losses",
            name,
            "--trials",
            str(PLANT_TRIALS),
            "--seed",
            "3",
            plant=(name, "backward"),
        )
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        passed, failed = closing_line(proc.stdout)
        self.assertGreater(failed, 0)
        self.assertEqual(passed + failed, PLANT_TRIALS)
        replays = re.findall(r"replay: (python -m compare check .*--case (\d+))", proc.stdout)
        self.assertEqual(len(replays), failed, proc.stdout)
        command, seed = replays[0]
        args = command.split()[3:]
        again = run_cli(*args, plant=(name, "backward"))
        self.assertEqual(again.returncode, 1, again.stdout + again.stderr)
        self.assertEqual(closing_line(again.stdout), (0, 1))
        self.assertIn(f"seed={seed}", again.stdout)
        clean = run_cli(*args)
        self.assertEqual(clean.returncode, 0, clean.stdout + clean.stderr)
        self.assertEqual(closing_line(clean.stdout), (1, 0))

    def test_unknown_loss_exits_2(self) -> None:
        proc = run_cli("check", "--losses", "NoSuchLoss", "--trials", "1")
        self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
        self.assertIn("NoSuchLoss", proc.stderr)
        self.assertNotRegex(proc.stdout, CLOSING)


if __name__ == "__main__":
    unittest.main()
