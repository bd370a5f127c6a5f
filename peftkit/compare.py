"""``peftkit compare``: which strategy on *my* data, *my* model, *my* memory, in one command.

    peftkit compare --model M --task classification --train train.csv --validation dev.csv --test test.csv \\
        --text-column headline --label-column topic --strategies full lora adapter bitfit \\
        --tune-trials 6 --seeds 3 --max-steps 300 --budget 8GiB --output runs/compare

The benchmark suite machinery as one command: it writes ``OUTPUT/suite.yaml`` (one task, the
strategies asked for, ``seeds: [0 .. N-1]``, a ``tune:`` section) and runs it with
`peftkit.bench.runner.run_suite`: each strategy is first tuned briefly on the validation split
(`peftkit.bench.tune`, never test), then trained with its chosen values once per seed, a process
per cell; re-running the same command resumes (finished searches and cells are skipped). Then the
usual report (results.md / csv / json / plots) and ``recommendation.md``: which strategy to use and
why, the best mean score, the strategies within noise of it and the cheapest of those (by peak
memory, train time and trainable parameters), and what the planner predicts for ``--budget``, its
ranking fed with the scores this run just measured (never the benchmark results shipped with peftkit).

Building the parser imports neither torch nor the bench modules (``peftkit compare --help`` stays light).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_STRATEGIES = ("full", "lora", "adapter", "bitfit")
COLUMN_FLAGS = ("text_column", "label_column", "tokens_column", "tags_column")
RECOMMENDATION_MD = "recommendation.md"


def setup_compare_parser(p: argparse.ArgumentParser) -> Callable:
    """Add ``peftkit compare``'s arguments to ``p``; returns the handler, `cmd_compare`."""
    p.add_argument("--model", required=True, help="a local model directory or hub id")
    p.add_argument(
        "--task",
        default="classification",
        help="classification or token-classification (default: classification)",
    )
    p.add_argument(
        "--train", required=True, metavar="FILE", help="training file (csv, tsv, json/jsonl or CoNLL)"
    )
    p.add_argument(
        "--validation",
        metavar="FILE",
        help="validation file the tuning scores on (default: a seeded 10%% "
        "of --train, kept out of every cell's training)",
    )
    p.add_argument("--test", required=True, metavar="FILE", help="test file every strategy is scored on")
    for flag in COLUMN_FLAGS:
        p.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, help=f"the {flag.split('_')[0]} column of the files"
        )
    p.add_argument(
        "--strategies",
        nargs="+",
        default=list(DEFAULT_STRATEGIES),
        metavar="NAME",
        help=f"strategies to compare (default: {' '.join(DEFAULT_STRATEGIES)}; see peftkit ls)",
    )
    p.add_argument(
        "--tune-trials",
        type=int,
        default=6,
        help="Optuna trials per strategy on the validation split "
        "(0: no tuning, each strategy's default settings; default 6)",
    )
    p.add_argument("--tune-steps", type=int, help="training steps of each trial (default: --max-steps)")
    p.add_argument("--seeds", type=int, default=3, help="train each strategy with seeds 0..N-1 (default 3)")
    p.add_argument("--max-steps", type=int, default=300, help="training steps of every cell (default 300)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--max-length", type=int, default=128, help="longest tokenized input (default 128)")
    p.add_argument(
        "--train-size", type=int, help="train on a seeded subset of this many examples (default: all)"
    )
    p.add_argument("--budget", help="memory budget for the planner's prediction, e.g. 8GiB")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where cells train (default cpu)"
    )
    p.add_argument(
        "--cell-timeout",
        type=float,
        metavar="SECONDS",
        help="stop a cell after this long (recorded as failed)",
    )
    p.add_argument(
        "--output", default="runs/compare", metavar="DIR", help="results folder (default: runs/compare)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return cmd_compare


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad input before anything trains: unknown strategies, counts below their minimum, missing files."""
    from .static import strategy_catalog

    known = list(strategy_catalog())
    unknown = [s for s in args.strategies if s not in known]
    if unknown:
        raise ValueError(
            f"--strategies: unknown strategy {', '.join(map(repr, unknown))}. Valid: {', '.join(known)}."
        )
    if len(set(args.strategies)) != len(args.strategies):
        raise ValueError(f"--strategies: {' '.join(args.strategies)} names a strategy twice; name each once.")
    for flag, least in (
        ("seeds", 1),
        ("tune_trials", 0),
        ("max_steps", 1),
        ("batch_size", 1),
        ("max_length", 1),
    ):
        value = getattr(args, flag)
        if value < least:
            raise ValueError(f"--{flag.replace('_', '-')} {value}: give at least {least}.")
    for flag in ("tune_steps", "train_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give at least 1.")
    for flag in ("train", "validation", "test"):
        value = getattr(args, flag)
        if value and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"--{flag} {value}: no such file.")
    if args.budget:
        from .planner.units import parse_budget

        parse_budget(args.budget)


def suite_config(args: argparse.Namespace) -> dict[str, Any]:
    """The suite (as the YAML mapping `peftkit.bench.suite` reads) that the arguments describe."""
    model = Path(args.model).expanduser()
    task: dict[str, Any] = {
        "name": "data",
        "task": args.task,
        "train": str(Path(args.train).expanduser().resolve()),
        "test": str(Path(args.test).expanduser().resolve()),
        "columns": {k: getattr(args, k) for k in COLUMN_FLAGS if getattr(args, k)},
        "max_length": args.max_length,
    }
    if args.validation:
        task["validation"] = str(Path(args.validation).expanduser().resolve())
    if args.train_size:
        task["train_size"] = args.train_size
    config: dict[str, Any] = {
        "name": "compare",
        "description": f"peftkit compare: {', '.join(args.strategies)} on {Path(args.train).name} with {args.model}, "
        f"{args.seeds} seed(s) each"
        + (f", tuned with {args.tune_trials} trials" if args.tune_trials else ""),
        "model": {"path": str(model.resolve()) if model.exists() else args.model},
        "device": args.device,
        "seeds": list(range(args.seeds)),
        "budget": {"max_steps": args.max_steps, "batch_size": args.batch_size, "log_every": 10},
        "tasks": [task],
        "strategies": [{"name": s, "strategy": s} for s in args.strategies],
    }
    if args.tune_trials:
        config["tune"] = {"trials": args.tune_trials, "max_steps": args.tune_steps or args.max_steps, "default_trial": True}
    return config


def write_suite(args: argparse.Namespace) -> Path:
    """OUTPUT/suite.yaml (rewritten each run: the same arguments give the same file, so the run resumes)."""
    import yaml

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "suite.yaml"
    path.write_text(
        "# Written by peftkit compare; re-run the same command to resume.\n"
        + yaml.safe_dump(suite_config(args), sort_keys=False)
    )
    return path


# --------------------------------------------------------------------------- the recommendation

# What "cheap" means, in the order `pick` ranks by, with how recommendation.md names and shows each.
COSTS = (
    ("peak_memory_mb", "least peak memory", "{:,.0f} MiB"),
    ("train_seconds", "least training time", "{:,.1f} s"),
    ("trainable_params", "fewest trainable parameters (smallest checkpoint)", "{:,.0f} trainable parameters"),
)
SCORES_SOURCE = "the test scores this compare run just measured (mean over seeds, relative to the best mean)"


def _ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from .bench.report import _ok

    return [r for r in rows if _ok(r) and r.get("base_strategy") != "none"]


def _cost(r: dict[str, Any], field: str) -> float:
    value = r.get(field)
    return value if isinstance(value, (int, float)) else float("inf")


def pick(
    rows: list[dict[str, Any]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict[str, Any] | None]:
    """(best by mean score, the strategies within noise of it, the cheapest of those) from aggregated rows.

    With one seed, nothing is known to be within noise: the candidates are the best alone.
    Cheapest: lowest peak memory, then train time, then trainable parameters (`COSTS`), among those
    whose seeds agree (a strategy with a diverged seed is within noise only because its interval is wide).
    """
    from .bench.report import within_noise

    ok = _ranked(rows)
    if not ok:
        return None, [], None
    best = max(ok, key=lambda r: r["metric_value"])
    close = [r for r in ok if r is best or within_noise(r, best)]
    return best, close, min(_steady(best, close), key=lambda r: tuple(_cost(r, field) for field, _, _ in COSTS))


def _steady(best: dict[str, Any], close: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best and those within its noise whose seeds agree: the strategies that may be recommended."""
    from .bench.report import unsteady

    return [r for r in close if r is best or not unsteady(r)]


def measured_scores(rows: list[dict[str, Any]]) -> dict[tuple[str, str | None], float]:
    """{(strategy, quantization): mean score / best mean} of aggregated rows: what the planner ranks by."""
    ok = _ranked(rows)
    top = max((r["metric_value"] for r in ok), default=0.0)
    return {
        (r.get("base_strategy") or r["strategy"], r.get("quantization") or None): r["metric_value"] / top
        for r in ok
        if top > 0
    }


def _score(r: dict[str, Any]) -> str:
    text = f"{r['metric_value']:.4f}"
    if r.get("metric_std") is not None:
        text += f" ± {r['metric_std']:.4f} (mean ± std of {r['seeds']} seeds)"
    return text


def _costs(r: dict[str, Any]) -> str:
    return (
        f"{r.get('peak_memory_mb') or 0:,.0f} MiB peak memory, {r.get('train_seconds') or 0:,.1f} s training, "
        f"{r.get('trainable_params') or 0:,.0f} trainable parameters, "
        f"{r.get('checkpoint_mb') or 0:,.2f} MiB checkpoint"
    )


def _advice(best: dict[str, Any], close: list[dict[str, Any]], cheap: dict[str, Any], plan: Any) -> str:
    """The one sentence to act on: which strategy to use, and why."""
    if best.get("metric_ci95") is None:
        text = (
            f"Use `{best['strategy']}`: it scored best; with one seed the noise is unknown, so re-run with "
            "`--seeds 3` before paying more than a cheaper strategy costs for a small difference"
        )
    elif cheap is best:
        text = f"Use `{best['strategy']}`: it has the best mean" + (
            " and is also the cheapest of the strategies within noise of it"
            if len(close) > 1
            else ", beyond the noise of the others"
        )
    else:
        brief = ", ".join(
            form.format(cheap[field]) for field, _, form in COSTS if _cost(cheap, field) < float("inf")
        )
        against = ", ".join(
            form.format(best[field]) for field, _, form in COSTS if _cost(best, field) < float("inf")
        )
        text = (
            f"Use `{cheap['strategy']}`: its mean is within noise of the best (`{best['strategy']}`) and it is the "
            f"cheapest of those, by peak memory, then training time, then trainable parameters ({brief} against "
            f"{against})"
        )
    if plan is not None and plan.budget:
        from .planner.units import format_bytes

        row = next(
            (
                r
                for r in plan.rows
                if r.strategy == (cheap.get("base_strategy") or cheap["strategy"]) and not r.quantization
            ),
            None,
        )
        if row is not None and row.fits is False:
            text += (
                f". But the planner predicts `{cheap['strategy']}` needs {format_bytes(row.predicted_peak)}, "
                f"more than the budget of {format_bytes(plan.budget)}: see the planner's pick below"
            )
        elif row is not None and row.fits:
            text += f"; the planner predicts it fits the budget ({format_bytes(row.predicted_peak)} peak)"
    return text + "."


def recommendation(results: dict[str, Any], budget: str | None = None, plan: Any = None) -> str:
    """recommendation.md: which strategy to use and why; the best mean, the strategies within noise of it
    and the cheapest of those by each cost; the planner (a `peftkit.planner.Plan` ranked by the scores
    just measured, or the text of its error) for ``budget``."""
    from .bench.report import aggregate, unsteady

    rows = aggregate(results.get("rows", []))
    metric = next((r.get("metric_name") for r in rows if r.get("metric_name")), "metric")
    best, close, cheap = pick(rows)
    lines = [f"# Which strategy for this task: {results.get('description', '')}", ""]
    if best is None:
        return "\n".join(lines + ["Every cell failed: see results.md for the errors.", ""])
    planned = None if plan is None or isinstance(plan, str) else plan
    lines += [f"**{_advice(best, close, cheap, planned)}**", ""]
    mean = "mean " if best.get("metric_std") is not None else ""
    lines.append(f"- **Best {mean}{metric} on test**: `{best['strategy']}` {_score(best)}; {_costs(best)}.")
    others = [r for r in close if r is not best]
    if best.get("metric_ci95") is None:
        lines.append(
            "- With one seed the noise is unknown: run with `--seeds 3` to tell real differences from noise."
        )
    elif others:
        names = ", ".join(f"`{r['strategy']}` {r['metric_value']:.4f}" for r in others)
        lines.append(
            f"- **Within noise of it** (95% intervals of the means overlap): {names}. "
            "The test set cannot rank these; pick by cost. The cheapest of them:"
        )
        for field, name, form in COSTS:
            low = min(_steady(best, close), key=lambda r, f=field: _cost(r, f))
            if _cost(low, field) < float("inf"):
                lines.append(f"  - {name}: `{low['strategy']}` ({form.format(low[field])})")
        shaky = [r for r in others if unsteady(r)]
        if shaky:
            ranges = ", ".join(f"`{r['strategy']}` ({r['metric_range'][0]:.4f} to {r['metric_range'][1]:.4f})" for r in shaky)
            lines.append(f"- Within noise only because the seeds disagree (a wide interval, not a good score; "
                         f"seeds' lowest to highest), so not recommended: {ranges}.")
    else:
        lines.append("- No other strategy is within noise of it (95% intervals of the means do not overlap).")
    below = [r["strategy"] for r in _ranked(rows) if not any(r is c for c in close)]
    if below and best.get("metric_ci95") is not None:
        lines.append(f"- Below the best beyond noise: {', '.join(f'`{n}`' for n in below)}.")
    failed = [
        r["strategy"] for r in rows if r.get("error") and not isinstance(r.get("metric_value"), (int, float))
    ]
    if failed:
        lines.append(f"- Failed (see results.md): {', '.join(f'`{n}`' for n in failed)}.")
    if plan is not None:
        lines += ["", f"## The planner for a budget of {budget}" if budget else "## The planner", ""]
        if isinstance(plan, str):
            lines.append(plan)
        else:
            lines += [
                f"`peftkit plan`'s predicted peak training memory of each compared strategy, ranked by {SCORES_SOURCE} "
                "(not by the benchmark results shipped with peftkit). Its pick is the best-measured strategy "
                "predicted to fit; it weighs neither noise nor cost (the answer above does).",
                "",
                "```",
                plan.to_table(),
                "```",
            ]
    return "\n".join(lines).rstrip() + "\n"


def planner_plan(args: argparse.Namespace, results: dict[str, Any]) -> Any:
    """`peftkit plan` for the compared strategies (unquantized), ranked by the scores in ``results``;
    the text of the error when the planner cannot read this model."""
    from .bench.report import aggregate
    from .planner import plan

    try:
        return plan(
            args.model,
            task=args.task,
            batch_size=args.batch_size,
            seq_len=args.max_length,
            strategies=list(dict.fromkeys(args.strategies)),
            quantization=(None,),
            budget=args.budget,
            device="cuda" if args.device == "cuda" else "cpu",
            scores=measured_scores(aggregate(results.get("rows", []))) or None,
            scores_source=SCORES_SOURCE,
        )
    except (OSError, ValueError) as err:
        return f"The planner could not predict for this model: {err}"


def run_compare(args: argparse.Namespace) -> Path:
    """Check the arguments, run the suite (resumable), write the report and recommendation.md."""
    from .bench.report import build_report
    from .bench.results import read_results
    from .bench.runner import run_suite

    check_arguments(args)
    suite = write_suite(args)
    out = run_suite(
        suite, args.output, cell_timeout=args.cell_timeout, progress=not args.no_progress, report=False
    )
    build_report(out)
    results = read_results(out)
    text = recommendation(results, args.budget, planner_plan(args, results))
    (out / RECOMMENDATION_MD).write_text(text)
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    out = run_compare(args)
    print((out / RECOMMENDATION_MD).read_text())
    print(
        f"peftkit compare: tables and plots in {out}/results.md; recommendation in {out / RECOMMENDATION_MD}"
    )
    return 0


def compare(**options: Any) -> Path:
    """`peftkit compare` from Python; keywords are its flags with underscores. Returns the output folder."""
    parser = argparse.ArgumentParser(prog="peftkit compare")
    setup_compare_parser(parser)
    args = parser.parse_args(
        [
            "--model",
            str(options.pop("model")),
            "--train",
            str(options.pop("train")),
            "--test",
            str(options.pop("test")),
        ]
    )
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(
            f"compare() got unknown option(s) {', '.join(unknown)}. Valid: {', '.join(sorted(vars(args)))}."
        )
    for key, value in options.items():
        setattr(args, key, value)
    return run_compare(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m peftkit.compare")
    handler = setup_compare_parser(parser)
    sys.exit(handler(parser.parse_args()))
