"""The one parity helper: run a case on mylosses and on torch and list every difference.

``run_case`` is what the harness runs for every random case and what the tests call for their
tables. Each side gets its own clone of the case's tensors; then, in order:

1. the exception type (or both return) and the warning categories;
2. the output's shape, dtype and values (``compare.tolerances``);
3. every input gradient (each tensor in args and kwargs that requires grad) under the same
   random upstream gradient;
4. for ``double_backward``, the gradients of ``sum_i <grad_i, v_i>`` (random ``v_i``) w.r.t.
   the inputs, a missing one counting as zeros;
5. the same forward and gradients through the modules, ``Module(**case.ctor)(*case.args)``,
   when the case has a ``ctor``.

Where torch has no double backward for a loss (its backward's derivative "is not implemented")
and the spec names a ``reference`` (the same loss as a composition of plain torch ops), the
second-order gradients of step 4 are the reference's, computed on float64 copies of the case
under the same upstream gradient and cast to each input's dtype: they must be matched as
torch's would be.

For float16/bfloat16 cases torch also runs on float64 copies: that reference judges both; for
float32 it is run only to arbitrate a disagreement (``compare.tolerances``).
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from compare.cases import Case
from compare.registry import LossSpec
from compare.tolerances import Tolerance, compare_tensors, loosest_tolerance, tolerance_for

__all__ = ["CaseResult", "assert_same_exception", "run_case"]

_HALF = (torch.float16, torch.bfloat16)


@dataclass
class CaseResult:
    """The verdict on one case: ``failures`` lists every difference found (empty: it passed)."""

    case: Case
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class _Outcome:
    """What one side did with one case."""

    error: Exception | None = None
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (category, message)
    output: torch.Tensor | None = None
    upstream: torch.Tensor | None = None
    grad_error: Exception | None = None
    grads: Sequence[torch.Tensor | None] = ()
    grad_grad_error: Exception | None = None
    grad_grads: Sequence[torch.Tensor | None] = ()
    # Why no second-order gradient can judge ours (torch has none, and the reference's first
    # derivatives are not torch's): ours must then only run.
    unjudged: str | None = None


def run_case(spec: LossSpec, case: Case, *, double_backward: bool | None = None) -> CaseResult:
    """Run ``case`` on mylosses and torch (functional, and module when ``case.ctor`` is set)
    and compare everything; ``double_backward`` overrides ``case.double_backward``."""
    if double_backward is None:
        double_backward = case.double_backward
    start = time.perf_counter()
    result = CaseResult(case)
    try:
        result.failures = _differences(spec, case, double_backward)
    except Exception as e:  # a crash of the harness itself must not hide the other cases
        result.failures = [f"harness error: {type(e).__name__}: {e}\n{traceback.format_exc()}"]
    result.seconds = time.perf_counter() - start
    return result


def assert_same_exception(
    call_ours: Callable[[], Any], call_torch: Callable[[], Any], *, match_message: bool = False
) -> Exception | None:
    """Call both; raise AssertionError unless both raise the same exception type (and the same
    message, with ``match_message``) or both return. Returns torch's exception, if any."""
    theirs = _raised(call_torch)
    ours = _raised(call_ours)
    mismatch = _exception_mismatch("call", ours, theirs)
    if mismatch:
        raise AssertionError(mismatch)
    if match_message and str(ours) != str(theirs):
        raise AssertionError(f"messages differ: torch {str(theirs)!r}; mylosses {str(ours)!r}")
    return theirs


def _raised(call: Callable[[], Any]) -> Exception | None:
    try:
        call()
    except Exception as e:
        return e
    return None


def _differences(spec: LossSpec, case: Case, double_backward: bool) -> list[str]:
    failures = _compare_calls(
        "functional", spec.ours_fn, spec.torch_fn, case, double_backward, spec.reference
    )
    if case.ctor is not None:
        # The module call as a case of its own whose keyword arguments are the constructor's:
        # the float64 reference then casts the module's weights with the inputs.
        module_case = replace(case, kwargs=dict(case.ctor))

        def ours_module(*args: Any, **ctor: Any) -> torch.Tensor:
            return spec.ours_module(**ctor)(*args)

        def torch_module(*args: Any, **ctor: Any) -> torch.Tensor:
            return spec.torch_module(**ctor)(*args)

        failures += _compare_calls("module", ours_module, torch_module, module_case, False)
    return failures


def _compare_calls(
    where: str,
    ours_call: Callable[..., Any],
    torch_call: Callable[..., Any],
    case: Case,
    double_backward: bool,
    second_order_reference: Callable[..., Any] | None = None,
) -> list[str]:
    theirs = _run(torch_call, case.clone(), double_backward=double_backward)
    if double_backward and second_order_reference is not None:
        theirs = _second_order_from(second_order_reference, case, theirs)

    def reference(second_order: bool = False) -> _Outcome:
        upstream = None if theirs.upstream is None else theirs.upstream.to(torch.float64)
        outcome = _run(
            torch_call,
            case.clone(dtype=torch.float64),
            double_backward=second_order,
            upstream=upstream,
        )
        if second_order and second_order_reference is not None:
            outcome = _second_order_from(second_order_reference, case, outcome)
        return outcome

    dtypes = {t.dtype for _, t in case.named_tensors()}
    # Half results, second-order ones included, are judged against the float64 truth.
    ref = reference(double_backward) if dtypes & set(_HALF) else None
    ours = _run(ours_call, case.clone(), double_backward=double_backward, upstream=theirs.upstream)
    failures = _diff(where, case, ours, theirs, ref)
    if failures and ref is None and torch.float32 in dtypes:
        # A float32 disagreement: the float64 truth arbitrates (compare/tolerances.py).
        failures = _diff(where, case, ours, theirs, reference(double_backward))
    return failures


def _run(
    call: Callable[..., Any],
    case: Case,
    *,
    double_backward: bool,
    upstream: torch.Tensor | None = None,
) -> _Outcome:
    """Call ``call(*case.args, **case.kwargs)``, then take the gradients of every input that
    requires grad under ``upstream`` (default: a random one seeded by the case)."""
    outcome = _Outcome()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome.output = call(*case.args, **case.kwargs)
        except Exception as e:
            outcome.error = e
    outcome.warnings = [(w.category.__name__, str(w.message)) for w in caught]
    out = outcome.output
    named = case.grad_inputs()
    if out is None or not named or not isinstance(out, torch.Tensor) or not out.requires_grad:
        return outcome
    if upstream is None:
        upstream = _random(out.shape, out.dtype, out.device, case.seed)
    outcome.upstream = upstream
    if upstream.shape != out.shape or upstream.dtype != out.dtype:
        return outcome  # the outputs differ; the forward comparison says so
    inputs = [t for _, t in named]
    try:
        outcome.grads = torch.autograd.grad(
            out, inputs, upstream, create_graph=double_backward, allow_unused=True
        )
    except Exception as e:
        outcome.grad_error = e
        return outcome
    if double_backward:
        probes = [
            _random(t.shape, t.dtype, t.device, case.seed + 1 + i) for i, t in enumerate(inputs)
        ]
        dots = [
            (g * v).sum()
            for g, v in zip(outcome.grads, probes, strict=True)
            if g is not None and g.requires_grad
        ]
        try:
            if dots:
                total = sum(dots[1:], dots[0])
                outcome.grad_grads = torch.autograd.grad(total, inputs, allow_unused=True)
            else:
                outcome.grad_grads = [None] * len(inputs)
        except Exception as e:
            outcome.grad_grad_error = e
    return outcome


def _not_implemented(error: Exception | None) -> bool:
    """torch's refusal of a double backward: "derivative for aten::..._backward is not
    implemented"."""
    return isinstance(error, RuntimeError) and "is not implemented" in str(error)


def _second_order_from(reference: Callable[..., Any], case: Case, outcome: _Outcome) -> _Outcome:
    """``outcome`` (torch's) with its second-order gradients taken from ``reference`` (the
    spec's composition of plain torch ops), where torch's own double backward is not
    implemented: run on float64 copies of ``case`` under ``outcome``'s upstream gradient, each
    result cast to its input's dtype. Any other outcome is returned as it is.

    The reference is a witness only where its first-order gradients are torch's: a composition
    of plain ops can differ from torch's kernel where the derivative is not defined (CTC: torch
    gives NaN for a -inf log-probability or an impossible target, autograd a number). There the
    second order has no truth to compare with, and the outcome says so (``unjudged``)."""
    if not _not_implemented(outcome.grad_grad_error) or outcome.upstream is None:
        return outcome
    ref = _run(
        reference,
        case.clone(dtype=torch.float64),
        double_backward=True,
        upstream=outcome.upstream.to(torch.float64),
    )
    if ref.error is not None or ref.grad_error is not None:
        return outcome
    inputs = [t for _, t in case.grad_inputs()]
    first = [
        _compare(case, "reference grad", r.to(g.dtype), g)
        for r, g in ((_at(ref.grads, i), _at(outcome.grads, i)) for i in range(len(inputs)))
        if r is not None and g is not None
    ]
    if any(first):
        why = "the reference's first derivatives are not torch's: " + "; ".join(
            f for f in first if f
        )
        return replace(outcome, unjudged=why)
    grads = [
        None if g is None else g.to(t.dtype)
        for g, t in zip(list(ref.grad_grads) or [None] * len(inputs), inputs, strict=True)
    ]
    return replace(outcome, grad_grad_error=ref.grad_grad_error, grad_grads=grads)


def _random(shape: torch.Size, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    """Standard normal values (complex: both parts) from ``seed``, the same on every device."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=gen, dtype=torch.float64)
    if dtype.is_complex:
        values = torch.complex(values, torch.randn(shape, generator=gen, dtype=torch.float64))
    return values.to(device=device, dtype=dtype)


def _diff(
    where: str, case: Case, ours: _Outcome, theirs: _Outcome, reference: _Outcome | None
) -> list[str]:
    failures = [_exception_mismatch(where, ours.error, theirs.error)]
    if Counter(c for c, _ in ours.warnings) != Counter(c for c, _ in theirs.warnings):
        failures.append(
            f"{where}: warnings differ: torch {_describe_warnings(theirs)}; "
            f"mylosses {_describe_warnings(ours)}"
        )
    if ours.error is not None or theirs.error is not None:
        return [f for f in failures if f]
    ref = reference or _Outcome()
    output = _compare(case, f"{where} output", ours.output, theirs.output, ref.output)
    a, b = ours.output, theirs.output
    if output is None and a is not None and b is not None and a.requires_grad != b.requires_grad:
        output = f"{where} output: requires_grad {a.requires_grad} != torch's {b.requires_grad}"
    if output is not None:
        return [f for f in [*failures, output] if f]
    failures.append(_exception_mismatch(f"{where} backward", ours.grad_error, theirs.grad_error))
    named = case.grad_inputs()
    for i, (name, _) in enumerate(named):
        grads = _at(ours.grads, i), _at(theirs.grads, i), _at(ref.grads, i)
        failures.append(_compare(case, f"{where} grad {name}", *grads))
    if theirs.unjudged is not None:
        # no second-order truth (see _second_order_from): ours must run, its values are free
        failures.append(_exception_mismatch(f"{where} double backward", ours.grad_grad_error, None))
        return [f for f in failures if f]
    failures.append(
        _exception_mismatch(
            f"{where} double backward", ours.grad_grad_error, theirs.grad_grad_error
        )
    )
    if ours.grad_grads or theirs.grad_grads:
        second_order = loosest_tolerance((t.dtype for _, t in case.named_tensors()), case.loss)
        for i, (name, t) in enumerate(named):
            # A missing second-order gradient is zero: autograd returns None where a backward
            # does not depend on the input, zeros where it depends on it with slope zero.
            a = _at(ours.grad_grads, i)
            b = _at(theirs.grad_grads, i)
            zeros = torch.zeros_like(t.detach())
            a, b = zeros if a is None else a, zeros if b is None else b
            r = _at(ref.grad_grads, i) if ref.grad_grads else None
            if r is None and ref.grad_grads:
                r = zeros.to(torch.float64)
            label = f"{where} grad-grad {name}"
            failures.append(_compare(case, label, a, b, r, tolerance=second_order))
    return [f for f in failures if f]


def _compare(
    case: Case,
    name: str,
    ours: Any,
    theirs: Any,
    reference: torch.Tensor | None = None,
    *,
    tolerance: Tolerance | None = None,
) -> str | None:
    if ours is not None and not isinstance(ours, torch.Tensor):
        return f"{name}: mylosses gave a {type(ours).__name__}, not a tensor"
    if tolerance is None and theirs is not None:
        inputs = (t.dtype for _, t in case.named_tensors())
        tolerance = tolerance_for(theirs.dtype, case.loss, inputs)
    return compare_tensors(name, ours, theirs, reference, tolerance=tolerance)


def _exception_mismatch(where: str, ours: Exception | None, theirs: Exception | None) -> str | None:
    if type(ours) is type(theirs):
        return None
    return f"{where}: torch {_describe_exception(theirs)}; mylosses {_describe_exception(ours)}"


def _at(values: Sequence[torch.Tensor | None], i: int) -> torch.Tensor | None:
    return values[i] if i < len(values) else None


def _describe_warnings(outcome: _Outcome) -> str:
    if not outcome.warnings:
        return "none"
    return "; ".join(f"{category}({message[:120]!r})" for category, message in outcome.warnings)


def _describe_exception(e: Exception | None) -> str:
    if e is None:
        return "raised nothing"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"raised {type(e).__name__}({text[:200]!r})"
