"""Numerical gradient checks (``torch.autograd.gradcheck`` and ``gradgradcheck``, float64) of
every loss's hand-written backward and double backward, for every combination of options in a
small table:

    reduction (none / mean / sum) x weight (none / tensor, where the loss takes one)
    x target broadcast or not x each scalar option (absent / positive / zero where torch
    accepts zero: Huber's delta, SmoothL1's beta including beta=0)

and, for each, the gradient taken w.r.t. each differentiable argument alone (input, target,
weight: whichever compare's generator ever makes require grad) and w.r.t. all of them together.

The table's rows come from compare's case generators (a loss's shapes, dtypes and options are
its generator's knowledge): the first "ordinary" case of each configuration class (finite,
moderate random values, so never on a kink such as ``d == 0`` for L1 or ``|d| == delta`` for
Huber, which would need a subgradient) is cast to float64, made contiguous and checked under
each reduction.
"""

from __future__ import annotations

import functools
import inspect
import unittest
import warnings
from typing import Any

import torch
from parameterized import parameterized

from compare.cases import Case
from tests._support import (
    LOSS_NAMES,
    broadcasts,
    call_quietly,
    differentiable_names,
    entry,
    failure_message,
    floating_tensors,
    iter_cases,
    ordinary,
    param_rows,
    param_values,
    params_label,
    real_floating,
    safe_name,
    scalar_params,
    spec,
)

REDUCTIONS = ("none", "mean", "sum")
# Seeds searched for a base case of each weight/broadcast class, and for the scalar options'
# values.
SCAN_SEEDS = 1500
# Rows hold at most this many elements; up to SLOW_NUMEL, gradcheck runs in its slow mode (the
# full Jacobian, element by element), above it in fast mode (random projections).
MAX_NUMEL = 600
SLOW_NUMEL = 150


def base_key(case: Case) -> tuple[str, str]:
    """The weight/broadcast class of a case: ``weight`` or ``noweight``, and ``samesize`` or
    ``bcast:<the positional arguments smaller than the broadcast shape>`` (``bcast:target`` is
    a target broadcast up to the input; ``bcast:input``, with a weight, broadcasts the weight)."""
    shapes = [a.shape for a in case.args if isinstance(a, torch.Tensor)]
    full, rank = _full_shape(shapes) if broadcasts(case) else (None, None)
    small = [
        case.arg_name(i)
        for i, a in enumerate(case.args)
        if isinstance(a, torch.Tensor)
        and full is not None
        and a.shape != full
        and rank in (None, a.dim())
    ]
    return (
        "weight" if "weight" in case.kwargs else "noweight",
        "bcast:" + "+".join(small) if small else "samesize",
    )


def _float_option(p: inspect.Parameter) -> bool:
    """A float option: a float default, or an integer one annotated float (torch writes
    ``margin: float = 0``, ``p: float = 2``)."""
    if isinstance(p.default, float):
        return True
    integral = isinstance(p.default, int) and not isinstance(p.default, bool)
    return integral and p.annotation in (float, "float")


def _full_shape(shapes: list[torch.Size]) -> tuple[torch.Size | None, int | None]:
    """The broadcast shape of the positional arguments, and None; where they do not broadcast
    together (an (N,) per-row target of (N, D) inputs), that of the arguments of the first one's
    rank, and that rank (the only arguments compared with it); (None, None) for shapes that do
    not broadcast at all (an invalid call, which no row uses)."""
    try:
        return torch.broadcast_shapes(*shapes), None
    except RuntimeError:
        pass
    rank = len(shapes[0])
    try:
        return torch.broadcast_shapes(*(s for s in shapes if len(s) == rank)), rank
    except RuntimeError:
        return None, None


@functools.cache
def required_keys(name: str) -> frozenset[tuple[str, str]]:
    """The weight/broadcast classes the table must have: with and without a weight (where the
    loss takes one), each with same-size arguments and with the second argument broadcast (where
    the generator broadcasts at all), and the first argument broadcast under a weight (the
    weight then broadcasts too)."""
    s = spec(name)
    takes_weight = "weight" in inspect.signature(s.torch_fn).parameters
    weights = ("weight", "noweight") if takes_weight else ("noweight",)
    broadcasting = any(broadcasts(c) for c in iter_cases(name, 200))
    keys = {(w, "samesize") for w in weights}
    if broadcasting:
        probe = next(iter_cases(name, 1))
        first, second = probe.arg_name(0), probe.arg_name(1)
        keys |= {(w, f"bcast:{second}") for w in weights}
        if takes_weight:
            keys.add(("weight", f"bcast:{first}"))
    return frozenset(keys)


def _with_options(case: Case, reduction: str, params: dict[str, float]) -> Case:
    """``case`` in float64 with ``reduction`` (legacy arguments dropped) and the scalar options
    set to ``params`` (the others left at their defaults)."""
    c = case.clone(dtype=torch.float64)
    drop = {"size_average", "reduce", *scalar_params(case)}
    c.kwargs = {k: v for k, v in c.kwargs.items() if k not in drop}
    c.kwargs.update(reduction=reduction, **params)
    if c.ctor is not None:
        c.ctor = {k: v for k, v in c.ctor.items() if k not in drop}
        c.ctor.update(reduction=reduction, **params)
    return c


def _usable(case: Case) -> bool:
    """An ordinary real case that torch computes, under every reduction, without complaint."""
    if not (ordinary(case) and real_floating(case)):
        return False
    if any(t.dtype not in (torch.float32, torch.float64) for _, t in floating_tensors(case)):
        return False  # half-precision values sit on a coarse grid: ties on the kinks are common
    if sum(t.numel() for _, t in case.named_tensors()) > MAX_NUMEL:
        return False
    if not any(n in differentiable_names(case.loss) for n, _ in case.named_tensors()):
        return False
    for reduction in REDUCTIONS:
        c = _with_options(case, reduction, {})
        _, err, _ = call_quietly(spec(case.loss).torch_fn, c)
        if err is not None:
            return False
    return True


@functools.cache
def bases(name: str) -> dict[tuple[str, str], Case]:
    """The first usable case of each weight/broadcast class of loss ``name``, searched until
    every required class is found."""
    found: dict[tuple[str, str], Case] = {}
    required = required_keys(name)
    for case in iter_cases(name, SCAN_SEEDS):
        key = base_key(case)
        if key not in found and _usable(case):
            found[key] = case
            if required <= set(found):
                break
    return found


def _rows() -> list[tuple[str, str, str, str]]:
    return [
        (name, "/".join(key), params_label(params), reduction)
        for name in LOSS_NAMES
        for key in sorted(bases(name))
        for params in param_rows(name)
        for reduction in REDUCTIONS
    ]


def _params_of(name: str, label: str) -> dict[str, float]:
    for params in param_rows(name):
        if params_label(params) == label:
            return params
    raise KeyError(label)


def _grad_subsets(case: Case) -> list[tuple[str, ...]]:
    names = [
        n
        for n, t in case.named_tensors()
        if n in differentiable_names(case.loss) and t.is_floating_point()
    ]
    subsets = [(n,) for n in names]
    if len(names) > 1:
        subsets.append(tuple(names))
    return subsets


def _as_function(case: Case, names: tuple[str, ...]) -> tuple[Any, tuple[torch.Tensor, ...]]:
    """``f(*tensors)`` calling our functional with the named arguments replaced, and the
    contiguous float64 leaves it is checked at (gradcheck cannot perturb stride-0 views)."""
    fn = entry(case.loss).function
    arg_names = [case.arg_name(i) for i in range(len(case.args))]
    leaves = {}
    for n, t in case.named_tensors():
        leaves[n] = t.detach().contiguous().clone().requires_grad_(n in names)
    args = [leaves.get(n, a) for n, a in zip(arg_names, case.args, strict=True)]
    kwargs = {k: leaves.get(k, v) for k, v in case.kwargs.items()}

    first_map = spec(case.loss).gradcheck_map

    def f(*tensors: torch.Tensor) -> torch.Tensor:
        replaced = dict(zip(names, tensors, strict=True))
        if first_map is not None and arg_names[0] in replaced:
            replaced[arg_names[0]] = first_map(replaced[arg_names[0]])
        a = [replaced.get(n, x) for n, x in zip(arg_names, args, strict=True)]
        kw = {k: replaced.get(k, v) for k, v in kwargs.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the size-mismatch warning of broadcast cases
            return fn(*a, **kw)

    return f, tuple(leaves[n] for n in names)


def _check(f: Any, inputs: tuple[torch.Tensor, ...], batched: bool) -> list[str]:
    """gradcheck, gradgradcheck and (when ``batched``) gradcheck's batched-gradient check (a
    vmap over the backward, as ``jacobian(vectorize=True)`` does), each on its own; the first
    lines of each error."""
    fast = sum(t.numel() for t in inputs) > SLOW_NUMEL
    checks = [
        ("gradcheck", lambda: torch.autograd.gradcheck(f, inputs, fast_mode=fast)),
        ("gradgradcheck", lambda: torch.autograd.gradgradcheck(f, inputs, fast_mode=fast)),
    ]
    if batched:
        checks.append(
            (
                "gradcheck(check_batched_grad=True)",
                lambda: torch.autograd.gradcheck(
                    f, inputs, fast_mode=fast, check_batched_grad=True
                ),
            )
        )
    errors = []
    for what, check in checks:
        try:
            check()
        except Exception as e:  # GradcheckError, or our backward raising
            lines = str(e).strip().splitlines()
            more = f" [... {len(lines) - 4} more lines]" if len(lines) > 4 else ""
            mode = "fast" if fast else "slow"
            errors.append(
                f"{what} ({mode} mode): {type(e).__name__}: " + "\n".join(lines[:4]) + more
            )
    return errors


class TestGradcheck(unittest.TestCase):
    @parameterized.expand(_rows(), name_func=safe_name)
    def test_gradcheck(self, name: str, key: str, params: str, reduction: str) -> None:
        base = bases(name)[tuple(key.split("/"))]
        case = _with_options(base, reduction, _params_of(name, params))
        subsets = _grad_subsets(case)
        self.assertTrue(subsets, "nothing to differentiate")
        for names in subsets:
            with self.subTest(wrt=names):
                f, inputs = _as_function(case, names)
                errors = _check(f, inputs, batched=names == subsets[-1])
                if errors:
                    note = f"gradcheck w.r.t. {names}, reduction={reduction!r}, float64, contiguous"
                    self.fail(failure_message(case, errors, note))


class TestGradcheckTable(unittest.TestCase):
    """The table above is only as good as its rows: every option combination must be there."""

    @parameterized.expand([(name,) for name in LOSS_NAMES], name_func=safe_name)
    def test_table_covers_every_combination(self, name: str) -> None:
        for key in sorted(required_keys(name)):
            with self.subTest(key=key):
                self.assertTrue(
                    key in bases(name),
                    f"no usable {key} case of {name} in {SCAN_SEEDS} seeds; "
                    f"found {sorted(bases(name))}",
                )
        for p, classes in param_values(name).items():
            with self.subTest(param=p):
                self.assertIn("pos", classes, f"{p} > 0 never checked")
                # Where torch accepts zero (SmoothL1's beta), zero must be in the table.
                base = next(iter(bases(name).values()))
                zero = _with_options(base, "mean", {p: 0.0})
                _, err, _ = call_quietly(spec(name).torch_fn, zero)
                if err is None:
                    self.assertIn("zero", classes, f"{p} == 0 accepted by torch, never checked")

    def test_the_table_sees_the_options_of_the_signature(self) -> None:
        """Each float option of a functional's signature (delta, beta) is varied."""
        for name in LOSS_NAMES:
            params = inspect.signature(entry(name).function).parameters.values()
            floats = [p.name for p in params if _float_option(p)]
            with self.subTest(loss=name):
                self.assertEqual(sorted(param_values(name)), sorted(floats))
