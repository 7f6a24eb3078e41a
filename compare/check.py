"""``python -m compare check``: random configurations of every loss, mylosses against torch.nn.

Each loss gets ``trials`` cases whose seeds are derived from ``seed`` and the loss name; a case
is rebuilt from its own seed alone, so ``--case SEED`` replays exactly one of them.
"""

from __future__ import annotations

import random
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compare.parity import run_case
from compare.registry import (
    LossSpec,
    UsageError,
    resolve_devices,
    select_specs,
    unspecified_losses,
)
from compare.report import Progress, environment, write_reports

__all__ = ["DEFAULT_SEED", "DEFAULT_TRIALS", "case_seeds", "replay_command", "run_check"]

DEFAULT_TRIALS = 200
DEFAULT_SEED = 0


def case_seeds(loss: str, seed: int, trials: int) -> list[int]:
    """The seeds of ``loss``'s ``trials`` cases for the run seed ``seed`` (device-independent,
    so the CPU and CUDA runs draw the same cases)."""
    rng = random.Random(f"{loss}:{seed}")
    return [rng.randrange(2**31) for _ in range(trials)]


def replay_command(loss: str, device: str, seed: int) -> str:
    return f"python -m compare check --losses {loss} --device {device} --case {seed}"


def run_check(
    losses: str | Sequence[str] | None = None,
    device: str = "cpu",
    trials: int = DEFAULT_TRIALS,
    seed: int = DEFAULT_SEED,
    case: int | None = None,
    md: str | Path | None = None,
    json_path: str | Path | None = None,
    junit: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Compare mylosses with torch.nn on ``trials`` random cases per loss and device (or on
    the one case seeded ``case``), write the requested reports and return the report dict.

    ``losses``: names (a sequence, or one comma-separated string; None: every registered loss);
    ``device``: "cpu", "cuda" or "all". Raises ``compare.registry.UsageError`` for an unknown
    loss or an unavailable device. ``report["failed"]`` is the number of failing cases.
    """
    if trials < 0:
        raise UsageError(f"--trials must be >= 0, got {trials}")
    specs = select_specs(losses)
    devices = resolve_devices(device)
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    for dev in devices:
        for spec in specs:
            seeds = [case] if case is not None else case_seeds(spec.name, seed, trials)
            bar = Progress(f"{spec.name} {dev}", len(seeds), enabled=progress)
            for case_seed in seeds:
                record = _run_one(spec, case_seed, dev)
                records.append(record)
                bar.update(record["ok"])
            bar.close()
    report = {
        "kind": "check",
        "environment": environment(devices),
        "losses": [s.name for s in specs],
        "devices": devices,
        "seed": seed,
        "trials": trials if case is None else 1,
        "case": case,
        "seconds": time.perf_counter() - start,
        "passed": sum(r["ok"] for r in records),
        "failed": sum(not r["ok"] for r in records),
        "summary": _summary(records, specs, devices),
        "unspecified": _unspecified(),
        "cases": records,
    }
    write_reports(report, md=md, json_path=json_path, junit=junit)
    return report


def _run_one(spec: LossSpec, seed: int, device: str) -> dict[str, Any]:
    try:
        case = spec.make_case(seed, device)
    except Exception as e:  # the generator failed: report it as this case's failure
        failures = [f"case generator error: {type(e).__name__}: {e}\n{traceback.format_exc()}"]
        return _record(spec.name, device, seed, "?", failures, 0.0, "(the generator failed)")
    result = run_case(spec, case)
    return _record(
        spec.name, device, seed, case.label, result.failures, result.seconds, case.describe()
    )


def _record(
    loss: str,
    device: str,
    seed: int,
    label: str,
    failures: list[str],
    seconds: float,
    description: str,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "loss": loss,
        "device": device,
        "seed": seed,
        "label": label,
        "ok": not failures,
        "seconds": round(seconds, 6),
        "failures": failures,
    }
    if failures:
        record["description"] = description
        record["replay"] = replay_command(loss, device, seed)
    return record


def _summary(
    records: list[dict[str, Any]], specs: list[LossSpec], devices: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for device in devices:
        for spec in specs:
            mine = [r for r in records if r["loss"] == spec.name and r["device"] == device]
            failing = Counter(r["label"] for r in mine if not r["ok"])
            tags = Counter(t for r in mine for t in r["label"].split("/"))
            failing_tags = Counter(t for r in mine if not r["ok"] for t in r["label"].split("/"))
            rows.append(
                {
                    "loss": spec.name,
                    "device": device,
                    "cases": len(mine),
                    "passed": sum(r["ok"] for r in mine),
                    "failed": sum(not r["ok"] for r in mine),
                    "failures_by_class": dict(failing.most_common()),
                    # label components of the failing cases: [failed, cases with it], most first
                    "failures_by_tag": {
                        t: [n, tags[t]]
                        for t, n in sorted(failing_tags.items(), key=lambda x: (-x[1], x[0]))
                    },
                }
            )
    return rows


def _unspecified() -> list[str]:
    try:
        return unspecified_losses()
    except ImportError:  # mylosses itself is missing: every case says so already
        return []
