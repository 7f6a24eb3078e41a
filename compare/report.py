"""Reports of ``compare check`` and ``compare bench``.

The report dict (written as JSON) is the source of truth; the terminal text, Markdown and JUnit
XML are rendered from it alone, so a saved JSON report can be rendered again later.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

__all__ = [
    "Progress",
    "environment",
    "render_bench_markdown",
    "render_bench_text",
    "render_check_junit",
    "render_check_markdown",
    "render_check_text",
    "write_reports",
]

_MESSAGE_LINES = 3  # failure messages shown per case in the text and Markdown reports
_MARKDOWN_CASES = 50  # failing cases listed in Markdown (a CI step summary has a size limit)


def environment(devices: Sequence[str]) -> dict[str, Any]:
    """Versions of Python, torch and mylosses, and the name of each device."""
    try:
        mylosses_version = str(importlib.import_module("mylosses").__version__)
    except Exception as e:  # the report still says why mylosses is unusable
        mylosses_version = f"unavailable ({type(e).__name__}: {e})"
    names = {d: torch.cuda.get_device_name() if d == "cuda" else _cpu_name() for d in devices}
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mylosses": mylosses_version,
        "platform": platform.platform(),
        "devices": names,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- tables ------------------------------------------------------------------------------


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


# -- check -------------------------------------------------------------------------------

_CHECK_HEADERS = ("loss", "device", "cases", "passed", "failed", "failures by class")
_SHOWN_TAGS = 5


def _check_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per loss and device. A configuration class is a label such as
    "sum/float32/weight/sliced"; the last column counts the failures of each of its parts
    (failed/cases with that part), so a part that fails wherever it is drawn stands out."""
    rows = []
    for row in report["summary"]:
        tags = list(row["failures_by_tag"].items())
        classes = ", ".join(f"{t} {n}/{total}" for t, (n, total) in tags[:_SHOWN_TAGS])
        if len(tags) > _SHOWN_TAGS:
            classes += ", ..."
        rows.append(
            [row["loss"], row["device"], row["cases"], row["passed"], row["failed"], classes]
        )
    return rows


def _failed_cases(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in report["cases"] if not c["ok"]]


def _closing_line(report: dict[str, Any]) -> str:
    return f"{report['passed']} passed, {report['failed']} failed"


def render_check_text(report: dict[str, Any]) -> str:
    """The terminal report: summary table, each failing case with its messages and replay
    command, and the closing line ``N passed, M failed``."""
    out = [_text_table(_CHECK_HEADERS, _check_rows(report))]
    for case in _failed_cases(report):
        out.append("")
        out.append(f"FAILED {case['loss']} {case['device']} seed={case['seed']} [{case['label']}]")
        out += [f"  {line}" for line in case["description"].splitlines()[1:]]
        out += [f"  - {m}" for m in case["failures"][:_MESSAGE_LINES]]
        if len(case["failures"]) > _MESSAGE_LINES:
            out.append(f"  - ... {len(case['failures']) - _MESSAGE_LINES} more in the JSON report")
        out.append(f"  replay: {case['replay']}")
    if report["unspecified"]:
        out += ["", f"no case generator for: {', '.join(report['unspecified'])}"]
    out += ["", _closing_line(report)]
    return "\n".join(out)


def render_check_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    out = [
        "## mylosses vs torch.nn: equivalence",
        "",
        f"torch {env['torch']}, mylosses {env['mylosses']}, Python {env['python']}; "
        f"devices: {', '.join(f'{d} ({n})' for d, n in env['devices'].items())}; "
        f"seed {report['seed']}, {report['trials']} trials per loss"
        + (f", case {report['case']}" if report["case"] is not None else ""),
        "",
        _markdown_table(_CHECK_HEADERS, _check_rows(report)),
        "",
        f"**{_closing_line(report)}**",
    ]
    failed = _failed_cases(report)
    if failed:
        out += ["", "### Failing cases", ""]
        for case in failed[:_MARKDOWN_CASES]:
            out.append(
                f"- `{case['loss']}` on {case['device']}, seed {case['seed']} (`{case['label']}`)"
            )
            out += [f"  - {m.splitlines()[0]}" for m in case["failures"][:_MESSAGE_LINES]]
            out.append(f"  - replay: `{case['replay']}`")
        if len(failed) > _MARKDOWN_CASES:
            out.append(f"- ... {len(failed) - _MARKDOWN_CASES} more in the JSON report")
    return "\n".join(out) + "\n"


def render_check_junit(report: dict[str, Any]) -> str:
    """One testsuite per loss and device, one testcase per configuration class: the first two
    parts of a case's label (reduction/dtypes, e.g. ``mean/float32``); a failure lists every
    failing case of the class with its full label and replay command."""
    root = ET.Element("testsuites", name="compare check", time=f"{report['seconds']:.3f}")
    for row in report["summary"]:
        cases = [
            c for c in report["cases"] if (c["loss"], c["device"]) == (row["loss"], row["device"])
        ]
        by_label: dict[str, list[dict[str, Any]]] = {}
        for c in cases:
            by_label.setdefault("/".join(c["label"].split("/")[:2]), []).append(c)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{row['loss']}[{row['device']}]",
            tests=str(len(by_label)),
            failures=str(sum(any(not c["ok"] for c in cs) for cs in by_label.values())),
            time=f"{sum(c['seconds'] for c in cases):.3f}",
        )
        for label, group in sorted(by_label.items()):
            testcase = ET.SubElement(
                suite,
                "testcase",
                classname=f"compare.{row['device']}.{row['loss']}",
                name=label,
                time=f"{sum(c['seconds'] for c in group):.3f}",
            )
            failed = [c for c in group if not c["ok"]]
            if failed:
                first = failed[0]["failures"][0].splitlines()[0]
                failure = ET.SubElement(
                    testcase,
                    "failure",
                    message=f"{len(failed)} of {len(group)} cases failed: {first}",
                    type="mismatch",
                )
                failure.text = "\n\n".join(
                    "\n".join([c["description"], *c["failures"], f"replay: {c['replay']}"])
                    for c in failed
                )
    for total in ("tests", "failures"):
        root.set(total, str(sum(int(suite.get(total, 0)) for suite in root)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# -- bench -------------------------------------------------------------------------------

_BENCH_HEADERS = (
    "loss",
    "device",
    "size",
    "ours ms",
    "torch ms",
    "time ratio",
    "ours MiB",
    "torch MiB",
    "memory ratio",
)


def _bench_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [
            r["loss"],
            r["device"],
            f"{r['size']} {tuple(r['shape'])}",
            f"{r['ours_ms']:.4g}",
            f"{r['torch_ms']:.4g}",
            f"{r['time_ratio']:.2f}",
            f"{r['ours_mib']:.4g}",
            f"{r['torch_mib']:.4g}",
            f"{r['memory_ratio']:.2f}",
        ]
        for r in report["results"]
    ]


def render_bench_text(report: dict[str, Any]) -> str:
    return _text_table(_BENCH_HEADERS, _bench_rows(report)) + "\n\n" + _bench_note(report)


def render_bench_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    return "\n".join(
        [
            "## mylosses vs torch.nn: speed and memory",
            "",
            f"torch {env['torch']}, mylosses {env['mylosses']}, Python {env['python']}; "
            f"devices: {', '.join(f'{d} ({n})' for d, n in env['devices'].items())}",
            "",
            _markdown_table(_BENCH_HEADERS, _bench_rows(report)),
            "",
            _bench_note(report),
            "",
        ]
    )


def _bench_note(report: dict[str, Any]) -> str:
    return (
        f"Forward + backward of the functional, {report['threads']} thread, {report['rounds']} "
        "interleaved rounds; ms are medians over rounds, time ratio (ours / torch) the median "
        "of the per-round ratios. MiB: peak memory allocated during one forward + backward "
        "(the gradient included). Ratio < 1: mylosses is faster / smaller."
    )


# -- files and progress ------------------------------------------------------------------


def write_reports(
    report: dict[str, Any],
    *,
    md: str | Path | None = None,
    json_path: str | Path | None = None,
    junit: str | Path | None = None,
) -> None:
    """Write the JSON report and whichever renderings are asked for (JUnit: check only)."""
    check = report["kind"] == "check"
    outputs: list[tuple[str | Path | None, str]] = []
    if json_path:
        outputs.append((json_path, json.dumps(report, indent=1) + "\n"))
    if md:
        outputs.append(
            (md, render_check_markdown(report) if check else render_bench_markdown(report))
        )
    if junit:
        if not check:
            raise ValueError("JUnit XML is written for check reports only")
        outputs.append((junit, render_check_junit(report)))
    for path, text in outputs:
        assert path is not None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")


class Progress:
    """Progress of one batch of work on stderr: a bar redrawn in place on a terminal, one
    plain line at the end otherwise (CI logs); nothing when ``enabled`` is False."""

    def __init__(self, title: str, total: int, *, enabled: bool, stream: TextIO | None = None):
        self.title, self.total, self.enabled = title, total, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = self.failed = 0
        self.start = time.perf_counter()

    def update(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += not ok
        if self.enabled and self.tty:
            width = 30
            filled = width * self.done // max(self.total, 1)
            self.stream.write(
                f"\r{self.title} [{'#' * filled}{'.' * (width - filled)}] "
                f"{self.done}/{self.total}, {self.failed} failed"
            )
            self.stream.flush()

    def close(self, summary: str | None = None) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        if summary is None:
            summary = f"{self.done} cases, {self.done - self.failed} passed, {self.failed} failed"
        line = f"{self.title}: {summary} ({elapsed:.1f}s)"
        self.stream.write(f"\r{line}\x1b[K\n" if self.tty else f"{line}\n")
        self.stream.flush()
