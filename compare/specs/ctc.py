"""Case generator for CTCLoss.

torch's semantics that the draws cover:

- ``log_probs`` (T, N, C), or unbatched (T, C); float32 and float64 only (half dtypes raise
  NotImplementedError on the CPU); usually a log_softmax (normalised), sometimes raw values
  (the gradient convention, ``exp(log_probs)`` minus the occupancy, is compared as is), -inf
  entries (probability 0) and nan (tag ``nonfinite``); any memory layout;
- targets padded (N, S) with S at least the longest target (padding filled with junk labels)
  or concatenated (sum of target lengths,); int64, int32 or float dtypes; repeated labels
  (which need a blank between them), labels equal to the blank (torch accepts them);
- ``blank`` anywhere in [0, C) (invalid: C or -1); ``zero_infinity``; every reduction ('mean'
  divides each loss by its clamped target length first);
- input_lengths/target_lengths as int64 or int32 tensors, or tuples/lists of ints (both of one
  kind, else TypeError); zero-length targets, zero input lengths, targets too long for their
  inputs (an infinite loss: tag ``nonfinite`` unless ``zero_infinity`` makes it 0);
- invalid calls (tag ``invalid``): lengths out of range, too-short padded targets, a wrong
  concatenated length, wrong sizes of the length vectors, float lengths, a bad blank, half
  dtypes, empty log_probs, 4-d log_probs.
"""

from __future__ import annotations

from typing import Any

import torch

from compare.cases import Case, Draw, positional_names
from compare.registry import BenchSize, LossSpec

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
i64, i32 = torch.int64, torch.int32

_ARG_NAMES = positional_names(torch.nn.functional.ctc_loss, 4)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _labels(d: Draw, count: int, c: int, blank: int, kind: str) -> list[int]:
    """``count`` labels in [0, C) other than ``blank``: "any", "repeats" (from two or three
    labels, so runs of equal labels are common) or "blanks" (the blank itself is allowed)."""
    if c == 1:
        return [0] * count
    choices = [k for k in range(c) if k != blank]
    if kind == "repeats":
        choices = choices[: d.choice((1, 2, 3))]
    elif kind == "blanks":
        choices = list(range(c))
    return [d.choice(choices) for _ in range(count)]


def ctc_case(seed: int, device: str) -> Case:
    d = Draw(seed)
    kwargs: dict[str, Any] = {}
    tags: list[str] = []
    head = d.reduction(kwargs, legacy=0.0)

    dtype = d.choice((f32, f64, f16, bf16), (5, 5, 0.15, 0.15))
    if dtype in (f16, bf16):
        tags.append("invalid")
    kind = d.choice(("small", "medium", "long", "unbatched"), (5, 3, 1, 1.5))
    if kind == "unbatched":
        n = 1
    else:
        n = d.choice((1, 2, 3, 5, 8))
    c = d.choice((1, 2, 3, 5, 8, 20)) if kind != "long" else d.choice((5, 30))
    t = {"small": (1, 2, 3, 5, 8), "medium": (10, 17, 30), "long": (60, 120)}.get(kind, (4, 9))
    t_len = d.choice(t)
    blank = d.choice((0, c - 1, d.rng.randrange(c)))
    if blank != 0 or d.chance(0.3):
        kwargs["blank"] = blank
    if d.chance(0.4):
        kwargs["zero_infinity"] = d.chance(0.7)
    zero_infinity = kwargs.get("zero_infinity", False)

    # lengths
    il = [d.choice((t_len, t_len, d.rng.randint(0, t_len))) for _ in range(n)]
    label_kind = d.choice(("any", "repeats", "blanks"), (6, 3, 0.5))
    if c == 1:
        tl = [0] * n  # only the blank exists
    else:
        tl = []
        for i in range(n):
            fit = max((il[i] + 1) // 2, 0)  # always feasible when targets do not repeat
            tl.append(d.rng.randint(0, max(min(fit, 12), 0)))
        if d.chance(0.1):
            tl = [d.rng.randint(0, t_len + 2) for _ in range(n)]  # some may be impossible
            tags.append("long")
    if label_kind == "blanks":
        tags.append("blanktarget")
    seqs = [_labels(d, k, c, blank, label_kind) for k in tl]

    def feasible(i: int) -> bool:
        repeats = sum(1 for a, b in zip(seqs[i], seqs[i][1:], strict=False) if a == b)
        return tl[i] + repeats <= il[i]

    if not all(feasible(i) for i in range(n)) and not zero_infinity:
        tags.append("nonfinite")
    elif not all(feasible(i) for i in range(n)):
        tags.append("zeroinf")

    # targets
    layout = d.choice(("padded", "concat"))
    t_dtype = d.choice((i64, i32, f32), (6, 2, 0.3))
    if layout == "padded":
        s = max(tl, default=0) + d.choice((0, 0, 1, 3))
        rows = [q + _labels(d, s - len(q), c, blank, "any") for q in seqs]
        targets = torch.tensor(rows, dtype=torch.long).reshape(n, s).to(t_dtype)
        if kind == "unbatched" and d.chance(0.5):
            targets = targets[0]  # (S,): taken as concatenated by torch
            targets = targets[: tl[0]]
            layout = "concat"
    else:
        targets = torch.tensor([v for q in seqs for v in q], dtype=torch.long).to(t_dtype)
    tags.append(layout)
    if t_dtype != i64:
        tags.append(_dtype_name(t_dtype))

    # log_probs
    shape = (t_len, n, c) if kind != "unbatched" else (t_len, c)
    values = d.choice(("normalised", "raw", "peaked", "neginf", "nan"), (8, 1.5, 1, 0.5, 0.2))
    raw = d.values(shape, f64) * (4.0 if values == "peaked" else 1.0)
    lp = raw if values == "raw" else raw - raw.logsumexp(-1, keepdim=True)
    if values == "neginf":
        mask = torch.rand(shape, generator=d.gen) < 0.2
        lp = lp.masked_fill(mask, -float("inf"))
        tags.append("nonfinite")
    if values == "nan":
        d.sprinkle_nonfinite(lp)
        tags.append("nonfinite")
    if values in ("raw", "peaked"):
        tags.append(values)
    lp, lp_layout = d.lay_out(lp.to(dtype))
    if lp_layout != "contiguous":
        tags.append(lp_layout)

    lengths = d.choice(("tensor", "tensor32", "tuple", "list"), (4, 1, 2, 1))
    tags.append(f"lengths:{lengths}")

    # invalid calls
    if d.chance(0.06):
        what = d.choice(
            ("il>T", "il<0", "tl<0", "short", "sizes", "blank", "floatlen", "mixed", "empty", "4d")
        )
        tags.append("invalid")
        if what == "il>T":
            il[0] = t_len + 1
        elif what == "il<0":
            il[-1] = -1
        elif what == "tl<0" and kind != "unbatched":
            tl[0] = -1
        elif what == "short" and targets.numel() > 0:
            targets = targets[..., :-1]
        elif what == "sizes":
            il = [*il, t_len]
        elif what == "blank":
            kwargs["blank"] = d.choice((c, -1))
        elif what == "floatlen":
            lengths = "float"
        elif what == "mixed":
            lengths = "mixed"
        elif what == "empty":
            lp = lp[:0]
            il = [0] * n
        else:
            lp = lp[None]

    def as_lengths(v: list[int], index: int) -> Any:
        if lengths == "tensor" or (lengths == "mixed" and index == 0):
            return torch.tensor(v, dtype=i64)
        if lengths == "tensor32":
            return torch.tensor(v, dtype=i32)
        if lengths == "float":
            return torch.tensor(v, dtype=f32)
        return tuple(v) if lengths in ("tuple", "mixed") else list(v)

    if lp.dtype.is_floating_point and d.chance(0.9):
        lp.requires_grad_()
    ctor = {k: v for k, v in kwargs.items() if k in ("blank", "reduction", "zero_infinity")}
    return Case(
        loss="CTCLoss",
        seed=seed,
        device=device,
        args=(lp, targets, as_lengths(il, 0), as_lengths(tl, 1)),
        kwargs=kwargs,
        ctor=ctor,
        label="/".join([head, _dtype_name(dtype), kind, *tags]),
        double_backward=False,  # torch has no double backward for CTC; tests/test_ctc.py
        arg_names=_ARG_NAMES,
    ).clone(device=device)


def _lse(*terms: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(terms))) with -inf-safe first and second derivatives."""
    stacked = torch.stack(terms)
    m = stacked.detach().amax(0)
    finite = m > -float("inf")
    m0 = torch.where(finite, m, torch.zeros_like(m))
    s = torch.exp(stacked - m0).sum(0)
    safe = torch.log(torch.where(finite, s, torch.ones_like(s)))
    return torch.where(finite, m0 + safe, torch.full_like(m, -float("inf")))


def ctc_reference(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: Any,
    target_lengths: Any,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> torch.Tensor:
    """CTC as plain differentiable torch ops (the alpha recursion, autograd for the rest), plus
    ``exp(log_probs) - exp(log_probs).detach()`` summed over each sample's valid steps: the same
    value as torch's, and a gradient in torch's convention (exp(log_probs) minus the
    occupancy), so that its second derivatives are those of torch's first-order gradient. torch
    has no double backward for CTC; the harness compares ours with this one."""
    lens = [
        [int(v) for v in (x.reshape(-1).tolist() if isinstance(x, torch.Tensor) else x)]
        for x in (input_lengths, target_lengths)
    ]
    il, tl = lens
    batched = log_probs.dim() == 3
    lp = log_probs if batched else log_probs.unsqueeze(1)
    t_all, n, _c = lp.shape
    targets = targets.long()
    offsets = [sum(tl[:i]) for i in range(n)]
    losses = []
    for i in range(n):
        seq = (
            targets[offsets[i] : offsets[i] + tl[i]] if targets.dim() == 1 else targets[i, : tl[i]]
        )
        ext = torch.full((2 * tl[i] + 1,), blank, dtype=torch.long)
        ext[1::2] = seq
        width = ext.numel()
        skip = torch.zeros(width, dtype=torch.bool)
        if width > 3:
            skip[3::2] = ext[3::2] != ext[1:-2:2]
        ninf = torch.full((width,), -float("inf"), dtype=lp.dtype)
        if il[i] == 0:
            alpha = ninf.clone()
            total = torch.zeros((), dtype=lp.dtype) if tl[i] == 0 else ninf[0]
        else:
            lpe = lp[:, i, :].gather(1, ext[None].expand(t_all, width))
            alpha = torch.where(torch.arange(width) < 2, lpe[0], ninf)
            for t in range(1, il[i]):
                one = torch.cat([ninf[:1], alpha[:-1]])
                two = torch.where(skip, torch.cat([ninf[:2], alpha[:-2]]), ninf)
                alpha = _lse(alpha, one, two) + lpe[t]
            total = _lse(alpha[-1], alpha[-2]) if width > 1 else alpha[-1]
        nll = -total
        extra = torch.exp(lp[: il[i], i, :]).sum()
        if zero_infinity and nll.item() == float("inf"):
            nll, extra = torch.zeros_like(nll), torch.zeros_like(extra)
        losses.append(nll + (extra - extra.detach()))
    loss = torch.stack(losses)
    if reduction == "none":
        return loss if batched else loss[0]
    if reduction == "sum":
        return loss.sum()
    return (loss / torch.tensor(tl, dtype=loss.dtype).clamp_min(1)).mean()


def _bench(size: BenchSize, device: str) -> Case:
    """float32 log_softmax'd log_probs, mean reduction, padded targets, tensor lengths:
    "small" T=50, N=8, C=20, S<=10; "large" T=1000, N=64, C=64, S=200 with varied input
    (800..1000) and target (100..200) lengths."""
    d = Draw(0)
    if size == "small":
        t, n, c, s = 50, 8, 20, 10
        il = [t] * n
        tl = [d.rng.randint(1, s) for _ in range(n)]
    else:
        t, n, c, s = 1000, 64, 64, 200
        il = [d.rng.randint(800, t) for _ in range(n)]
        il[0] = t
        tl = [d.rng.randint(100, s) for _ in range(n)]
        tl[0] = s
    raw = d.values((t, n, c), f32)
    lp = (raw - raw.logsumexp(-1, keepdim=True)).requires_grad_()
    targets = torch.randint(1, c, (n, s), generator=d.gen)
    return Case(
        loss="CTCLoss",
        seed=0,
        device=device,
        args=(lp, targets, torch.tensor(il), torch.tensor(tl)),
        kwargs={},
        ctor={},
        label=f"bench/{size}",
        arg_names=_ARG_NAMES,
    ).clone(device=device)


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    return x - x.logsumexp(-1, keepdim=True)


SPECS = (
    LossSpec(
        "CTCLoss",
        "ctc_loss",
        ctc_case,
        _bench,
        reference=ctc_reference,
        gradcheck_map=_log_softmax,
    ),
)
