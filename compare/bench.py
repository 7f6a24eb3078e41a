"""``python -m compare bench``: forward+backward time and peak memory, mylosses over torch.nn.

Per loss, at each size its spec names (``small``: overhead-bound; ``large``: millions of float32
elements, memory-bound; variants such as ``large/options`` for a costly combination of options),
in one process at one thread:

- time: ``rounds`` rounds; in each, ours and torch each run the same number of iterations of
  ``loss = fn(*args); loss.backward(); clear .grad`` (which goes first alternates), timed with
  ``time.perf_counter`` (CUDA: synchronized). The ratio is the median of per-round ratios
  ours / torch, so slow drifts of the machine cancel;
- peak memory of one forward+backward, the gradient included, over what was allocated before:
  on the CPU by replaying the allocator events ``torch.profiler`` records with
  ``profile_memory=True`` (exact and noise-free), on CUDA from ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from compare.cases import Case
from compare.registry import BenchSize, LossSpec, UsageError, resolve_devices, select_specs
from compare.report import Progress, environment, write_reports

__all__ = ["DEFAULT_ROUNDS", "peak_memory", "run_bench"]

DEFAULT_ROUNDS = 15
_ROUND_SECONDS = 0.05  # time per side and round; sets the iterations (many when small)
_MAX_ITERATIONS = 2000
_MIB = 2**20


def run_bench(
    losses: str | Sequence[str] | None = None,
    device: str = "cpu",
    rounds: int = DEFAULT_ROUNDS,
    md: str | Path | None = None,
    json_path: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Benchmark mylosses against torch.nn (functional forward+backward) at one thread, write
    the requested reports and return the report dict. Arguments as in ``run_check``."""
    if rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {rounds}")
    specs = select_specs(losses)
    devices = resolve_devices(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = []
        for dev in devices:
            for spec in specs:
                sizes = spec.bench_sizes
                bar = Progress(f"{spec.name} {dev}", len(sizes), enabled=progress)
                for size in sizes:
                    results.append(_measure(spec, size, dev, rounds))
                    bar.update()
                bar.close(
                    ", ".join(f"{r['size']} x{r['time_ratio']:.2f}" for r in results[-len(sizes) :])
                )
    finally:
        torch.set_num_threads(threads)
    report = {
        "kind": "bench",
        "environment": environment(devices),
        "losses": [s.name for s in specs],
        "devices": devices,
        "rounds": rounds,
        "threads": 1,
        "results": results,
    }
    write_reports(report, md=md, json_path=json_path)
    return report


def _measure(spec: LossSpec, size: BenchSize, device: str, rounds: int) -> dict[str, Any]:
    case = spec.bench_case(size, device)
    steps = {"ours": _step(spec.ours_fn, case), "torch": _step(spec.torch_fn, case)}
    for step in steps.values():
        for _ in range(3):
            step()
    iterations = _iterations(steps["torch"], device)
    times: dict[str, list[float]] = {"ours": [], "torch": []}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for side in ("ours", "torch") if r % 2 == 0 else ("torch", "ours"):
                times[side].append(_time(steps[side], iterations, device))
    finally:
        if gc_was_enabled:
            gc.enable()
    ratios = [o / t for o, t in zip(times["ours"], times["torch"], strict=True)]
    peaks = {side: peak_memory(step, device) for side, step in steps.items()}
    input = case.args[0]
    return {
        "loss": spec.name,
        "device": device,
        "size": size,
        "shape": list(input.shape),
        "dtype": str(input.dtype).removeprefix("torch."),
        "iterations": iterations,
        "ours_ms": statistics.median(times["ours"]) * 1e3,
        "torch_ms": statistics.median(times["torch"]) * 1e3,
        "time_ratio": statistics.median(ratios),
        "ours_mib": peaks["ours"] / _MIB,
        "torch_mib": peaks["torch"] / _MIB,
        "memory_ratio": peaks["ours"] / peaks["torch"] if peaks["torch"] else float("nan"),
    }


def _step(fn: Callable[..., torch.Tensor], case: Case) -> Callable[[], None]:
    """One training step's worth of the loss: forward, backward, gradients cleared."""
    args, kwargs = case.args, case.kwargs
    leaves = [t for _, t in case.grad_inputs()]

    def step() -> None:
        loss = fn(*args, **kwargs)
        loss.backward()
        for t in leaves:
            t.grad = None

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(step: Callable[[], None], iterations: int, device: str) -> float:
    """Seconds per iteration of ``step``."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iterations


def _iterations(step: Callable[[], None], device: str) -> int:
    """Iterations per round so that one side's round takes about ``_ROUND_SECONDS``."""
    per_iteration = min(_time(step, 1, device) for _ in range(3))
    return max(1, min(_MAX_ITERATIONS, round(_ROUND_SECONDS / per_iteration)))


def peak_memory(step: Callable[[], None], device: str) -> int:
    """Peak bytes allocated by one call of ``step`` beyond what was allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # kineto logs every profiler start and stop on stderr at its level 5; 6 silences that (read
    # when the profiler first starts in this process).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
