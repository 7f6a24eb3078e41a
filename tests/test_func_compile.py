"""torch.func transforms and torch.compile agree with eager mode, for every loss.

- ``torch.func.grad`` of our functional equals the eager gradient and torch's;
- ``torch.func.vmap`` over a batch of inputs (and over ``grad``: per-sample gradients) equals a
  loop over the batch;
- ``torch.func.jacrev`` equals the eager Jacobian and torch's;
- ``torch.compile(fn, fullgraph=True)`` (backend "aot_eager": it traces forward and backward
  through AOTAutograd as inductor would, without inductor's minutes of code generation on a CI
  CPU) equals eager for the forward and the gradients, on a handful of cases per loss. Where
  ours cannot be captured whole, torch's own must not be either (then the case is skipped, with
  torch's reason).

Cases are compare's (ordinary float32/float64 calls where some input requires grad); values are
compared with compare.tolerances.
"""

from __future__ import annotations

import functools
import unittest
import warnings
from collections.abc import Callable
from typing import Any

import torch
from parameterized import parameterized

from compare.cases import Case
from compare.tolerances import compare_tensors
from tests._support import (
    LOSS_NAMES,
    differentiable_names,
    entry,
    failure_message,
    find_cases,
    fresh,
    ordinary,
    real_floating,
    reduction_of,
    safe_name,
    torch_runs_cleanly,
)

BATCH = 3
COMPILE_CASES = 2
MAX_NUMEL = 200


def _usable(c: Case) -> bool:
    if not (ordinary(c) and real_floating(c) and c.grad_inputs()):
        return False
    dtype = c.args[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if sum(t.numel() for _, t in c.named_tensors()) > MAX_NUMEL:
        return False
    # every differentiable argument of the input's dtype (torch.func differentiates them all)
    return all(
        t.dtype == dtype for n, t in c.named_tensors() if n in differentiable_names(c.loss)
    ) and torch_runs_cleanly(c)


@functools.cache
def _cases(name: str, count: int) -> tuple[Case, ...]:
    return tuple(find_cases(name, _usable, count))


def cases(name: str, count: int = 5) -> list[Case]:
    return [fresh(c) for c in _cases(name, count)]


def _wrt(case: Case) -> list[str]:
    """The differentiable tensor arguments of a case (whether or not it asked for their grad)."""
    return [
        n
        for n, t in case.named_tensors()
        if n in differentiable_names(case.loss) and t.is_floating_point()
    ]


def as_function(
    fn: Callable[..., Any], case: Case, names: list[str], *, quiet: bool = True
) -> Callable[..., Any]:
    """``f(*tensors)``: ``fn`` on the case with the tensors named ``names`` replaced (warnings
    silenced when ``quiet``; torch.compile cannot trace that, and its cases warn nothing)."""

    def f(*tensors: torch.Tensor) -> torch.Tensor:
        replaced = dict(zip(names, tensors, strict=True))
        args = [replaced.get(case.arg_name(i), a) for i, a in enumerate(case.args)]
        kwargs = {k: replaced.get(k, v) for k, v in case.kwargs.items()}
        if not quiet:
            return fn(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return f


def _leaves(case: Case, names: list[str]) -> list[torch.Tensor]:
    named = dict(case.named_tensors())
    return [named[n].detach().clone() for n in names]


class _Base(unittest.TestCase):
    def assert_close(self, case: Case, what: str, ours: Any, expected: Any, note: str) -> None:
        message = compare_tensors(what, ours, expected)
        if message:
            self.fail(failure_message(case, [message], note))


class TestFunc(_Base):
    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_grad(self, name: str) -> None:
        e = entry(name)
        for case in cases(name):
            names = _wrt(case)
            with self.subTest(seed=case.seed, label=case.label):
                ours = as_function(e.function, case, names)
                theirs = as_function(e.torch_function, case, names)
                argnums = tuple(range(len(names)))

                def scalar(f: Callable[..., Any]) -> Callable[..., Any]:
                    return lambda *xs, f=f: f(*xs).sum()

                got = torch.func.grad(scalar(ours), argnums=argnums)(*_leaves(case, names))
                want = torch.func.grad(scalar(theirs), argnums=argnums)(*_leaves(case, names))
                leaves = [t.requires_grad_() for t in _leaves(case, names)]
                eager = torch.autograd.grad(ours(*leaves).sum(), leaves)
                for n, a, b, c in zip(names, got, want, eager, strict=True):
                    self.assert_close(case, f"func.grad {n} vs torch", a, b, "torch.func.grad")
                    self.assert_close(case, f"func.grad {n} vs eager", a, c, "torch.func.grad")

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_vmap(self, name: str) -> None:
        """vmap over a batch of whole calls (every tensor argument batched), and over grad."""
        e = entry(name)
        for case in cases(name):
            tensor_names = [n for n, _ in case.named_tensors()]
            with self.subTest(seed=case.seed, label=case.label):
                batch = _batch(case, tensor_names)
                ours = as_function(e.function, case, tensor_names)
                theirs = as_function(e.torch_function, case, tensor_names)
                got = torch.func.vmap(ours)(*batch)
                loop = torch.stack([ours(*[b[i] for b in batch]) for i in range(BATCH)])
                try:
                    want = torch.func.vmap(theirs)(*batch)
                except RuntimeError as err:
                    if "data-dependent control flow" not in str(err):
                        raise
                    # torch's functional branches on data (vmap cannot): its loop is the truth
                    want = torch.stack([theirs(*[b[i] for b in batch]) for i in range(BATCH)])
                self.assert_close(case, "vmap vs loop", got, loop, "torch.func.vmap")
                self.assert_close(case, "vmap vs torch", got, want, "torch.func.vmap")
                # per-sample gradients w.r.t. the input: vmap(grad(...))
                wrt = _wrt(case)
                argnums = tuple(tensor_names.index(n) for n in wrt)
                summed = lambda *xs, f=ours: f(*xs).sum()  # noqa: E731
                g = torch.func.vmap(torch.func.grad(summed, argnums=argnums))
                per_sample = g(*batch)
                for i in range(BATCH):
                    sample = [
                        b[i].clone().requires_grad_(j in argnums) for j, b in enumerate(batch)
                    ]
                    eager = torch.autograd.grad(ours(*sample).sum(), [sample[j] for j in argnums])
                    for n, a, b in zip(wrt, per_sample, eager, strict=True):
                        self.assert_close(
                            case, f"vmap(grad) {n}[{i}]", a[i], b, "vmap(grad) vs eager"
                        )

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_batched_grad_outputs(self, name: str) -> None:
        """``autograd.grad(..., is_grads_batched=True)`` (vmap over an eager backward, as
        ``jacobian(vectorize=True)`` and gradcheck's batched check do) equals a loop over the
        upstream gradients, and torch's."""
        e = entry(name)
        for case in cases(name):
            names = _wrt(case)
            with self.subTest(seed=case.seed, label=case.label):
                results = []
                for fn in (e.function, e.torch_function):
                    leaves = [t.requires_grad_() for t in _leaves(case, names)]
                    out = as_function(fn, case, names)(*leaves)
                    gen = torch.Generator().manual_seed(case.seed)
                    upstream = torch.randn((BATCH, *out.shape), generator=gen, dtype=out.dtype)
                    batched = torch.autograd.grad(
                        out, leaves, upstream, retain_graph=True, is_grads_batched=True
                    )
                    looped = [
                        torch.autograd.grad(out, leaves, upstream[i], retain_graph=True)
                        for i in range(BATCH)
                    ]
                    results.append((batched, looped))
                (ours, ours_loop), (theirs, _) = results
                for j, n in enumerate(names):
                    for i in range(BATCH):
                        self.assert_close(
                            case,
                            f"batched grad {n}[{i}] vs loop",
                            ours[j][i],
                            ours_loop[i][j],
                            "is_grads_batched=True",
                        )
                    self.assert_close(
                        case,
                        f"batched grad {n} vs torch",
                        ours[j],
                        theirs[j],
                        "is_grads_batched=True",
                    )

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_jacrev(self, name: str) -> None:
        e = entry(name)
        for case in cases(name):
            names = _wrt(case)
            with self.subTest(seed=case.seed, label=case.label):
                ours = as_function(e.function, case, names)
                theirs = as_function(e.torch_function, case, names)
                argnums = tuple(range(len(names)))
                got = torch.func.jacrev(ours, argnums=argnums)(*_leaves(case, names))
                want = torch.func.jacrev(theirs, argnums=argnums)(*_leaves(case, names))
                eager = torch.autograd.functional.jacobian(ours, tuple(_leaves(case, names)))
                for n, a, b, c in zip(names, got, want, eager, strict=True):
                    self.assert_close(case, f"jacrev {n} vs torch", a, b, "torch.func.jacrev")
                    self.assert_close(case, f"jacrev {n} vs eager", a, c, "torch.func.jacrev")


def _batch(case: Case, names: list[str]) -> list[torch.Tensor]:
    """BATCH different calls stacked along a new dim 0: floating tensors perturbed per sample,
    the others (integer targets) repeated."""
    gen = torch.Generator().manual_seed(case.seed)
    named = dict(case.named_tensors())
    out = []
    for n in names:
        t = named[n].detach()
        if t.is_floating_point():
            samples = [
                t + 0.25 * i * torch.randn(t.shape, generator=gen, dtype=t.dtype)
                for i in range(BATCH)
            ]
            if n == "weight" or (t.numel() and bool((t >= 0).all()) and bool((t > 1).any())):
                # weights, and non-negative data (variances, rates) stay non-negative
                samples = [s.abs() for s in samples]
            elif t.numel() and bool((t >= 0).all() and (t <= 1).all()):
                # Values in [0, 1] (probabilities) stay there: each sample moves part of the
                # way towards random values in [0, 1], a convex combination.
                samples = [
                    t + (torch.rand(t.shape, generator=gen, dtype=t.dtype) - t) * (0.5 * i / BATCH)
                    for i in range(BATCH)
                ]
        else:
            samples = [t] * BATCH
        out.append(torch.stack(samples))
    return out


class TestCompile(_Base):
    def setUp(self) -> None:
        torch._dynamo.reset()

    @parameterized.expand([(n,) for n in LOSS_NAMES], name_func=safe_name)
    def test_compile_fullgraph(self, name: str) -> None:
        e = entry(name)
        chosen = _compile_cases(name)
        for case in chosen:
            names = _wrt(case)
            with self.subTest(seed=case.seed, label=case.label):
                ours = as_function(e.function, case, names, quiet=False)
                compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
                leaves = [t.requires_grad_() for t in _leaves(case, names)]
                try:
                    out = compiled(*leaves)
                except _REFUSALS:
                    refusal = _torch_refuses(e.torch_function, case, names)
                    if refusal is None:
                        raise
                    self.skipTest(f"torch's own {name} does not compile either: {refusal}")
                g = torch.randn_like(out)
                grads = torch.autograd.grad(out, leaves, g)
                leaves2 = [t.requires_grad_() for t in _leaves(case, names)]
                eager = ours(*leaves2)
                eager_grads = torch.autograd.grad(eager, leaves2, g)
                note = "torch.compile(fullgraph=True, backend='aot_eager')"
                self.assert_close(case, "compiled output", out, eager, note)
                for n, a, b in zip(names, grads, eager_grads, strict=True):
                    self.assert_close(case, f"compiled grad {n}", a, b, note)


# What torch.compile(fullgraph=True) raises for code it cannot capture whole.
_REFUSALS = (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError)


def _torch_refuses(fn: Callable[..., Any], case: Case, names: list[str]) -> str | None:
    """Why torch's own functional cannot be compiled with ``fullgraph=True`` on ``case`` (its
    first line), or None. Where ours cannot be compiled either, the comparison holds ours to
    torch's: torch's ctc_loss reads its lengths on the host, as ours does, and cannot be
    captured whole (its output's shape depends on their values)."""
    theirs = as_function(fn, case, names, quiet=False)
    compiled = torch.compile(theirs, fullgraph=True, backend="aot_eager")
    try:
        compiled(*_leaves(case, names))
    except _REFUSALS as err:
        return str(err).strip().splitlines()[0]
    finally:
        torch._dynamo.reset()
    return None


def _compile_cases(name: str) -> list[Case]:
    """A 'mean' case and a 'none' case (with a weight where the generator gives one)."""
    chosen = []
    for reduction in ("mean", "none"):
        for case in cases(name, 12):
            if reduction_of(case) == reduction and case not in chosen:
                chosen.append(case)
                break
    return chosen[:COMPILE_CASES] or cases(name, 1)


if __name__ == "__main__":
    unittest.main()
