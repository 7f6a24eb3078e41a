"""What the test files share: the list of losses, cases drawn from compare's generators, and
failure messages that say how to replay a case.

Nothing here knows a particular loss. Per-loss knowledge (which arguments a loss takes, which
of them get gradients, what a valid call looks like) comes from the mylosses registry and from
compare's case generators: a test that needs "a valid float64 call of this loss with a weight"
searches the generator's cases for one (``find_cases``), so a loss added to the registry with
its generator is covered without editing the tests.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from compare.cases import Case
from compare.check import replay_command
from compare.registry import REGISTRY, LossSpec
from compare.tolerances import compare_tensors
from mylosses import _registry

ENTRIES = _registry.entries()
LOSS_NAMES = tuple(e.name for e in ENTRIES)

# Cases whose tensors hold at most this many elements are kept in memory once drawn.
_CACHED_NUMEL = 20_000
# How far a search for a case of some kind goes before it gives up (and the test fails).
SEARCH_LIMIT = 3000

CUDA = torch.cuda.is_available()


def entry(name: str) -> _registry.LossEntry:
    return _registry.by_name(name)


def spec(name: str) -> LossSpec:
    """compare's spec of the loss ``name`` (a loss without one fails here, and in test_parity's
    coverage test)."""
    if name not in REGISTRY:
        raise AssertionError(f"{name} is in mylosses' registry but has no compare spec")
    return REGISTRY[name]


def safe_name(func: Callable[..., Any], num: int, params: Any) -> str:
    """parameterized's test names: the function name and the parameters, readable."""
    parts = [str(a) for a in params.args]
    return "_".join([func.__name__, *(p.replace(".", "p").replace("-", "m") for p in parts)])


# -- cases -------------------------------------------------------------------------------------


def _numel(case: Case) -> int:
    return sum(t.numel() for _, t in case.named_tensors())


@functools.cache
def _cached_case(name: str, seed: int) -> Case | None:
    case = spec(name).make_case(seed, "cpu")
    return case if _numel(case) <= _CACHED_NUMEL else None


def fresh(case: Case) -> Case:
    """``case.clone()`` with its own ``ctor`` dict too (``Case.clone`` shares it), so that a
    test may edit the copy without touching the cache."""
    c = case.clone()
    if c.ctor is not None:
        c.ctor = dict(c.ctor)
    return c


def draw(name: str, seed: int, device: str = "cpu") -> Case:
    """The case ``seed`` of loss ``name`` on ``device``, as fresh tensors."""
    cached = _cached_case(name, seed)
    if cached is None or device != "cpu":
        return spec(name).make_case(seed, device)
    return fresh(cached)


def iter_cases(name: str, limit: int = SEARCH_LIMIT) -> Iterator[Case]:
    """The small cases of loss ``name`` among seeds ``0 .. limit-1``, in seed order (cases of
    more than ``_CACHED_NUMEL`` elements are drawn once, remembered as large, and skipped:
    searches never want them and they are slow to draw)."""
    for seed in range(limit):
        cached = _cached_case(name, seed)
        if cached is not None:
            yield fresh(cached)


def find_cases(
    name: str, predicate: Callable[[Case], bool], count: int = 1, limit: int = SEARCH_LIMIT
) -> list[Case]:
    """The first ``count`` cases (in seed order) of loss ``name`` that satisfy ``predicate``;
    AssertionError when the generator does not draw ``count`` of them in ``limit`` seeds."""
    found = []
    for case in iter_cases(name, limit):
        if predicate(case):
            found.append(case)
            if len(found) == count:
                return found
    raise AssertionError(
        f"compare's generator for {name} drew only {len(found)} of the {count} cases wanted "
        f"in {limit} seeds"
    )


def call_quietly(fn: Callable[..., Any], case: Case) -> tuple[Any, BaseException | None, list]:
    """``fn(*case.args, **case.kwargs)`` on a clone: (result, exception, warnings)."""
    c = case.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(*c.args, **c.kwargs), None, list(caught)
        except Exception as e:
            return None, e, list(caught)


def torch_runs_cleanly(case: Case) -> bool:
    """torch's functional (and module, where the case has one) returns without raising or
    warning: a valid, unremarkable call."""
    s = spec(case.loss)
    out, err, caught = call_quietly(s.torch_fn, case)
    if err is not None or caught or not isinstance(out, torch.Tensor):
        return False
    if case.ctor is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                s.torch_module(**case.ctor)(*case.clone().args)
            except Exception:
                return False
        if caught:
            return False
    return True


def has_tag(case: Case, *tags: str) -> bool:
    parts = set(case.label.split("/"))
    return any(t in parts for t in tags)


# Labels of cases that are not "ordinary": ties on the loss's kinks, huge or non-finite values,
# invalid options, empty and large shapes, legacy arguments, targets valid only with an option.
UNUSUAL_TAGS = (
    "ties",
    "big",
    "nonfinite",
    "invalid",
    "empty",
    "large",
    "legacy",
    "elementwise_mean",
    "outside",  # class targets outside [0, C) that only the case's ignore_index makes valid
)


def ordinary(case: Case) -> bool:
    """Finite, moderate values away from the loss's kinks, valid options, 1 to a few thousand
    elements, no legacy arguments."""
    return not has_tag(case, *UNUSUAL_TAGS) and _numel(case) > 0


def floating_tensors(case: Case) -> list[tuple[str, torch.Tensor]]:
    return [(n, t) for n, t in case.named_tensors() if t.is_floating_point()]


def real_floating(case: Case) -> bool:
    """No complex tensor, and the first argument (the input) is floating point."""
    tensors = case.named_tensors()
    return (
        bool(tensors)
        and case.args[0].is_floating_point()
        and not any(t.is_complex() for _, t in tensors)
    )


@functools.cache
def differentiable_names(name: str, limit: int = 300) -> tuple[str, ...]:
    """The arguments of loss ``name`` that compare's generator ever makes require grad (the
    ones torch gives a gradient), in the order they first appear."""
    seen: dict[str, None] = {}
    for case in iter_cases(name, limit):
        for n, _ in case.grad_inputs():
            seen.setdefault(n, None)
    return tuple(seen)


def with_grads(case: Case, names: tuple[str, ...] | set[str]) -> Case:
    """A clone of ``case`` in which exactly the tensors named ``names`` require grad."""
    c = case.clone()
    for n, t in c.named_tensors():
        want = n in names and (t.is_floating_point() or t.is_complex())
        t.requires_grad_(want)
    return c


def map_tensors(case: Case, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Case:
    """A copy of ``case`` with every tensor argument replaced by ``fn(name, tensor)``."""
    c = case.clone()
    args = tuple(
        fn(c.arg_name(i), a) if isinstance(a, torch.Tensor) else a for i, a in enumerate(c.args)
    )
    kwargs = {k: fn(k, v) if isinstance(v, torch.Tensor) else v for k, v in c.kwargs.items()}
    c.args, c.kwargs = args, kwargs
    return c


def reduction_of(case: Case) -> str:
    """The reduction a call asks for (legacy arguments are resolved as torch does)."""
    kw = case.kwargs
    if "size_average" in kw or "reduce" in kw:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.nn._reduction.legacy_get_string(
                kw.get("size_average"), kw.get("reduce"), emit_warning=False
            )
    return kw.get("reduction", "mean")


def broadcasts(case: Case) -> bool:
    """Whether the positional floating-point tensors have different shapes. (An integer
    tensor, such as an (N,) class-index target of an (N, C) input, is an index, not a value
    broadcast against the others.)"""
    shapes = {
        tuple(a.shape)
        for a in case.args
        if isinstance(a, torch.Tensor) and (a.is_floating_point() or a.is_complex())
    }
    return len(shapes) > 1


def scalar_params(case: Case) -> dict[str, float]:
    """The case's keyword options that are floats (delta, beta, margin, eps, label_smoothing,
    ...); integer options such as ignore_index are indices, not values to vary."""
    return {k: v for k, v in case.kwargs.items() if isinstance(v, float)}


# -- messages ----------------------------------------------------------------------------------


def replay(case: Case) -> str:
    return replay_command(case.loss, case.device, case.seed)


def failure_message(case: Case, failures: list[str], note: str = "") -> str:
    """What a failing test prints: the case, how to replay it, and every difference."""
    lines = [case.describe(), f"replay: {replay(case)}"]
    if note:
        lines.append(f"note: {note}")
    lines += [f"- {f}" for f in failures]
    return "\n".join(lines)


def assert_close_to_torch(ours: Any, theirs: Any, what: str = "value") -> None:
    """Our tensor against torch's, within the one tolerance table (``compare/tolerances.py``):
    same shape and dtype, NaN where torch has NaN, infinities of the same sign."""
    failure = compare_tensors(what, ours, theirs)
    if failure is not None:
        raise AssertionError(failure)


def assert_tensors_equal(test: Any, what: str, ours: Any, theirs: Any) -> None:
    """Bitwise equality (NaN equal to NaN) for two results of *our own* code on two paths."""
    test.assertIsInstance(ours, torch.Tensor, what)
    test.assertIsInstance(theirs, torch.Tensor, what)
    torch.testing.assert_close(
        ours, theirs, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


# -- scalar options ----------------------------------------------------------------------------


def _param_class(value: float) -> str:
    return "zero" if value == 0 else "pos" if value > 0 else "neg"


@functools.cache
def param_values(name: str, limit: int = 400) -> dict[str, dict[str, float]]:
    """For each scalar option compare's generator sets on valid cases of loss ``name`` (delta,
    beta, ...): the first value of each class it draws ("pos", and "zero" where it draws
    zero), e.g. ``{"beta": {"pos": 0.327, "zero": 0.0}}``."""
    values: dict[str, dict[str, float]] = {}
    for case in iter_cases(name, limit):
        if not ordinary(case):
            continue
        for k, v in scalar_params(case).items():
            values.setdefault(k, {}).setdefault(_param_class(v), v)
    return {k: dict(sorted(v.items())) for k, v in sorted(values.items())}


def param_rows(name: str) -> list[dict[str, float]]:
    """Each scalar option varied alone: all at their defaults, then each class of each."""
    rows: list[dict[str, float]] = [{}]
    for k, classes in param_values(name).items():
        rows += [{k: v} for v in classes.values()]
    return rows


def params_label(params: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in params.items()) or "defaults"
