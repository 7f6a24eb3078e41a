"""compare: the harness that holds mylosses to torch.nn.

Run from a checkout (the repository root on ``sys.path``)::

    python -m compare check                      # every loss, 200 random cases each, on the CPU
    python -m compare check --losses MSELoss,L1Loss --device all --trials 1000 --seed 7
    python -m compare check --losses MSELoss --device cpu --case 12345   # replay one case
    python -m compare check --md reports/check.md --json reports/check.json \\
        --junit reports/check.xml                 # the CI reports
    python -m compare bench                      # time and peak memory, ours / torch
    python -m compare bench --losses MSELoss --rounds 31 --md reports/bench.md

``check`` draws random configurations of each loss (shapes from 0-d and empty to ~100k
elements, every option, every reduction, every dtype torch takes, broadcasting, non-contiguous
and expanded layouts, ties and non-finite values), runs mylosses and torch.nn on the same
tensors and compares exceptions, warnings, outputs, every input gradient and, on a subset,
second-order gradients. It prints a summary table, each failing case with the command that
replays it, and a closing ``N passed, M failed``; the exit status is 1 on any mismatch, 2 on a
usage error, 0 otherwise.

``bench`` times forward+backward of mylosses and torch interleaved in one process at one
thread, at a small (overhead-bound) and a large (memory-bound) size per loss, and measures
each side's peak memory.

Layout, for whoever adds a loss:

- ``compare/specs/<family>.py``: the loss's ``LossSpec`` with its case generators (``SPECS``);
- ``compare/registry.py``: ``REGISTRY``, collected from the specs;
- ``compare/cases.py``: ``Case`` and ``Draw``, the random shapes, values and layouts;
- ``compare/parity.py``: ``run_case``, the one parity helper (tests use it too);
- ``compare/tolerances.py``: the one per-dtype tolerance table and ``compare_tensors``;
- ``compare/check.py``, ``compare/bench.py``, ``compare/report.py``: the two commands and their
  reports (JSON is the source of truth; Markdown and JUnit XML are rendered from it).

In-process: ``compare.check.run_check(...)`` and ``compare.bench.run_bench(...)`` return the
report dicts.
"""
