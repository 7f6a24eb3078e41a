"""Case generators for the classification losses over class scores: CrossEntropyLoss, NLLLoss.

Every option is drawn at random, so that the comparison covers torch's semantics where they
surprise:

- class-index targets (int64; uint8 where torch takes it; int32 is rejected) and, for
  cross_entropy, class-probability targets (a target of the input's shape, which may require
  grad and get a gradient; its dtype may differ from the input's and promotes);
- ``weight`` (the input's dtype with class indices; any float dtype with probabilities);
  ``ignore_index`` that hits (inside [0, C) too), all targets ignored ('mean' is nan);
- ``label_smoothing`` 0, in (0, 1], exactly 1, negative (no smoothing), above 1 (an error);
- shapes: unbatched ``(C,)`` with a 0-d target, ``(N, C)``, ``(N, C, d1, ..., dK)`` up to 6-d,
  empty batches and spatial dims, large inputs; transposed, sliced, expanded and channels-last
  layouts;
- values: logits of about ±1e4; for nll_loss real log-probabilities with -inf entries; nan/inf;
- invalid targets (out of range, wrong dtype, wrong batch size), weights of the wrong size,
  invalid reductions, legacy ``size_average``/``reduce``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BENCH_SIZES, BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
_DTYPES = {f64: 3.0, f32: 4.0, f16: 1.2, bf16: 1.2}
_CLASSES = (1, 2, 3, 5, 7, 10, 13, 32, 100)
_SIZES = (1, 2, 3, 5, 7)
# Large cases: (batch, classes[, spatial...]), 100k to 300k logits.
_LARGE = ((317, 331), (64, 2049), (5, 21, 37, 41), (3, 1000, 50))


@dataclass(frozen=True)
class _Classification:
    name: str
    functional: str
    probabilities: bool  # cross_entropy: probability targets and label smoothing

    @property
    def torch_fn(self) -> Any:
        return getattr(torch.nn.functional, self.functional)

    def spec(self, bench_sizes: tuple[BenchSize, ...] = BENCH_SIZES) -> LossSpec:
        return LossSpec(self.name, self.functional, self.make_case, self.bench_case, bench_sizes)

    # -- one random case -----------------------------------------------------------------

    def make_case(self, seed: int, device: str) -> Case:
        d = Draw(seed)
        kwargs: dict[str, Any] = {}
        tags: list[str] = []

        head = d.reduction(kwargs, legacy=0.08)

        dtype = d.choice(list(_DTYPES), weights=list(_DTYPES.values()))
        dtype_label = str(dtype).removeprefix("torch.")

        kind = d.choice(("nd", "empty", "large"), weights=(90, 6, 4))
        shape = self._shape(d, kind)
        if kind != "nd":
            tags.append(kind)
        if len(shape) == 1:
            tags.append("unbatched")
        elif len(shape) > 2:
            tags.append("kdim")
        C = shape[0] if len(shape) == 1 else shape[1]
        t_shape = () if len(shape) == 1 else (shape[0], *shape[2:])

        prob = self.probabilities and d.chance(0.3)
        values = d.choice(("normal", "big"), weights=(9, 1))
        if values == "big":
            tags.append("big")
        input = self._input(d, shape, dtype, values)
        if d.chance(0.04):
            d.sprinkle_nonfinite(input)
            tags.append("nonfinite")
        elif not self.probabilities and d.chance(0.15) and input.numel():
            flat = input.view(-1)
            for _ in range(d.rng.randint(1, 4)):
                flat[d.rng.randrange(flat.numel())] = -float("inf")
            tags.append("neginf")

        if prob:
            tags.append("prob")
            t_dtype = dtype
            if dtype == f64 and d.chance(0.3):
                # (a float64 result of a lower-precision input carries torch's own rounding of
                # log p, which no float64 tolerance can judge: only a float64 input mixes)
                t_dtype = f32
                if t_dtype != dtype:
                    dtype_label += f"+{str(t_dtype).removeprefix('torch.')}"
            target = self._probabilities(d, shape, t_dtype)
        else:
            target, t_tags = self._classes(d, t_shape, C, kwargs, len(shape) > 2)
            tags += t_tags
            if target.dtype != torch.int64:
                dtype_label += f"+{str(target.dtype).removeprefix('torch.')}"

        if d.chance(0.3):
            w_dtype = dtype
            if prob and dtype == f64 and d.chance(0.3):
                w_dtype = f32
            w_shape: tuple[int, ...] = (C,)
            if d.chance(0.04):
                w_shape = d.choice(((C + 1,), (1, C), (C, 2)))
                tags.append("invalid")
            weight = d.values(w_shape, w_dtype, "positive")
            if d.chance(0.1) and weight.numel() > 1:
                weight.view(-1)[d.rng.randrange(weight.numel())] = 0.0
            weight, _ = d.lay_out(weight, d.choice(("contiguous", "sliced"), (9, 1)))
            kwargs["weight"] = weight
            tags.append("weight")

        if self.probabilities:
            ls = self._smoothing(d, tags)
            if ls is not None:
                kwargs["label_smoothing"] = ls

        input, layout = self._layout(d, input)
        if layout != "contiguous":
            tags.append(layout)
        if prob:
            target, t_layout = d.lay_out(
                target, d.choice(("contiguous", "transposed", "sliced"), (8, 1, 1))
            )
            if t_layout != "contiguous" and t_layout not in tags:
                tags.append(t_layout)

        wants = d.choice(("input", "target", "both", "none"), weights=(7, 1, 2, 1))
        if wants != "none" and (wants in ("input", "both") or not prob):
            input.requires_grad_()
        if prob and wants in ("target", "both"):
            target.requires_grad_()

        tensors = [input, target, kwargs.get("weight")]
        double_backward = (
            any(t is not None and t.requires_grad for t in tensors)
            and all(
                t is None or not t.is_floating_point() or t.dtype in (f32, f64) for t in tensors
            )
            and d.chance(0.25)
        )
        return Case(
            loss=self.name,
            seed=seed,
            device=device,
            args=(input, target),
            kwargs=kwargs,
            ctor=dict(kwargs),
            label="/".join([head, dtype_label, *tags]),
            double_backward=double_backward,
            arg_names=positional_names(self.torch_fn, 2),
        ).clone(device=device)

    def _shape(self, d: Draw, kind: str) -> tuple[int, ...]:
        if kind == "large":
            return d.choice(_LARGE)
        ndim = d.choice((1, 2, 3, 4, 5, 6), weights=(1.5, 6, 2, 2, 1, 1))
        if kind == "empty":  # an empty batch or spatial dim (an unbatched input has neither)
            ndim = max(ndim, 2)
        C = d.choice(_CLASSES)
        if ndim == 1:
            return (C,)
        while True:
            dims = [d.choice((1, 2, 3, 5, 8, 13))] + [d.choice(_SIZES) for _ in range(ndim - 2)]
            if kind == "empty":
                dims[d.rng.randrange(len(dims))] = 0
            shape = (dims[0], C, *dims[1:])
            n = 1
            for s in shape:
                n *= s
            if n <= 4096:
                return shape

    def _input(
        self, d: Draw, shape: tuple[int, ...], dtype: torch.dtype, values: str
    ) -> torch.Tensor:
        x = d.values(shape, f64, "normal") * 2.0
        if values == "big":
            x = x * 5e3
        if not self.probabilities:  # log-probabilities: x - logsumexp(x) over the classes
            dim = 0 if len(shape) == 1 else 1
            if x.numel():
                x = x - x.logsumexp(dim, keepdim=True)
        return x.to(dtype)

    def _probabilities(self, d: Draw, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        dim = 0 if len(shape) == 1 else 1
        how = d.choice(("softmax", "uniform", "onehot"), weights=(5, 3, 1))
        if how == "uniform" or not len(shape):
            y = d.values(shape, f64, "positive") / 2
        else:
            z = d.values(shape, f64, "normal") * 2
            if how == "onehot" and z.numel():
                y = (z == z.amax(dim, keepdim=True)).to(f64)
            else:
                y = (z - z.logsumexp(dim, keepdim=True)).exp() if z.numel() else z
        return y.to(dtype)

    def _classes(
        self, d: Draw, t_shape: tuple[int, ...], C: int, kwargs: dict[str, Any], kdim: bool
    ) -> tuple[torch.Tensor, list[str]]:
        tags: list[str] = []
        target = torch.randint(0, C, t_shape, generator=d.gen)
        if d.chance(0.35):
            how = d.choice(("default", "inside", "negative", "all"), weights=(1, 4, 2, 1))
            ignore = {"default": -100, "inside": d.rng.randrange(C), "negative": -1}.get(how, 0)
            if how == "all":
                ignore = d.choice((-100, d.rng.randrange(C)))
                target.fill_(ignore)
                tags.append("allignored")
            elif target.numel() and how != "inside":
                mask = torch.rand(t_shape, generator=d.gen) < 0.3
                target[mask] = ignore
            kwargs["ignore_index"] = ignore
            tags.append("ignore")
            if ignore < 0 and bool((target == ignore).any()):
                tags.append("outside")  # valid only with this ignore_index
        if d.chance(0.03) and target.numel():
            target.view(-1)[d.rng.randrange(target.numel())] = d.choice((C, C + 3, -2))
            tags.append("invalid")
        r = d.rng.random()
        if r < 0.04:
            target = target.to(torch.int32)  # torch: "expected target dtype to be Long or Byte"
            tags.append("invalid")
        elif r < 0.08 and C <= 255 and bool((target >= 0).all()) and (not kdim or target.numel()):
            # uint8: accepted, except by the K-dimensional kernel (and there inconsistently
            # for empty inputs: drawn non-empty only)
            target = target.to(torch.uint8)
            if kdim:
                tags.append("invalid")
        if d.chance(0.02):
            target = target[:-1] if target.dim() and target.shape[0] else target.unsqueeze(0)
            tags.append("invalid")
        return target, tags

    def _smoothing(self, d: Draw, tags: list[str]) -> float | None:
        if d.chance(0.45):
            return None
        r = d.rng.random()
        if r < 0.25:
            return 0.0
        if r < 0.3:
            return 1.0
        if r < 0.33:
            tags.append("invalid")
            return d.choice((1.5, 2.0))
        if r < 0.36:
            return -0.2  # accepted by torch: no smoothing at all
        tags.append("smooth")
        return round(d.uniform(0.01, 0.9), 3)

    def _layout(self, d: Draw, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        if x.dim() == 4 and d.chance(0.15):
            return x.contiguous(memory_format=torch.channels_last), "channels_last"
        if x.dim() >= 3 and d.chance(0.08):
            moved = x.movedim(1, -1).contiguous().movedim(-1, 1)
            return moved, "classes_last"
        return d.lay_out(x)

    # -- the benchmark ------------------------------------------------------------------

    def bench_case(self, size: BenchSize, device: str) -> Case:
        """Mean reduction, float32 class indices: (8, 64) (overhead-bound) or (4096, 32000)
        (memory-bound, a language model's vocabulary); for cross_entropy also "large/options"
        (a weight, an ignore_index that hits, label_smoothing 0.1: torch's chain of eleven
        autograd nodes) and "large/probs" (probability targets)."""
        shape = (8, 64) if size == "small" else (4096, 32000)
        d = Draw(0)
        input = d.values(shape, f32)
        if not self.probabilities:
            input = input - input.logsumexp(1, keepdim=True)
        input.requires_grad_()
        target = torch.randint(0, shape[1], (shape[0],), generator=d.gen)
        kwargs: dict[str, Any] = {}
        if size == "large/options":
            kwargs = {"weight": d.values((shape[1],), f32, "positive"), "ignore_index": 0}
            kwargs["label_smoothing"] = 0.1
            target[::10] = 0
        elif size == "large/probs":
            z = d.values(shape, f32)
            target = (z - z.logsumexp(1, keepdim=True)).exp()
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


SPECS = (
    _Classification("CrossEntropyLoss", "cross_entropy", probabilities=True).spec(
        ("small", "large", "large/options", "large/probs")
    ),
    _Classification("NLLLoss", "nll_loss", probabilities=False).spec(),
)
