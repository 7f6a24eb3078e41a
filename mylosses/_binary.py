r"""What the two binary cross-entropy losses share: torch's broadcast errors for their weights,
and the walk over an input in cache-sized blocks with weights broadcast along leading dims.

**Blocks.** Like the regression losses (``mylosses/_pointwise.py``), ``BCELoss`` and
``BCEWithLogitsLoss`` compute the loss and the gradient in one pass over cache-sized blocks, so
that each intermediate stays in cache and only the gradient is a full-size buffer. Their weights
(``weight``, ``pos_weight``) broadcast: the usual ``pos_weight`` of shape ``(C,)`` over an
``(N, C)`` input repeats every ``C`` elements. A weight that varies only along the trailing
dimensions ``d..`` of the input (its leading sizes 1 or absent) is *periodic*: its values, as a
flat vector of ``inner = prod(shape[d:])`` elements, repeat along the flat input. Viewing the
input as ``(rows, inner)``, a block is a range of whole rows (when ``inner`` is small) or a
range of columns of one row (when ``inner`` is large), and the weight's share of a block is the
same column range of its flat vector, broadcast over the block's rows.
"""

from __future__ import annotations

import torch

from mylosses import _validation

# Elements per block: 128K float32 values are 512 KiB; a block and two scratch blocks stay in a
# core's L2 cache between the elementwise steps.
BLOCK = 1 << 17


def shape_text(shape: torch.Size | tuple[int, ...]) -> str:
    """A shape as torch writes it in broadcast errors: ``[2, 3]``."""
    return "[" + ", ".join(str(s) for s in shape) + "]"


def broadcast_into(
    a: tuple[int, ...] | torch.Size, b: tuple[int, ...] | torch.Size, out: torch.Size
) -> None:
    """Raise torch's RuntimeError unless tensors of shapes ``a`` and ``b`` broadcast together
    to a shape that an in-place op on a tensor of shape ``out`` can write (``out.mul_(w)``).

    torch's ``infer_size`` walks the dimensions from the last and names the first mismatch;
    an in-place result that would have to grow names both shapes.
    """
    error = _validation.broadcast_error(torch.Size(a), torch.Size(b))
    if error is not None:
        raise error
    shape = tuple(torch.broadcast_shapes(a, b))
    if shape != tuple(out):
        raise RuntimeError(
            f"output with shape {shape_text(out)} doesn't match the broadcast shape "
            f"{shape_text(shape)}"
        )


def suffix_span(w: torch.Tensor, shape: torch.Size) -> int | None:
    """``inner`` for a weight ``w`` (broadcastable to ``shape``) that varies only along trailing
    dimensions of ``shape`` (see the module docstring); None for any other broadcast."""
    lead = len(shape) - w.dim()
    sizes = (1,) * lead + tuple(w.shape)
    first = next((i for i, s in enumerate(sizes) if s != 1), len(sizes))
    inner = 1
    for i in range(first, len(sizes)):
        if sizes[i] != shape[i]:
            return None
        inner *= shape[i]
    return inner


def periodic_vector(
    w: torch.Tensor, shape: torch.Size, inner: int, dtype: torch.dtype
) -> torch.Tensor:
    """A suffix-broadcast weight as the flat vector of its ``inner`` repeating values (``inner``
    may exceed the weight's own span: the weight is then expanded up to it), contiguous, in
    ``dtype``."""
    full = w.to(dtype).expand(shape)
    flat = full.reshape(-1, inner)[0] if full.numel() else full.reshape(-1)[:0]
    return flat.contiguous()


def spans(n: int, inner: int) -> list[tuple[int, int, int, int]]:
    """``(row_start, row_stop, col_start, col_stop)`` blocks covering an ``(n // inner, inner)``
    view, each of about BLOCK elements: whole rows while a row is short, else pieces of rows."""
    rows = n // inner
    if inner <= BLOCK:
        step = max(1, BLOCK // inner)
        return [(r, min(r + step, rows), 0, inner) for r in range(0, rows, step)]
    return [
        (r, r + 1, c, min(c + BLOCK, inner)) for r in range(rows) for c in range(0, inner, BLOCK)
    ]


# -- small inputs ------------------------------------------------------------------------------
#
# At a batch of a few rows every op's fixed cost (a few µs) is the whole time. An op with a
# Python number operand (``t - 1``, ``g.mul_(0.25)``) first wraps the number into a fresh 0-d
# tensor, which costs about as much again as the op; the short paths use cached 0-d constants.

# At most this many elements take the losses' short paths (one op per step, no blocks): up to
# a block they are faster than the blocked kernels at every size measured.
SMALL = BLOCK

ONE = torch.ones(())  # 1 - x: float32, exact in any floating dtype; a CPU scalar fits any device
ZERO = torch.zeros(())
_scales: dict[tuple[int, torch.dtype, float], torch.Tensor] = {}


def scale_tensor(numel: int, dtype: torch.dtype, sign: float = 1.0) -> torch.Tensor:
    """``sign / numel`` (the mean's factor) as a cached 0-d CPU tensor of ``dtype``."""
    key = (numel, dtype, sign)
    c = _scales.get(key)
    if c is None:
        if len(_scales) > 256:
            _scales.clear()
        c = _scales[key] = torch.full((), sign / numel, dtype=dtype)
    return c
