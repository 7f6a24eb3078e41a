"""Case generators for the regression losses: L1Loss, MSELoss, HuberLoss, SmoothL1Loss.

One generator serves all four; each loss differs only in its options (``_Regression``). Every
option is drawn at random, so the comparison covers torch's semantics where they surprise:

- ``huber_loss``'s result has the input's dtype; the other three promote input and target;
- the functional ``weight=`` (l1, mse, huber; where the installed torch has it) must have the
  input's size; its 'mean' is ``sum(w * l) / sum(w)`` for l1 and mse but ``mean(w * l)`` for
  huber;
- legacy ``size_average``/``reduce`` win over ``reduction`` and warn (not on Huber, which has
  none); 'elementwise_mean' is a deprecated alias of 'mean' that warns (an error on the weighted
  path), any other unknown reduction raises ValueError;
- ``smooth_l1_loss(beta=0.0)`` is ``l1_loss``; ``delta <= 0`` and ``beta < 0`` raise;
- input and target of different shapes broadcast, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compare.cases import Case, Draw, positional_names, torch_accepts
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
c64, c128, i64 = torch.complex64, torch.complex128, torch.int64

# (input dtype, target dtype): weight. Mixed pairs come last.
_DTYPES: dict[tuple[torch.dtype, torch.dtype], float] = {
    (f64, f64): 3.0,
    (f32, f32): 4.0,
    (f16, f16): 1.5,
    (bf16, bf16): 1.5,
    (f32, f64): 0.4,
    (f64, f32): 0.3,
    (f32, i64): 0.3,
    (f64, i64): 0.2,
    (i64, f32): 0.1,
}
_COMPLEX_DTYPES = {(c64, c64): 0.4, (c128, c128): 0.4, (c64, c128): 0.1}
_DOUBLE_BACKWARD_DTYPES = (f32, f64)


@dataclass(frozen=True)
class _Regression:
    name: str
    functional: str
    legacy: bool  # takes size_average= / reduce=
    param: str | None  # "delta" (must be > 0) or "beta" (>= 0; 0 is l1)
    complex_inputs: bool  # torch takes complex input and target (L1 only)
    mixed_dtype_grads: bool  # gradients work when input and target dtypes differ

    @property
    def torch_fn(self) -> Any:
        return getattr(torch.nn.functional, self.functional)

    def spec(self) -> LossSpec:
        return LossSpec(self.name, self.functional, self.make_case, self.bench_case)

    def make_case(self, seed: int, device: str) -> Case:
        d = Draw(seed)
        kwargs: dict[str, Any] = {}
        tags: list[str] = []

        head = d.reduction(kwargs, legacy=0.1 if self.legacy else 0.0)

        values = d.choice(("normal", "big", "grid"), weights=(8, 1, 2))
        param = self._draw_param(d, dyadic=values == "grid", tags=tags)
        if self.param is not None and param is not None:
            kwargs[self.param] = param
        if values == "grid":
            # Multiples of q = threshold / 2 make d == 0 and |d| == delta (beta) exactly common.
            q = (param or 1.0) / 2 if self.param else 0.25
            values = f"grid:{q}"
            tags.append("ties")
        elif values == "big":
            tags.append("big")

        dtypes = {**_DTYPES, **_COMPLEX_DTYPES} if self.complex_inputs else _DTYPES
        in_dtype, t_dtype = d.choice(list(dtypes), weights=list(dtypes.values()))
        dtype_label = _dtype_name(in_dtype)
        if t_dtype != in_dtype:
            dtype_label += f"+{_dtype_name(t_dtype)}"

        kind = d.choice(("nd", "0d", "empty", "large"), weights=(85, 5, 6, 4))
        in_shape = t_shape = d.shape(kind)
        if kind != "nd":
            tags.append(kind)
        if kind != "large" and d.chance(0.12):
            in_shape, t_shape = d.broadcast_pair(in_shape)
            tags.append("bcast")

        input, target = d.values(in_shape, in_dtype, values), d.values(t_shape, t_dtype, values)
        if d.chance(0.05):
            for t in (input, target) if d.chance(0.3) else (d.choice((input, target)),):
                d.sprinkle_nonfinite(t)
            tags.append("nonfinite")
        input, in_layout = d.lay_out(input)
        target, t_layout = d.lay_out(target)
        layouts = {in_layout, t_layout}

        if torch_accepts(self.torch_fn, "weight") and d.chance(0.25):
            w_shape = in_shape
            if d.chance(0.04):
                w_shape = (*in_shape, 2)  # torch: "Weights and input must have the same size."
                tags.append("invalid")
            w_dtype = in_dtype.to_real() if in_dtype.is_complex else in_dtype
            if not w_dtype.is_floating_point:
                w_dtype = t_dtype
            weight, w_layout = d.lay_out(d.values(w_shape, w_dtype, "positive"))
            layouts.add(w_layout)
            kwargs["weight"] = weight
            tags.append("weight")
        tags += sorted(layouts & {"transposed", "sliced", "expanded"})

        differentiable = [t for t in (input, target) if t.is_floating_point() or t.is_complex()]
        if in_dtype != t_dtype and not self.mixed_dtype_grads:
            # torch's huber_loss backward fails when input and target dtypes differ ("Found dtype
            # Double but expected Float", a torch bug): draw such cases with nothing requiring grad.
            differentiable = []
        wants = d.choice(("input", "target", "both", "none"), weights=(5, 1, 3, 1))
        for name, t in (("input", input), ("target", target)):
            if wants in (name, "both") and any(t is u for u in differentiable):
                t.requires_grad_()
        if "weight" in kwargs and differentiable and d.chance(0.3):
            kwargs["weight"].requires_grad_()

        tensors = [input, target, kwargs.get("weight")]
        double_backward = (
            any(t is not None and t.requires_grad for t in tensors)
            and all(t is None or t.dtype in _DOUBLE_BACKWARD_DTYPES for t in tensors)
            and d.chance(0.25)
        )
        ctor = None if "weight" in kwargs else dict(kwargs)
        return Case(
            loss=self.name,
            seed=seed,
            device=device,
            args=(input, target),
            kwargs=kwargs,
            ctor=ctor,
            label="/".join([head, dtype_label, *tags]),
            double_backward=double_backward,
            arg_names=positional_names(self.torch_fn, 2),
        ).clone(device=device)

    def _draw_param(self, d: Draw, *, dyadic: bool, tags: list[str]) -> float | None:
        """delta or beta: None (torch's default 1.0), a power of two (so that ties are exact),
        any positive value, beta == 0.0 exactly, or rarely an invalid one."""
        if self.param is None or d.chance(0.2):
            return None
        if d.chance(0.03):
            tags.append("invalid")
            return d.choice((0.0, -1.0)) if self.param == "delta" else -0.5
        if self.param == "beta" and d.chance(0.12):
            tags.append("beta0")
            return 0.0
        if dyadic or d.chance(0.3):
            return d.choice((0.25, 0.5, 1.0, 2.0))
        return round(d.uniform(0.05, 3.0), 3)

    def bench_case(self, size: BenchSize, device: str) -> Case:
        """Mean reduction of float32 (8, 64) (overhead-bound) or (4096, 1024) (4M elements,
        memory-bound), the gradient of the input only."""
        shape = (8, 64) if size == "small" else (4096, 1024)
        d = Draw(0)
        input = d.values(shape, f32).requires_grad_()
        target = d.values(shape, f32)
        return Case(
            loss=self.name,
            seed=0,
            device=device,
            args=(input, target),
            kwargs={},
            ctor={},
            label=f"bench/{size}",
            arg_names=positional_names(self.torch_fn, 2),
        ).clone(device=device)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


SPECS = tuple(
    r.spec()
    for r in (
        _Regression(
            "L1Loss",
            "l1_loss",
            legacy=True,
            param=None,
            complex_inputs=True,
            mixed_dtype_grads=True,
        ),
        _Regression(
            "MSELoss",
            "mse_loss",
            legacy=True,
            param=None,
            complex_inputs=False,
            mixed_dtype_grads=True,
        ),
        _Regression(
            "HuberLoss",
            "huber_loss",
            legacy=False,
            param="delta",
            complex_inputs=False,
            mixed_dtype_grads=False,
        ),
        _Regression(
            "SmoothL1Loss",
            "smooth_l1_loss",
            legacy=True,
            param="beta",
            complex_inputs=False,
            mixed_dtype_grads=True,
        ),
    )
)
