"""Which strategy to pick: measured benchmark scores (passed in) first, else `DEFAULT_ORDER`."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..loading import QUANTIZATIONS
from ..static import planner_order
from .units import format_bytes

if TYPE_CHECKING:
    from .planning import Plan, Row


# Order used to recommend a strategy when no benchmark results are shipped, from each strategy's
# plan_rank: LoRA matches full fine-tuning at a fraction of the memory (Hu et al. 2021), adapters
# and IA3 come next, BitFit and the soft-prompt methods trail on most tasks. Unquantized rows are
# preferred over 8-bit, 8-bit over 4-bit (quantization costs a little quality).
DEFAULT_ORDER = planner_order()
QUANTIZATION_ORDER = QUANTIZATIONS


@dataclass
class Recommendation:
    """The row to pick (None when nothing fits) and why."""

    row: Row | None
    reason: str
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.row.strategy if self.row else None,
                "quantization": self.row.quantization if self.row else None,
                "predicted_peak": self.row.predicted_peak if self.row else None,
                "reason": self.reason, "suggestions": self.suggestions}

    def __str__(self) -> str:
        lines = [self.reason] + [f"  - {s}" for s in self.suggestions]
        return "\n".join(lines)


# --------------------------------------------------------------------------- recommendation

def _result_rows(data: Any) -> list[dict]:
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if isinstance(data, dict):
        for key in ("rows", "cells", "results"):
            if isinstance(data.get(key), list):
                return [r for r in data[key] if isinstance(r, dict)]
    return []


def benchmark_scores(task: str, results_dir: str | os.PathLike) -> tuple[dict[tuple[str, str | None], float], list[str]]:
    """Per (strategy, quantization): the mean over benchmark groups of its metric / the group's best.

    Reads every ``results.json`` under ``results_dir`` (the benchmark suite's format: a list of
    rows, or ``{"rows": [...]}``) with fields ``task``, ``strategy`` (``base_strategy`` when the
    suite names variants such as "lora-dora"), ``quantization`` and ``metric_value`` (higher is
    better: accuracy, F1, exact match). A group is one suite, task and training-set size; a
    strategy's variants count by their best. Rows with an error, baselines, untrained rows, the
    planner's calibration suites (``calibration*``: scored on their training data) and rows of
    other task types (``task_type``) are left out, unless no row matches ``task``.
    """
    root = Path(results_dir)
    files = sorted(root.glob("**/results.json")) if root.is_dir() else []
    rows = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for r in _result_rows(data):
            value, name = r.get("metric_value"), r.get("base_strategy") or r.get("strategy")
            if r.get("error") or not isinstance(value, (int, float)) or not math.isfinite(value) or not name:
                continue
            if str(name).startswith("baseline") or name == "none" or str(r.get("suite", "")).startswith("calibration"):
                continue  # baselines, untrained rows and the planner's calibration cells rank nothing
            quant = r.get("quantization") or None
            rows.append({**r, "_name": name, "_quant": None if quant in ("none", "None") else quant, "_file": str(path)})
    typed = [r for r in rows if (r.get("task_type") or r.get("task")) == task]
    rows = typed or rows
    groups: dict[tuple, dict[tuple[str, str | None], float]] = {}
    for r in rows:
        group = groups.setdefault((r["_file"], r.get("suite"), r.get("task"), r.get("train_size")), {})
        key = (r["_name"], r["_quant"])
        group[key] = max(group.get(key, -math.inf), float(r["metric_value"]))
    scores: dict[tuple[str, str | None], list[float]] = {}
    for group in groups.values():
        best = max(group.values())
        for key, value in group.items():
            scores.setdefault(key, []).append(value / best if best > 0 else 0.0)
    used = sorted({r["_file"] for r in rows})
    return {k: sum(v) / len(v) for k, v in scores.items()}, used


def _rank_key(row: Row, scores: dict) -> tuple:
    order = DEFAULT_ORDER.index(row.strategy) if row.strategy in DEFAULT_ORDER else len(DEFAULT_ORDER)
    q_order = QUANTIZATION_ORDER.index(row.quantization)
    measured = scores.get((row.strategy, row.quantization))
    if measured is None and (row.strategy, None) in scores:
        measured = scores[(row.strategy, None)] - 0.001 * (q_order + 1)  # unmeasured quantized: just below
    return (0 if measured is not None else 1, -(measured or 0.0), order, q_order, row.predicted_peak)


def recommend(plan: Plan) -> Recommendation:
    """The best row under the plan's budget: best measured first, else `DEFAULT_ORDER`."""
    usable = [r for r in plan.rows if r.ok]
    if not usable:
        return Recommendation(None, "Every strategy was refused for this model and task; see the errors in the table.")
    scores = plan.scores or {}
    basis = (f"best measured strategy in {plan.scores_source or 'the scores passed in'}" if scores
             else f"first in peftkit's default order ({', '.join(DEFAULT_ORDER)}; unquantized first)")
    fitting = [r for r in usable if r.fits is not False]
    if fitting:
        best = min(fitting, key=lambda r: _rank_key(r, scores))
        measured = scores.get((best.strategy, best.quantization))
        why = f"{best.name}: predicted peak {format_bytes(best.predicted_peak)}"
        why += f" within the budget of {format_bytes(plan.budget)}" if plan.budget else " (no budget given)"
        why += f"; chosen as the {basis} that fits"
        if measured is not None:
            why += f" (score {measured:.3f} of the best metric per task)"
        return Recommendation(best, why + ".")
    smallest = min(usable, key=lambda r: r.predicted_peak)
    reason = (f"Nothing fits in {format_bytes(plan.budget)}: the smallest is {smallest.name} at "
              f"{format_bytes(smallest.predicted_peak)}.")
    return Recommendation(None, reason, _suggestions(plan, smallest))


def _suggestions(plan: Plan, smallest: Row) -> list[str]:
    """What to change so that something fits: a smaller batch, checkpointing, 4-bit."""
    out = []
    batch = plan.batch_size
    while batch > 1:
        batch //= 2
        cheaper = plan.reprice(batch_size=batch)
        fit = [r for r in cheaper.rows if r.ok and r.fits]
        if fit:
            best = min(fit, key=lambda r: r.predicted_peak)
            out.append(f"a smaller batch: batch_size={batch} ({best.name} predicted {format_bytes(best.predicted_peak)}; "
                       f"keep the effective batch with gradient_accumulation_steps={plan.batch_size // batch})")
            break
    else:
        out.append("a smaller batch alone is not enough (even batch_size=1 does not fit)")
    if not plan.gradient_checkpointing:
        ckpt = plan.reprice(gradient_checkpointing=True)
        best = min((r for r in ckpt.rows if r.ok), key=lambda r: r.predicted_peak)
        verdict = "fits" if best.fits else "still does not fit"
        out.append(f"gradient checkpointing (--gradient-checkpointing): {best.name} predicted "
                   f"{format_bytes(best.predicted_peak)}, {verdict}")
    if "4bit" not in {r.quantization for r in plan.rows}:
        out.append("4-bit quantization (--quantization 4bit, QLoRA): stores the frozen Linear weights at about "
                   "half a byte per value")
    else:
        q4 = [r for r in plan.rows if r.ok and r.quantization == "4bit"]
        if q4:
            best = min(q4, key=lambda r: r.predicted_peak)
            out.append(f"4-bit is already in the plan ({best.name}: {format_bytes(best.predicted_peak)}); "
                       "combine it with a smaller batch or checkpointing, a shorter seq_len, or more memory")
    return out
