"""Tables and plots from a suite's results.json: results.md and PNG files, rebuilt at any time.

    peftkit bench --report benchmarks/results/main

writes ``results.md`` (one table per task, with the command lines that produced the results,
the machine, the versions and the dates; the baselines and targets when the suite has them)
and ``metric_vs_params.png``, ``peak_memory.png``, ``train_time.png`` and, for a data-size
sweep, ``sweep.png``.
"""

from __future__ import annotations

import json
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import RESULTS_JSON, read_results, write_csv
from .suite import BASELINE_STRATEGIES

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8", "d", "H")
# peftkit's train time / the baseline's, at most (issue 18: at least 1.3x faster than Trainer's defaults)
BASELINE_GOALS = {"baseline-trainer": 1.0, "baseline-accelerate": 1.02, "baseline-trainer-defaults": round(1 / 1.3, 3),
                  "baseline-trainer-best": 1.0}
BASELINE_NAMES = {"baseline-trainer": "HF Trainer + PEFT", "baseline-accelerate": "hand-written Accelerate + PEFT loop",
                  "baseline-trainer-defaults": "HF Trainer + PEFT, default TrainingArguments",
                  "baseline-trainer-best": "HF Trainer + PEFT, best flags (group_by_length, torch_compile, bf16 where native)"}


# --------------------------------------------------------------------------- helpers


def _ok(row: dict[str, Any]) -> bool:
    return not row.get("error") and isinstance(row.get("metric_value"), (int, float))


def _num(value: Any, digits: int = 1, thousands: bool = False) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float) and not thousands:
        return f"{value:,.{digits}f}"
    return f"{int(value):,}" if thousands else str(value)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def strategy_order(results: dict[str, Any]) -> list[str]:
    """The suite's strategies in its order, then baselines, then anything else in the rows."""
    order = list(results.get("strategies") or [])
    for row in results.get("rows", []):
        if row["strategy"] not in order and row["strategy"] not in BASELINE_STRATEGIES:
            order.append(row["strategy"])
    return order + [b for b in BASELINE_STRATEGIES if any(r["strategy"] == b for r in results.get("rows", []))]


def styles(results: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """strategy -> (marker, colour), the same in every plot."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    hues = [cmap(i) for i in range(0, 20, 2)] + [cmap(i) for i in range(1, 20, 2)]  # ten distinct hues first
    return {name: (MARKERS[i % len(MARKERS)], hues[i % 20]) for i, name in enumerate(strategy_order(results))}


def task_rows(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{task: rows} in the suite's task order, rows in strategy order then train size then seed."""
    order = {name: i for i, name in enumerate(strategy_order(results))}
    tasks: dict[str, list[dict[str, Any]]] = {name: [] for name in (results.get("tasks") or {})}
    for row in results.get("rows", []):
        tasks.setdefault(row["task"], []).append(row)
    for rows in tasks.values():
        rows.sort(key=lambda r: (r.get("train_size") or 0, order.get(r["strategy"], 99), r.get("seed") or 0))
    return {t: rows for t, rows in tasks.items() if rows}


def _sizes(rows: list[dict[str, Any]]) -> list[Any]:
    return sorted({r.get("train_size") for r in rows}, key=lambda s: (s is None, s or 0))


@dataclass
class TaskView:
    """One task's rows (`task_rows` order) and what every section asks of them: the one walker over the
    tasks that results.md, the README section, the robustness tables and the plots share (`task_views`)."""

    name: str
    info: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def metric(self) -> str:
        return self.info.get("metric") or self.rows[0].get("metric_name") or "metric"

    @property
    def sweep(self) -> bool:
        """Whether the task is a data-size sweep (several training-set sizes)."""
        return len(_sizes(self.rows)) > 1

    def by_strategy(self) -> dict[str, list[dict[str, Any]]]:
        """{strategy: its rows that succeeded}, in the rows' order."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in self.rows:
            if _ok(r):
                groups.setdefault(r["strategy"], []).append(r)
        return groups

    def summary(self) -> list[dict[str, Any]]:
        """One row per strategy (the seeds' mean) at the largest training-set size, baselines left out."""
        return _largest_size(aggregate([r for r in self.rows if r["strategy"] not in BASELINE_STRATEGIES]))


def task_views(results: dict[str, Any]) -> list[TaskView]:
    """A `TaskView` per task with rows, in the suite's task order."""
    info = results.get("tasks") or {}
    return [TaskView(task, info.get(task) or {}, rows) for task, rows in task_rows(results).items()]


# --------------------------------------------------------------------------- seeds

# Student's t 97.5% quantiles for 1..10 degrees of freedom (a 95% interval of a mean of few seeds).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
# Averaged over a cell's seeds in the tables and plots (the per-seed values stay in results.csv).
_MEAN_FIELDS = ("trainable_params", "total_params", "trainable_percent", "peak_memory_mb", "predicted_peak_memory_mb",
                "train_seconds", "samples_per_second", "checkpoint_mb", "eval_seconds", "peak_rss_mb", "seq_len")


def t_quantile(df: int) -> float:
    """The two-sided 95% Student's t quantile for ``df`` degrees of freedom (approximated above 10)."""
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, strategy, quantization, train size): the seeds' mean, in the rows' order.

    The metric gets ``metric_std`` (sample standard deviation), ``metric_ci95`` (half-width of the
    95% t-interval of the mean; None with one seed) and ``seeds`` (seeds that succeeded); the
    other numbers are means over the seeds that succeeded. A group whose seeds all failed keeps the
    first error; one where some failed says how many in ``seed_errors``.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["task"], row["strategy"], row.get("quantization"), row.get("train_size"))
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        ok = [r for r in members if _ok(r)]
        merged = dict(ok[0] if ok else members[0])
        merged["seeds"] = len(ok)
        merged["seed"] = ",".join(str(r.get("seed")) for r in members)
        values = [float(r["metric_value"]) for r in ok]
        std = statistics.stdev(values) if len(values) > 1 else None
        merged["metric_std"] = std
        merged["metric_ci95"] = None if std is None else t_quantile(len(values) - 1) * std / len(values) ** 0.5
        merged["metric_range"] = (min(values), max(values)) if len(values) > 1 else None
        if ok:
            merged["metric_value"] = statistics.mean(values)
            for name in _MEAN_FIELDS:
                found = [r[name] for r in ok if isinstance(r.get(name), (int, float))]
                merged[name] = statistics.mean(found) if found else None
            failed = [r for r in members if not _ok(r)]
            merged["seed_errors"] = f"{len(failed)} of {len(members)} seeds failed: {failed[0].get('error')}" if failed else ""
        out.append(merged)
    return out


def within_noise(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """Whether two aggregated rows' 95% intervals overlap (None when either has a single seed)."""
    if a.get("metric_ci95") is None or b.get("metric_ci95") is None:
        return None
    return abs(a["metric_value"] - b["metric_value"]) <= a["metric_ci95"] + b["metric_ci95"]


# Seeds further apart than this (5 points of accuracy or F1): "within noise" then means "too spread to tell",
# not "as good", so the notes show the seeds' range (a diverged seed, say).
WIDE_SPREAD = 0.05


def unsteady(r: dict[str, Any]) -> bool:
    """Whether an aggregated row's seeds lie further apart than `WIDE_SPREAD` (a seed diverged, say)."""
    low, high = r.get("metric_range") or (0.0, 0.0)
    return high - low > WIDE_SPREAD


def _spread(r: dict[str, Any]) -> str:
    return f" (seeds {r['metric_range'][0]:.3f} to {r['metric_range'][1]:.3f})" if unsteady(r) else ""


def noise_notes(rows: list[dict[str, Any]]) -> dict[tuple[str, str, Any], str]:
    """{(task, strategy, train size): "best mean" / "within noise of X" / "below X (beyond noise)"} for
    aggregated rows with several seeds: the highest mean is not called the winner when others are within noise."""
    notes = {}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if _ok(r) and r["strategy"] not in BASELINE_STRATEGIES and r.get("base_strategy") != "none":
            groups.setdefault((r["task"], r.get("train_size")), []).append(r)
    for (task, size), members in groups.items():
        seeded = [r for r in members if r.get("metric_ci95") is not None]  # one seed's value cannot be the best mean
        if not seeded:
            continue
        best = max(seeded, key=lambda r: r["metric_value"])
        for r in members:
            close = within_noise(r, best)
            if r is best:
                others = [m for m in members if m is not best]
                tied = [m["strategy"] + _spread(m) for m in others if within_noise(m, best)]
                beyond = [m for m in others if within_noise(m, best) is False]
                text = "best mean"
                if tied:
                    text += f"; within noise: {', '.join(tied)}"
                elif beyond:
                    text += "; beyond noise of the others" + ("" if len(beyond) == len(others) else " with several seeds")
            elif close is None:
                text = f"one seed: noise unknown against {best['strategy']}"
            else:
                text = f"within noise of {best['strategy']}{_spread(r)}" if close else f"below {best['strategy']} (beyond noise)"
            notes[(task, r["strategy"], size)] = text
    return notes


def _metric_text(r: dict[str, Any]) -> str:
    if not _ok(r):
        return "—"
    if r.get("metric_std") is None:
        return _num(float(r["metric_value"]), 4)
    return f"{r['metric_value']:.4f} ± {r['metric_std']:.4f}"


# --------------------------------------------------------------------------- targets, baselines, planner


def target_notes(results: dict[str, Any]) -> dict[tuple[str, str], str]:
    """{(task, strategy): "target ... met/missed"} for the suite's accuracy-gap targets."""
    targets = results.get("targets")
    if not targets:
        return {}
    rows = [r for r in results.get("rows", []) if r["task"] == targets["task"] and r["strategy"] not in BASELINE_STRATEGIES]
    largest = max((r.get("train_size") or 0 for r in rows), default=0)
    rows = [r for r in rows if (r.get("train_size") or 0) == largest]
    rows = aggregate(rows)
    ref = next((r for r in rows if r["strategy"] == targets["reference"] and _ok(r)), None)
    notes = {}
    for name, gap in targets["max_gap"].items():
        row = next((r for r in rows if r["strategy"] == name), None)
        if row is None:
            continue
        if ref is None or not _ok(row):
            notes[(targets["task"], name)] = f"target: within {100 * gap:g} pt of {targets['reference']}: not measured"
            continue
        diff = 100 * (row["metric_value"] - ref["metric_value"])
        verdict = "met" if -diff <= 100 * gap + 1e-9 else "**missed**"
        noise = within_noise(row, ref)
        if noise is not None:  # means of several seeds: say whether the gap is larger than their noise
            verdict += f" (means of {row['seeds']} and {ref['seeds']} seeds; the gap is " + (
                "within noise: 95% intervals overlap)" if noise else "beyond noise)")
        notes[(targets["task"], name)] = f"target: within {100 * gap:g} pt of {targets['reference']}: {verdict} ({diff:+.1f} pt)"
    return notes


def baseline_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """peftkit's LoRA cell beside the baselines: time ratio, accuracy, goal."""
    spec = results.get("baselines")
    if not spec:
        return []
    rows = aggregate([r for r in results.get("rows", []) if r["task"] == spec["task"]])
    ours = next((r for r in rows if r["strategy"] == spec["strategy"] and _ok(r)), None)
    out = []
    for name in BASELINE_STRATEGIES:
        base = next((r for r in rows if r["strategy"] == name), None)
        if base is None:
            continue
        ratio = None
        if ours and _ok(base) and base.get("train_seconds"):
            ratio = ours["train_seconds"] / base["train_seconds"]
        out.append({"name": name, "row": base, "ours": ours, "ratio": ratio, "goal": BASELINE_GOALS[name]})
    return out


def planner_errors(results: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
    """(row, relative error of the prediction) for every cell measured and predicted."""
    out = []
    for row in results.get("rows", []):
        measured, predicted = row.get("peak_memory_mb"), row.get("predicted_peak_memory_mb")
        if _ok(row) and isinstance(measured, (int, float)) and measured > 0 and isinstance(predicted, (int, float)):
            out.append((row, (predicted - measured) / measured))
    return out


# --------------------------------------------------------------------------- markdown


def _run_counts(run: dict[str, Any]) -> str:
    """"12 cells run of 21 planned, 3 searches": what one sitting of a suite did."""
    ran, planned, searches = run.get("cells_run", 0), run.get("cells_planned"), run.get("searches_run")
    text = f"{ran} cell{'s' * (ran != 1)} run" + (f" of {planned} planned" if planned is not None and planned != ran else "")
    return text + (f", {searches} search{'es' * (searches != 1)}" if searches else "")


def _environment_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for run in results.get("runs", []):
        m, v = run.get("machine", {}), run.get("versions", {})
        where = f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        soft = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "peftkit", "python") if k in v)
        lines.append(f"- {run.get('date')}: `{run.get('command')}` ({_run_counts(run)}, "
                     f"{run.get('cells_skipped', 0)} already done{'; ' + str(run['jobs']) + ' cells at a time' if run.get('jobs', 1) > 1 else ''})  \n"
                     f"  machine: {where}, {m.get('os')}  \n  versions: {soft}")
    return lines


def _task_heading(name: str, info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    budget = info.get("budget") or {}
    steps = f"{budget['max_steps']} steps of {budget.get('batch_size', 16)}" if budget.get("max_steps") else \
        f"{budget.get('epochs')} epoch(s), batch {budget.get('batch_size', 16)}"
    sizes = [s for s in _sizes(rows) if s is not None]
    used = {r.get("train_samples") for r in rows if r.get("train_samples")}
    if len(sizes) <= 1 and len(used) == 1:
        sizes = list(used)  # what the cells trained on (a size above the file's rows takes them all)
    train = f"{', '.join(f'{s:,}' for s in sizes)} training examples" if sizes else "the whole training set"
    evals = next((r.get("eval_samples") for r in rows if r.get("eval_samples")), None)
    hub = f"; hub id `{info['hub_id']}`" if info.get("hub_id") else ""
    return (f"## {name}\n\n{info.get('task', rows[0].get('task_type'))}: {info.get('metric', rows[0].get('metric_name'))} "
            f"on the test split ({f'{evals:,} examples, ' if evals else ''}`{Path(str(info.get('test', ''))).name}`), "
            f"{train}, {steps}, max length {info.get('max_length')}{hub}.")


def _task_table(rows: list[dict[str, Any]], metric: str, notes: dict[tuple[str, str], str]) -> list[str]:
    """One row per strategy (and train size): with several seeds, their mean ± std and whether the
    difference to the best mean is within noise."""
    sweep = len(_sizes(rows)) > 1
    rows = aggregate(rows)
    seeds = any(r.get("seeds", 1) > 1 for r in rows)
    noise = noise_notes(rows)
    metric = f"{metric} (mean ± std)" if seeds else metric
    head = ["strategy"] + (["train size"] if sweep else []) + (["seeds"] if seeds else []) + [
        "quantization", "trainable params", "trainable %", "peak memory (MiB)", "predicted peak (MiB)",
        "train time (s)", "samples/s", "checkpoint (MiB)", metric, "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head) - 1)) + "|---|"]
    dates = {str(r.get("run_date", ""))[:10] for r in rows}
    for r in rows:
        note = "; ".join(x for x in (notes.get((r["task"], r["strategy"]), ""),
                                     noise.get((r["task"], r["strategy"], r.get("train_size")), ""), r.get("seed_errors")) if x)
        if not _ok(r):
            note = f"failed: {_short(r['error'])}"
        if len(dates) > 1:  # cells of one table measured in different runs: say which
            note = "; ".join(x for x in (note, f"run {r.get('run_date', '')[:10] or 'first'}") if x)
        cells = [r["strategy"]] + ([_num(r.get("train_size"), thousands=True)] if sweep else []) + (
            [str(r.get("seeds") or 0)] if seeds else []) + [
            r.get("quantization") or "none", _num(r.get("trainable_params"), thousands=True),
            _num(r.get("trainable_percent"), 3), _num(r.get("peak_memory_mb"), 0), _num(r.get("predicted_peak_memory_mb"), 0),
            _num(r.get("train_seconds"), 1), _num(r.get("samples_per_second"), 1), _num(r.get("checkpoint_mb"), 2),
            _metric_text(r), note]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _values_by_size(rows: list[dict[str, Any]]) -> dict[tuple[str, Any], list[float]]:
    """{(strategy, train size): the metric of each seed that succeeded} of a sweep's rows."""
    found: dict[tuple[str, Any], list[float]] = {(r["strategy"], r.get("train_size")): [] for r in rows}
    for r in rows:
        if _ok(r):
            found[(r["strategy"], r.get("train_size"))].append(r["metric_value"])
    return found


def _sweep_table(rows: list[dict[str, Any]], metric: str, order: list[str]) -> list[str]:
    sizes = [s for s in _sizes(rows) if s is not None]
    found = _values_by_size(rows)
    seeds = any(len(v) > 1 for v in found.values())  # several seeds: mean ± std, as the other tables
    lines = [f"{metric} by number of training examples{' (mean ± std over seeds)' if seeds else ''}:", "",
             "| strategy | " + " | ".join(f"{s:,}" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name in [n for n in order if any(r["strategy"] == n for r in rows)]:
        values = [found.get((name, size)) or [] for size in sizes]
        text = [_mean_std(v) if seeds else (f"{statistics.mean(v):.4f}" if v else "—") for v in values]
        lines.append(f"| {name} | " + " | ".join(text) + " |")
    return lines


def markdown(results: dict[str, Any], plots: list[str]) -> str:
    """The whole results.md."""
    name = results.get("suite", "?")
    order = strategy_order(results)
    notes = target_notes(results)
    lines = [f"# Benchmark results: `{name}`", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    lines += [f"Suite file: `{Path(str(results.get('suite_file', ''))).name}`; model: `{results.get('model')}`. "
              "Produced by (date, command line, machine, versions):", ""]
    lines += _environment_lines(results) + [""]
    lines += [
        "Columns: *trainable %* = trainable / total parameters (4-bit weights count as the values they hold); "
        "*peak memory* = peak resident memory of the cell's own process above its idle baseline (after imports "
        "and data loading, before the model is loaded) on the CPU, `torch.cuda.max_memory_allocated` on CUDA; "
        "*predicted peak* = `peftkit.plan`'s prediction for the same cell (batch size, longest training "
        "sequence); *train time* = wall time of the training call (tokenizing, training, saving the model) at "
        "the same step budget for every cell of a task; *checkpoint* = the adapter saved with `peftkit.save` "
        "(the whole model for `full`). Failed cells keep their row with the error.", ""]
    for view in task_views(results):
        lines += [_task_heading(view.name, view.info, view.rows), ""] + _task_table(view.rows, view.metric, notes) + [""]
        if view.sweep:
            lines += _sweep_table(view.rows, view.metric, order) + [""]
    lines += robustness_section(results)
    lines += _tuned_section(results) + _baseline_section(results) + _targets_section(results, notes) + _planner_section(results)
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{std}"


def _plain_of(by_name: dict[str, list[dict[str, Any]]], row: dict[str, Any]) -> str | None:
    """The strategy with ``row``'s strategy, options and quantization and no training options of its own."""
    same = (row.get("base_strategy"), row.get("options"), row.get("quantization"))
    return next((n for n, rs in by_name.items() if (rs[0].get("base_strategy"), rs[0].get("options"),
                 rs[0].get("quantization")) == same and rs[0].get("train_options") in (None, "", "{}")), None)


def _field_mean(by_name: dict[str, list[dict[str, Any]]], name: str | None, field: str) -> float | None:
    found = [float(r[field]) for r in by_name.get(name or "", []) if isinstance(r.get(field), (int, float))]
    return statistics.mean(found) if found else None


def robustness_section(results: dict[str, Any], heading: str = "## Robustness") -> list[str]:
    """Clean against perturbed test metric (a task's ``perturb:``), each cell's train time against its
    plain cell (same strategy, options and quantization without ``train:`` or ``teacher:``), and, for a
    distilled cell, the share of the gap between its plain cell and its teacher that it closed. Empty
    when no row was scored on a perturbed test set."""
    lines: list[str] = []
    for view in task_views(results):
        metric = view.metric
        key = f"perturbed_{metric}"
        by_name = view.by_strategy()
        if not any(isinstance(r.get(key), (int, float)) for rows in by_name.values() for r in rows):
            continue
        lines += [f"{heading}: {view.name}", "",
                  f"{metric} on the clean test set and on its perturbed copy (mean ± std over seeds); mean train time "
                  "against the mean of the same strategy's plain cell; for a distilled cell, the share of the gap "
                  "between its plain cell and its teacher (means) that distillation closed.", "",
                  f"| strategy | seeds | clean {metric} | perturbed {metric} | drop | train time (s) | time vs plain "
                  "| gap to teacher closed |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, members in by_name.items():
            clean = [float(r["metric_value"]) for r in members]
            noisy = [float(r[key]) for r in members if isinstance(r.get(key), (int, float))]
            plain = _plain_of(by_name, members[0])
            seconds, base_seconds = _field_mean(by_name, name, "train_seconds"), _field_mean(by_name, plain, "train_seconds")
            ratio = f"{seconds / base_seconds:.2f}x" if seconds and base_seconds and plain != name else ""
            teacher = json.loads(members[0].get("train_options") or "{}").get("teacher")
            closed = ""
            if teacher and plain:
                t, p = _field_mean(by_name, teacher, "metric_value"), _field_mean(by_name, plain, "metric_value")
                me = statistics.mean(clean)
                closed = f"{(me - p) / (t - p):.0%}" if t is not None and p is not None and t != p else ""
            drop = f"{statistics.mean(clean) - statistics.mean(noisy):.3f}" if noisy else "—"
            lines.append(f"| {name} | {len(members)} | {_mean_std(clean)} | {_mean_std(noisy)} | {drop} | "
                         f"{_num(seconds, 1)} | {ratio} | {closed} |")
        lines.append("")
    return lines


def _tuned_section(results: dict[str, Any]) -> list[str]:
    """The values each tuned (task, strategy) trained with, and how many trials chose them."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results.get("rows", []):
        if r.get("tuned_params") not in (None, "") and r["strategy"] not in BASELINE_STRATEGIES:
            seen.setdefault((r["task"], r["strategy"]), r)
    if not seen:
        return []
    lines = ["## Tuned settings", "",
             "Each tuned strategy was first searched (`peftkit tune`: Optuna TPE, median pruning) on the task's validation "
             "split, never test; its cells then trained with the best trial's values.", "",
             "| task | strategy | trials | chosen values | note |", "|---|---|---:|---|---|"]
    for (task, name), r in seen.items():
        values = json.loads(r["tuned_params"] or "{}")
        text = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        lines.append(f"| {task} | {name} | {r.get('tune_trials') or 0} | {text or '—'} | {_short(r.get('tune_error') or '')} |")
    return lines + [""]


def _baseline_section(results: dict[str, Any]) -> list[str]:
    rows = baseline_rows(results)
    if not rows:
        return []
    spec = results["baselines"]
    lines = [f"## peftkit against hand-written training ({spec['task']}, {spec['strategy']})", "",
             "The same LoRA cell (model, data, LoRA settings and target modules, learning rate, schedule, "
             "clipping, batch, steps, seed) trained by peftkit and by each baseline. Time ratio = peftkit's "
             "train time / the baseline's (below 1: peftkit is faster). `Trainer` groups batches by length like "
             "peftkit; the hand-written loop draws plain shuffled batches.", "",
             "| trained by | train time (s) | samples/s | peak memory (MiB) | accuracy | peftkit time ratio | goal | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    ours = rows[0]["ours"]
    if ours:
        lines.append(f"| peftkit (`{spec['strategy']}`) | {_num(ours.get('train_seconds'))} | {_num(ours.get('samples_per_second'))} | "
                     f"{_num(ours.get('peak_memory_mb'), 0)} | {_num(ours.get('metric_value'), 4)} | | | |")
    for item in rows:
        r = item["row"]
        if r.get("error"):
            lines.append(f"| {BASELINE_NAMES[item['name']]} | | | | — | | ≤ {item['goal']:g} | failed: {_short(r['error'])} |")
            continue
        ratio = item["ratio"]
        verdict = "" if ratio is None else ("met" if ratio <= item["goal"] else "**missed**")
        lines.append(f"| {BASELINE_NAMES[item['name']]} | {_num(r.get('train_seconds'))} | {_num(r.get('samples_per_second'))} | "
                     f"{_num(r.get('peak_memory_mb'), 0)} | {_num(r.get('metric_value'), 4)} | "
                     f"{'' if ratio is None else f'{ratio:.3f}'} | ≤ {item['goal']:g} | {verdict} |")
    return lines + [""]


def _targets_section(results: dict[str, Any], notes: dict[tuple[str, str], str]) -> list[str]:
    targets = results.get("targets")
    if not targets or not notes:
        return []
    lines = [f"## Targets ({targets['task']}, gap to `{targets['reference']}`)", ""]
    for (task, name), note in notes.items():
        row = next((r for r in results["rows"] if r["task"] == task and r["strategy"] == name), {})
        lines.append(f"- `{name}` (lr {row.get('lr')}, options {row.get('options') or '{}'}): {note}")
    if targets.get("tried"):
        lines += ["", f"Tried to meet them: {targets['tried']}"]
    return lines + [""]


def _planner_section(results: dict[str, Any]) -> list[str]:
    errors = planner_errors(results)
    if not errors:
        return []
    absolute = [abs(e) for _, e in errors]
    worst_row, worst = max(errors, key=lambda item: abs(item[1]))
    return ["## Planner", "",
            f"`peftkit.plan` against the measured peaks: median absolute error {100 * statistics.median(absolute):.1f}% "
            f"over {len(errors)} cells, worst {100 * worst:+.1f}% ({worst_row['task']}/{worst_row['strategy']}); "
            "targets: median at most 15%, worst at most 25%.", *_prediction_provenance(results), ""]


def _prediction_provenance(results: dict[str, Any]) -> list[str]:
    """Where predictions were recomputed after the cells ran (``peftkit bench --report DIR --repredict``)."""
    made = results.get("predictions")
    if not made:
        return []
    return ["", f"Predictions recomputed from each cell's settings (not its measurement) on {made['date']} with "
                f"peftkit {made.get('peftkit')}: `{made['command']}`. The planner's CPU constants were fitted on "
                "the `calibration` suite (benchmarks/results/calibration), not on these cells."]


# --------------------------------------------------------------------------- plots


def _figure(n: int, height: float, width: float = 5.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n + 1.8, height), squeeze=False)
    return plt, fig, list(axes[0])


def _largest_size(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    largest = _sizes(rows)[-1]
    return [r for r in rows if r.get("train_size") == largest]


def metric_floor(rows: list[dict[str, Any]]) -> float:
    """The bottom of a task's y-axis: the majority-class rate when the rows record it (``majority_rate``),
    else 0.5 when every score is above it (a two-class task's chance level), else 0."""
    rates = [r["majority_rate"] for r in rows if isinstance(r.get("majority_rate"), (int, float))]
    if rates:
        return float(min(rates))
    return 0.5 if rows and all(r["metric_value"] >= 0.5 for r in rows) else 0.0


def spread(values: list[float], gap: float, low: float, high: float) -> list[float]:
    """Label positions for ``values`` (in their order): as close to each as possible, at least ``gap`` apart,
    inside [low, high] where they fit."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    placed = [0.0] * len(values)
    last = None
    for i in order:  # upwards, each at least gap above the previous
        placed[i] = max(values[i], low + gap / 2) if last is None else max(values[i], last + gap)
        last = placed[i]
    ceiling = high - gap / 2
    for i in reversed(order):  # downwards from the top, so that none runs off it
        placed[i] = min(placed[i], ceiling)
        ceiling = placed[i] - gap
    return placed


def plot_metric_vs_params(results: dict[str, Any], path: Path) -> Path | None:
    """One panel per task, one point per strategy (the mean over seeds, with its 95% interval), each with
    its own marker and colour and its name beside it, so that 12+ strategies stay readable."""
    everything = {t: aggregate(rows) for t, rows in task_rows(results).items()}
    tasks = {t: [r for r in _largest_size(rows) if _ok(r) and r["strategy"] not in BASELINE_STRATEGIES and r.get("trainable_params")]
             for t, rows in everything.items()}
    tasks = {t: rows for t, rows in tasks.items() if rows}
    if not tasks:
        return None
    from matplotlib.ticker import NullFormatter

    style = styles(results)
    plt, fig, axes = _figure(len(tasks), 5.2, width=6.2)
    handles = {}
    for ax, (task, rows) in zip(axes, tasks.items(), strict=True):
        for r in sorted(rows, key=lambda r: r["metric_value"]):
            marker, colour = style[r["strategy"]]
            handles[r["strategy"]] = ax.errorbar(
                r["trainable_params"], r["metric_value"], yerr=r.get("metric_ci95") or None, fmt=marker, color=colour,
                markersize=8, markeredgecolor="black", markeredgewidth=0.5, ecolor=colour, capsize=3, label=r["strategy"], zorder=3)
        untrained = [r for r in everything[task] if _ok(r) and r.get("base_strategy") == "none"]
        for r in untrained:  # the model before training: a level to read the others against
            handles[r["strategy"]] = ax.axhline(r["metric_value"], color="grey", linestyle="--", label=r["strategy"])
        top = max(r["metric_value"] + (r.get("metric_ci95") or 0) for r in rows)
        floor = metric_floor(rows)
        high = min(1.0, top + 0.05 * (top - floor) + 0.01)
        ax.set_ylim(floor, high)
        # Names beside the points, moved apart vertically where points crowd (a thin line joins them).
        placed = spread([r["metric_value"] for r in rows], 0.045 * (high - floor), floor, high)
        for r, y in zip(rows, placed, strict=True):
            ax.annotate(r["strategy"], (r["trainable_params"], r["metric_value"]), xytext=(r["trainable_params"] * 1.6, y),
                        textcoords="data", fontsize=7, va="center", zorder=4,
                        arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3})
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("trainable parameters (count, log scale)")
        seeds = max(r.get("seeds", 1) for r in rows)
        ax.set_ylabel(f"{rows[0].get('metric_name')} on test" + (f" (mean of {seeds} seeds, 95% interval)" if seeds > 1 else ""))
        ax.set_title(f"{task} (y from {floor:g})")
        ax.grid(True, which="both", alpha=0.3)
    order = [n for n in strategy_order(results) if n in handles]
    fig.legend([handles[n] for n in order], order, loc="center right", title="strategy", fontsize=8)
    fig.suptitle(f"{results.get('suite')}: test metric vs trainable parameters")
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bars(results: dict[str, Any], path: Path, field: str, xlabel: str, title: str, predicted: str | None = None) -> Path | None:
    """Horizontal bars per strategy, one panel per task; failed cells are named, with no bar."""
    tasks = {t: _largest_size(aggregate(rows)) for t, rows in task_rows(results).items()}
    if not any(isinstance(r.get(field), (int, float)) and not r.get("error") for rows in tasks.values() for r in rows):
        return None
    style = styles(results)
    height = 1.6 + 0.32 * max(len(rows) for rows in tasks.values())
    plt, fig, axes = _figure(len(tasks), height, width=5.0)
    shown_prediction = False
    for ax, (task, rows) in zip(axes, tasks.items(), strict=True):
        labels, ys = [], []
        for y, r in enumerate(rows):
            value = r.get(field)
            failed = bool(r.get("error")) or not isinstance(value, (int, float))
            labels.append(f"{r['strategy']}{' (failed)' if failed else ''}")
            ys.append(y)
            if failed:
                continue
            marker, colour = style[r["strategy"]]
            ax.barh(y, value, color=colour, edgecolor="black", linewidth=0.5)
            ax.text(value, y, f" {value:,.0f}" if value >= 10 else f" {value:.1f}", va="center", fontsize=8)
            if predicted and isinstance(r.get(predicted), (int, float)):
                ax.plot(r[predicted], y, marker="|", color="black", markersize=14, markeredgewidth=2,
                        label=None if shown_prediction else "planner prediction")
                shown_prediction = True
        ax.set_yticks(ys, labels, fontsize=9)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(task)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.18)
    if shown_prediction:
        fig.legend(loc="upper right", fontsize=9)
    fig.suptitle(f"{results.get('suite')}: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(results: dict[str, Any], path: Path) -> Path | None:
    tasks = {view.name: view.rows for view in task_views(results) if view.sweep}
    if not tasks:
        return None
    style = styles(results)
    plt, fig, axes = _figure(len(tasks), 4.6)
    handles, seeds = {}, False
    for ax, (task, rows) in zip(axes, tasks.items(), strict=True):
        sizes = [s for s in _sizes(rows) if s is not None]
        names = [n for n in strategy_order(results) if any(r["strategy"] == n for r in rows)]
        found = _values_by_size(rows)
        seeds = seeds or any(len(v) > 1 for v in found.values())
        for i, name in enumerate(names):
            dodge = 2 ** (0.05 * (i - (len(names) - 1) / 2))  # side by side, so that the error bars do not hide each other
            points = [(s * dodge, statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0) for s in sizes
                      if (vals := found.get((name, s)))]
            if not points:
                continue
            marker, colour = style[name]
            # several seeds: a bar of one standard deviation either side of the mean
            handles[name] = ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                                        marker=marker, color=colour, markersize=7, markeredgecolor="black",
                                        markeredgewidth=0.5, capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training examples (count, log scale)")
        ax.set_ylabel(f"{rows[0].get('metric_name')} on test (0-1)")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
    order = [n for n in strategy_order(results) if n in handles]
    fig.legend([handles[n] for n in order], order, loc="center right", title="strategy", fontsize=9)
    over = " (mean ± std over seeds)" if seeds else ""
    fig.suptitle(f"{results.get('suite')}: test metric vs training-set size (same step budget){over}")
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(output_dir: str | Path) -> list[Path]:
    """(Re)write results.md, results.csv and the plots from ``output_dir/results.json``."""
    out = Path(output_dir)
    if not (out / RESULTS_JSON).is_file():
        raise FileNotFoundError(f"No {RESULTS_JSON} in {out}: run the suite first (peftkit bench SUITE.yaml --output {out}).")
    results = read_results(out)
    write_csv(out / "results.csv", results.get("rows", []))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plots = []
        print('peftkit bench: matplotlib is not installed, so no plots: pip install "peftkit[bench]"')
    else:
        plots = [p for p in (
            plot_metric_vs_params(results, out / "metric_vs_params.png"),
            plot_bars(results, out / "peak_memory.png", "peak_memory_mb", "peak memory above idle baseline (MiB)",
                      "peak training memory per strategy", predicted="predicted_peak_memory_mb"),
            plot_bars(results, out / "train_time.png", "train_seconds", "train time (seconds)", "train time per strategy"),
            plot_sweep(results, out / "sweep.png"),
        ) if p is not None]
    md = out / "results.md"
    md.write_text(markdown(results, [str(p) for p in plots]))
    return [md, out / "results.csv", *plots]


# --------------------------------------------------------------------------- README section

def readme_markers(suite: str) -> tuple[str, str]:
    """The comments around a suite's generated section in a README."""
    return f"<!-- bench:{suite}:start -->", f"<!-- bench:{suite}:end -->"


PART_OPTIONS = ("--tasks", "--strategies", "--retry-failed")  # options that run a part of a suite


def whole_suite_command(command: str | None) -> str | None:
    """``command`` without the options that ran only a part of the suite (``--tasks``, ``--strategies`` and
    their values, ``--retry-failed``): the command that runs, or resumes, all of it."""
    if not command:
        return command
    words, kept, skipping = shlex.split(command), [], False
    for word in words:
        if word.startswith("--"):
            skipping = word.split("=")[0] in PART_OPTIONS
        elif word.startswith("-") and len(word) > 1:
            skipping = False
        if not skipping:
            kept.append(word)
    return shlex.join(kept)


def readme_section(results: dict[str, Any], results_dir: str) -> str:
    """"Choosing a strategy": the metric of every strategy per task, its memory and time, and
    which to pick, all computed from results.json (nothing typed by hand)."""
    views = task_views(results)
    tasks = {view.name: rows for view in views if (rows := view.summary())}
    order = [n for n in strategy_order(results) if n not in BASELINE_STRATEGIES]
    runs = results.get("runs") or [{}]
    m = runs[-1].get("machine", {})
    sittings = sum(1 for r in runs if r.get("cells_run") or r.get("searches_run"))
    where = f" in {sittings} sittings (each listed in results.md)" if sittings > 1 else ""
    lines = [f"Measured with `{whole_suite_command(runs[-1].get('command'))}`{where} on {m.get('cpu')} ({m.get('cores')} "
             f"cores); every cell of a task trains for the same budget. Full tables, plots and the error of every failed cell: "
             f"[{results_dir}/results.md]({results_dir}/results.md).", "",
             "| strategy | trainable % | " + " | ".join(tasks) + " | mean peak memory (MiB) | mean train time (s) |",
             "|---|---:|" + "---:|" * len(tasks) + "---:|---:|"]
    partial = []
    for name in order:
        cells = [next((r for r in rows if r["strategy"] == name), None) for rows in tasks.values()]
        ok = [r for r in cells if r and _ok(r)]
        if not any(cells):
            continue
        if not all(cells):
            partial.append(name)
        metrics = [(f"{r['metric_value']:.3f}" + (f" ± {r['metric_std']:.3f}" if r.get("metric_std") is not None else ""))
                   if r and _ok(r) else ("failed" if r else "") for r in cells]
        percent = statistics.mean(r["trainable_percent"] for r in ok) if ok else None
        memory = statistics.mean(r["peak_memory_mb"] for r in ok) if ok else None
        seconds = statistics.mean(r["train_seconds"] for r in ok) if ok else None
        lines.append(f"| {name} | {_num(percent, 3)} | " + " | ".join(metrics) + f" | {_num(memory, 0)} | {_num(seconds, 0)} |")
    if partial and len(tasks) > 1:
        lines += ["", f"Not run on every task yet: {', '.join(partial)}; their means cover the tasks they ran, and the "
                      "averages below (best on average, least memory) leave them out."]
    for view in views:
        if view.sweep:  # a data-size sweep: the metric at every size
            table = _sweep_table(view.rows, view.metric, order)
            lines += ["", f"**{view.name}**, {table[0]}", *table[1:]]
    untrained = {r["strategy"] for rows in tasks.values() for r in rows if r.get("base_strategy") == "none"}
    scores = {}
    for name in [n for n in order if n not in untrained]:
        per_task = []
        for rows in tasks.values():
            best = max((r["metric_value"] for r in rows if _ok(r)), default=None)
            mine = next((r["metric_value"] for r in rows if r["strategy"] == name and _ok(r)), None)
            if best and mine is not None:
                per_task.append(mine / best)
        if len(per_task) == len(tasks):
            scores[name] = statistics.mean(per_task)
    if scores:
        memory = {n: statistics.mean(r["peak_memory_mb"] for rows in tasks.values() for r in rows if r["strategy"] == n and _ok(r))
                  for n in scores}
        best = max(scores, key=scores.get)
        close = [n for n in scores if scores[n] >= scores[best] - 0.01]
        lean, least = min(close, key=memory.get), min(memory, key=memory.get)
        lines += ["", f"- Best on average (metric / best metric per task): `{best}` ({scores[best]:.3f})."]
        lines.append(f"- Least memory within 0.01 of that score: `{lean}` ({memory[lean]:,.0f} MiB on average, against "
                     f"{memory[best]:,.0f} MiB for `{best}`)." if lean != best else
                     f"- No strategy within 0.01 of that score uses less memory ({memory[best]:,.0f} MiB on average).")
        lines.append(f"- Least memory of all: `{least}` ({memory[least]:,.0f} MiB, score {scores[least]:.3f}).")
    for view in views:  # several seeds: which differences are larger than their noise (a sweep: per size)
        rows = aggregate(view.rows) if view.sweep else tasks.get(view.name, [])
        for (task, name, size), text in noise_notes(rows).items():
            if text.startswith("best mean"):
                where = f"{task}, {size:,} examples" if view.sweep else task
                lines.append(f"- {where}: " + text.replace("best mean", f"best mean `{name}`", 1) + ".")
    for item in baseline_rows(results):
        if item["ratio"] is not None:
            lines.append(f"- {results['baselines']['task']} `{results['baselines']['strategy']}` train time against "
                         f"{BASELINE_NAMES[item['name']]}: {item['ratio']:.2f}x, accuracy "
                         f"{item['ours']['metric_value']:.4f} against {item['row']['metric_value']:.4f}.")
    if target_notes(results):  # the project's own goals stay with the results, not in the README
        lines.append(f"- The suite's accuracy targets and whether they were met: [{results_dir}/results.md]({results_dir}/results.md).")
    robust = robustness_section(results, heading="**Robustness**")
    return "\n".join(lines + ([""] + robust[:-1] if robust else []))


def update_readme(readme: str | Path, output_dir: str | Path) -> Path:
    """Replace the text between ``<!-- bench:SUITE:start -->`` and ``<!-- bench:SUITE:end -->`` in
    ``readme`` with the section generated from ``output_dir/results.json`` (SUITE: its suite name)."""
    path = Path(readme)
    text = path.read_text()
    results = read_results(Path(output_dir))
    start, end = readme_markers(results.get("suite", ""))
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} markers; add them where the section goes.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    try:
        shown = Path(output_dir).resolve().relative_to(path.resolve().parent)
    except ValueError:
        shown = Path(output_dir)
    section = readme_section(results, str(shown))
    path.write_text(f"{head}{start}\n{section}\n{end}{tail}")
    return path
