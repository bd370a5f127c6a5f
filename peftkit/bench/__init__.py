"""The benchmark suite: every strategy on the same tasks, measured side by side.

    peftkit bench benchmarks/suites/main.yaml            # run (re-runs skip cells already done)
    peftkit bench --report benchmarks/results/main       # rebuild results.md and plots from results.json
    python -m peftkit.bench ...                          # the same without the peftkit command

Modules: `suite` (the YAML schema and its validation), `cell` (one cell, in its own process), `common`
(what a cell and the baselines share: device, model, data), `results` (results.json / results.csv),
`measure` (peak memory), `runner` (runs the suite, a cell per process), `report` (results.md
and the PNG plots), `baselines` (HF Trainer and a hand-written Accelerate loop for one LoRA cell),
`tune` (a suite's search per task and strategy, with `peftkit.tuning`, before its cells).

For peftkit.cli: ``setup_bench_parser(parser)`` fills an existing parser and returns the handler,
`run_bench`.
"""

from __future__ import annotations

import argparse
import sys

from .suite import SuiteError, load_suite

__all__ = ["SuiteError", "load_suite", "run_bench", "setup_bench_parser"]

HELP = "run a benchmark suite (every strategy side by side), or rebuild its report"


def setup_bench_parser(p: argparse.ArgumentParser):
    """Add the ``bench`` arguments to ``p``; returns the handler, `run_bench`."""
    p.add_argument("suite", nargs="?", help="a suite file, e.g. benchmarks/suites/main.yaml")
    p.add_argument("--report", metavar="DIR", help="rebuild results.md, results.csv and the plots from DIR/results.json")
    p.add_argument("--readme", metavar="FILE", help="with --report: rewrite the section between <!-- bench:SUITE:start --> and "
                   "<!-- bench:SUITE:end --> in FILE (e.g. README.md) from the results (SUITE: the suite's name)")
    p.add_argument("--repredict", action="store_true", help="with --report: recompute the planner's predictions from each "
                   "cell's settings (not its measurement) before rebuilding the report")
    p.add_argument("--output", metavar="DIR", help="results folder (default: benchmarks/results/<suite name>)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="run only these tasks of the suite")
    p.add_argument("--strategies", nargs="+", metavar="NAME", help="run only these strategies (suite names, or baseline-trainer / baseline-accelerate)")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again (cells that succeeded are always skipped)")
    p.add_argument("--jobs", type=int, default=1, help="cells run side by side (default 1; above 1, times are not comparable)")
    p.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS", help="stop a cell after this long and record it as failed")
    p.add_argument("--keep-checkpoints", metavar="DIR", help="keep each cell's checkpoints and training logs under DIR")
    p.add_argument("--list", action="store_true", help="list the suite's cells and whether they are done, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return run_bench


def run_bench(args: argparse.Namespace) -> int:
    """Run ``args.suite`` or rebuild ``args.report``; returns the exit status."""
    from .report import build_report

    if args.report:
        if args.suite:
            raise ValueError("Give a suite to run or --report DIR to rebuild a report, not both.")
        if args.repredict:
            from .runner import repredict

            repredict(args.report)
        for path in build_report(args.report):
            print(path)
        if args.readme:
            from .report import update_readme

            print(update_readme(args.readme, args.report))
        return 0
    if args.readme or args.repredict:
        raise ValueError("--readme and --repredict go with --report DIR (they work on a results folder).")
    if not args.suite:
        raise ValueError("Name a suite file (e.g. peftkit bench benchmarks/suites/quick.yaml) or pass --report DIR.")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}.")
    if args.list:
        return _list_cells(args)
    from .runner import run_suite

    out = run_suite(args.suite, args.output, tasks=args.tasks, strategies=args.strategies, retry_failed=args.retry_failed,
                    jobs=args.jobs, cell_timeout=args.cell_timeout, keep_checkpoints=args.keep_checkpoints,
                    progress=not args.no_progress)
    print(f"results: {out}/results.md, results.csv, results.json")
    return 0


def _list_cells(args: argparse.Namespace) -> int:
    """Each selected cell and what a run would do with it (the run's own `pending_cells`, with the searches
    already cached): todo (``re-tune`` when its search must run again first), failed, stale or done."""
    from pathlib import Path

    from .results import read_results
    from .runner import RETUNE, default_output_dir, done_rows, pending_cells, select_cells
    from .tune import cached_tunes

    suite = load_suite(args.suite)
    out = Path(args.output) if args.output else default_output_dir(suite)
    done = done_rows(suite, read_results(out))
    cells = select_cells(suite, args.tasks, args.strategies)
    _, stale = pending_cells(suite, cells, done, tuned=cached_tunes(suite, out, cells))
    for key in cells:
        row, why = done.get(key.id()), stale.get(key.id())
        state = ("todo" if row is None or (why or "").startswith(RETUNE) else
                 "failed" if row.get("error") else "stale" if why else "done")
        print(f"{state:6} {key.id()}" + (f" ({why})" if why else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m peftkit.bench``: the ``peftkit bench`` command without the peftkit CLI."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m peftkit.bench", description=HELP)
    handler = setup_bench_parser(parser)
    args = parser.parse_args(argv)
    try:
        return handler(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"peftkit bench: error: {err}", file=sys.stderr)
        return 1
