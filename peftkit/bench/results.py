"""A suite's results folder: results.json (every row, every run) and results.csv.

Its own module so that `runner` (which writes results) and `report` (which reads them) both
import it and not each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS_JSON = "results.json"

# The columns of results.csv, in this order (issue 5); extra columns follow them.
COLUMNS = (
    "suite", "task", "strategy", "quantization", "trainable_params", "total_params", "trainable_percent",
    "peak_memory_mb", "predicted_peak_memory_mb", "train_seconds", "samples_per_second", "metric_name",
    "metric_value", "checkpoint_mb", "device", "error",
)
EXTRA_COLUMNS = (
    "seed", "train_size", "task_type", "base_strategy", "options", "lr", "batch_size", "max_steps", "max_length",
    "seq_len", "next_seq_len", "train_samples", "eval_samples", "eval_seconds", "train_cpu_seconds", "eval_cpu_seconds", "metrics", "peak_rss_mb", "peak_memory_reserved_mb",
    "baseline_rss_mb", "peak_reset", "prediction_note", "torch", "transformers", "peft", "cell_seconds", "cell_cpu_seconds",
    "status", "mixed_precision", "step_gflops", "achieved_gflops_per_s", "peak_gflops_per_s", "peak_fraction",
    "step_seconds", "tuned_params", "tune_trials", "compile_seconds", "trainer_args",
)


def read_results(output_dir: Path) -> dict[str, Any]:
    file = Path(output_dir) / RESULTS_JSON
    if not file.is_file():
        return {"rows": [], "runs": []}
    try:
        return json.loads(file.read_text())
    except ValueError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); move it away to start the suite afresh.") from err


def write_results(output_dir: Path, results: dict[str, Any]) -> None:
    """results.json (atomically) and results.csv."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / (RESULTS_JSON + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, output_dir / RESULTS_JSON)
    write_csv(output_dir / "results.csv", results["rows"])


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's columns, in order, then the extra ones, then anything else rows hold."""
    columns = list(COLUMNS) + [c for c in EXTRA_COLUMNS if c not in COLUMNS]
    for row in rows:
        columns += [k for k in row if k not in columns and k != "traceback"]
    return columns


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_columns(rows), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
