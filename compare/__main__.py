"""The command line: ``python -m compare check ...`` and ``python -m compare bench ...``."""

from __future__ import annotations

import argparse
import sys

import compare
from compare.bench import DEFAULT_ROUNDS, run_bench
from compare.check import DEFAULT_SEED, DEFAULT_TRIALS, run_check
from compare.registry import REGISTRY, UsageError
from compare.report import render_bench_text, render_check_text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compare",
        description=compare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{check,bench}")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--losses",
            default=None,
            help=f"comma-separated loss names (default: all: {', '.join(REGISTRY)})",
        )
        sub.add_argument(
            "--device",
            default="cpu",
            choices=("cpu", "cuda", "all"),
            help="all: cpu, plus cuda when present (default: cpu)",
        )
        sub.add_argument("--md", metavar="FILE", help="write a Markdown report")
        sub.add_argument("--json", metavar="FILE", dest="json_path", help="write the JSON report")

    check = commands.add_parser(
        "check", help="compare mylosses with torch.nn on random cases; exit 1 on any mismatch"
    )
    common(check)
    check.add_argument(
        "--trials", type=int, default=DEFAULT_TRIALS, help="cases per loss (default: %(default)s)"
    )
    check.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="the run's seed (default: %(default)s)"
    )
    check.add_argument("--case", type=int, metavar="SEED", help="replay the one case SEED")
    check.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")

    bench = commands.add_parser("bench", help="time and peak memory of mylosses over torch.nn")
    common(bench)
    bench.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="interleaved rounds (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            report = run_check(
                losses=args.losses,
                device=args.device,
                trials=args.trials,
                seed=args.seed,
                case=args.case,
                md=args.md,
                json_path=args.json_path,
                junit=args.junit,
                progress=True,
            )
            written = [path for path in (args.md, args.json_path, args.junit) if path]
            if written:
                print(f"reports written: {', '.join(written)}")
            print(render_check_text(report))  # ends with the closing line "N passed, M failed"
            return 1 if report["failed"] else 0
        report = run_bench(
            losses=args.losses,
            device=args.device,
            rounds=args.rounds,
            md=args.md,
            json_path=args.json_path,
            progress=True,
        )
        print(render_bench_text(report))
        return 0
    except UsageError as e:
        print(f"python -m compare {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
