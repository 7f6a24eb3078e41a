"""Case generators for the binary cross-entropy losses: BCELoss and BCEWithLogitsLoss.

Every option is drawn at random, so the comparison covers torch's semantics where they surprise:

- BCE clamps each log at -100 in forward but not in backward: probabilities of exactly 0 and 1
  (tag ``ties``) give losses of 100 per element and gradients of about 1e12 (input) or
  infinities (target);
- BCE checks that input *and target* lie in [0, 1] (NaN fails; tags ``invalid``/``nonfinite``)
  and that they have one dtype; BCEWithLogits checks neither range;
- BCEWithLogits is computed from logits up to ±1e4 (tag ``big``), ±inf and nan propagate as in
  torch's formula; its result has the target's dtype (mixed pairs are drawn);
- ``weight`` (both) and ``pos_weight`` (BCEWithLogits) broadcast with every shape torch
  accepts: the input's, a trailing part of it (``(C,)``, the documented pos_weight), size-1
  dimensions anywhere (``(N, 1)``, ``(1, C)``), one element, 0-d; rarely one that does not
  broadcast or that would grow the input (tag ``invalid``);
- tag ``bcast``: a weight or pos_weight broadcast against the input (input and target never
  broadcast here);
- legacy ``size_average``/``reduce`` (both losses and modules take them), invalid reductions;
- targets that require grad (both losses give them a gradient).

Input and target of different shapes (a ValueError in both) and a weight requiring grad (a
RuntimeError) are tested in ``tests/test_binary.py``: drawn here they would teach the generic
tests that the losses broadcast, or that the weight is differentiable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
i64 = torch.int64

_SAME: dict[tuple[torch.dtype, torch.dtype], float] = {
    (f64, f64): 3.0,
    (f32, f32): 4.0,
    (f16, f16): 1.5,
    (bf16, bf16): 1.5,
}
# BCE wants one dtype (a mixed pair is torch's RuntimeError); BCEWithLogits promotes.
_BCE_DTYPES = {**_SAME, (f32, f64): 0.15, (f64, f32): 0.1, (i64, f32): 0.05}
_LOGITS_DTYPES = {
    **_SAME,
    (f32, f64): 0.4,
    (f64, f32): 0.4,
    (f16, f32): 0.3,
    (f32, f16): 0.2,
    (bf16, f32): 0.2,
    (f32, i64): 0.05,
    (i64, f32): 0.05,
}
_DOUBLE_BACKWARD_DTYPES = (f32, f64)


@dataclass(frozen=True)
class _Binary:
    name: str
    functional: str
    logits: bool  # BCEWithLogits: logits, pos_weight, promotion

    @property
    def torch_fn(self) -> Any:
        return getattr(torch.nn.functional, self.functional)

    def spec(self) -> LossSpec:
        return LossSpec(self.name, self.functional, self.make_case, self.bench_case)

    def make_case(self, seed: int, device: str) -> Case:
        d = Draw(seed)
        kwargs: dict[str, Any] = {}
        tags: list[str] = []

        head = d.reduction(kwargs, legacy=0.1)

        dtypes = _LOGITS_DTYPES if self.logits else _BCE_DTYPES
        in_dtype, t_dtype = d.choice(list(dtypes), weights=list(dtypes.values()))
        dtype_label = _dtype_name(in_dtype)
        if t_dtype != in_dtype:
            dtype_label += f"+{_dtype_name(t_dtype)}"
            if not self.logits or i64 in (in_dtype, t_dtype):
                tags.append("invalid")

        kind = d.choice(("nd", "0d", "empty", "large"), weights=(85, 5, 6, 4))
        shape = d.shape(kind)
        if kind != "nd":
            tags.append(kind)

        input = self._input(d, shape, in_dtype, tags)
        target = self._target(d, shape, t_dtype, tags)
        input, in_layout = d.lay_out(input)
        target, t_layout = d.lay_out(target)
        layouts = {in_layout, t_layout}

        for name in ("weight", "pos_weight") if self.logits else ("weight",):
            if d.chance(0.3):
                w_dtype = in_dtype if in_dtype.is_floating_point else t_dtype
                if d.chance(0.08):
                    w_dtype = d.choice((f32, f64))  # torch casts a weight of another dtype
                w_shape = self._weight_shape(d, shape, tags)
                if tuple(w_shape) != tuple(shape) and "invalid" not in tags:
                    tags.append("bcast")  # the weight broadcasts against the input
                values = d.values(w_shape, f64, "positive").to(w_dtype)
                w, w_layout = d.lay_out(values)
                layouts.add(w_layout)
                kwargs[name] = w
                tags.append(name)
        tags += sorted(layouts & {"transposed", "sliced", "expanded"})

        differentiable = [t for t in (input, target) if t.is_floating_point()]
        wants = d.choice(("input", "target", "both", "none"), weights=(5, 1, 3, 1))
        for name, t in (("input", input), ("target", target)):
            if wants in (name, "both") and any(t is u for u in differentiable):
                t.requires_grad_()

        tensors = [input, target, kwargs.get("weight"), kwargs.get("pos_weight")]
        double_backward = (
            any(t is not None and t.requires_grad for t in tensors)
            and all(t is None or t.dtype in _DOUBLE_BACKWARD_DTYPES for t in tensors)
            and d.chance(0.25)
        )
        return Case(
            loss=self.name,
            seed=seed,
            device=device,
            args=(input, target),
            kwargs=kwargs,
            # A module's buffers are tensors of their own (the state-dict tests write them in
            # place), not expanded views.
            ctor={
                k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
            },
            label="/".join([head, dtype_label, *dict.fromkeys(tags)]),
            double_backward=double_backward,
            arg_names=positional_names(self.torch_fn, 2),
        ).clone(device=device)

    # -- values --------------------------------------------------------------------------------

    def _input(
        self, d: Draw, shape: tuple[int, ...], dtype: torch.dtype, tags: list[str]
    ) -> torch.Tensor:
        if not dtype.is_floating_point:
            return torch.randint(0, 2, shape, generator=d.gen).to(dtype)
        if self.logits:
            kind = d.choice(("normal", "big", "grid"), weights=(8, 1, 1))
            if kind == "big":
                # ±1e4 and ordinary logits side by side: exp(-x) overflows in a naive form.
                x = d.values(shape, f64, "big")
                x = torch.where(torch.rand(shape, generator=d.gen) < 0.5, x, x / 1e4)
                tags.append("big")
            elif kind == "grid":
                x = d.values(shape, f64, "grid:0.5")  # logits of exactly 0 among others
                tags.append("ties")
            else:
                x = d.values(shape, f64) * 3
            x = x.to(dtype)
            if d.chance(0.05):
                d.sprinkle_nonfinite(x)
                tags.append("nonfinite")
            return x
        # Probabilities away from 0 and 1 (so that gradcheck's steps stay in range) or, as
        # "ties", with exact 0s and 1s among them.
        x = torch.rand(shape, generator=d.gen, dtype=f64) * 0.96 + 0.02
        if d.chance(0.12) and x.numel():
            ends = torch.randint(0, 3, shape, generator=d.gen)
            x = torch.where(ends == 0, torch.zeros_like(x), torch.where(ends == 1, 1.0, x))
            tags.append("ties")
        x = x.to(dtype)
        if d.chance(0.03) and x.numel():
            x.view(-1)[d.rng.randrange(x.numel())] = d.choice((1.5, -0.25, 1.0 + 1e-3))
            tags.append("invalid")
        if d.chance(0.03) and x.numel():
            d.sprinkle_nonfinite(x)  # torch's range check fails on nan and inf too
            tags.append("nonfinite")
        return x

    def _target(
        self, d: Draw, shape: tuple[int, ...], dtype: torch.dtype, tags: list[str]
    ) -> torch.Tensor:
        if not dtype.is_floating_point:
            return torch.randint(0, 2, shape, generator=d.gen).to(dtype)
        if d.chance(0.4):
            y = torch.randint(0, 2, shape, generator=d.gen).to(f64)  # hard labels
        else:
            y = torch.rand(shape, generator=d.gen, dtype=f64)
        if self.logits and d.chance(0.04):
            y = y * 3 - 1  # torch does not check a logits target's range
            tags.append("outside")
        y = y.to(dtype)
        if not self.logits and d.chance(0.03) and y.numel():
            y.view(-1)[d.rng.randrange(y.numel())] = d.choice((1.5, -0.5))
            tags.append("invalid")
        if self.logits and d.chance(0.03):
            d.sprinkle_nonfinite(y)
            tags.append("nonfinite")
        return y

    def _weight_shape(self, d: Draw, shape: tuple[int, ...], tags: list[str]) -> tuple[int, ...]:
        """A shape that broadcasts to ``shape`` without growing it, or rarely one that fails."""
        if d.chance(0.04):
            tags.append("invalid")
            if shape and shape[-1] > 1 and d.chance(0.5):
                return (*shape[:-1], shape[-1] + 1)  # does not broadcast
            return (2, *shape)  # would grow the input
        how = d.choice(("full", "suffix", "ones", "one", "0d"), weights=(3, 4, 3, 1, 1))
        if how == "full" or not shape:
            return shape if how != "0d" else ()
        if how == "suffix":
            return shape[d.rng.randrange(len(shape)) :]
        if how == "ones":
            return tuple(1 if d.chance(0.5) else n for n in shape)
        if how == "one":
            return (1,)
        return ()

    def bench_case(self, size: BenchSize, device: str) -> Case:
        """Mean reduction of float32 (8, 64) (overhead-bound) or (4096, 1024) (4M elements,
        memory-bound), the gradient of the input only; BCEWithLogits with a pos_weight of
        shape (C,)."""
        shape = (8, 64) if size == "small" else (4096, 1024)
        d = Draw(0)
        kwargs: dict[str, Any] = {}
        if self.logits:
            input = (d.values(shape, f32) * 3).requires_grad_()
            kwargs["pos_weight"] = d.values(shape[-1:], f32, "positive")
        else:
            input = (torch.rand(shape, generator=d.gen) * 0.96 + 0.02).requires_grad_()
        target = torch.rand(shape, generator=d.gen)
        return Case(
            loss=self.name,
            seed=0,
            device=device,
            args=(input, target),
            kwargs=kwargs,
            ctor=dict(kwargs),
            label=f"bench/{size}",
            arg_names=positional_names(self.torch_fn, 2),
        ).clone(device=device)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


SPECS = (
    _Binary("BCELoss", "binary_cross_entropy", logits=False).spec(),
    _Binary("BCEWithLogitsLoss", "binary_cross_entropy_with_logits", logits=True).spec(),
)
