"""Fit the planner's CPU constants on measured benchmark cells, and score it on others.

The measurements are benchmark cells (`peftkit bench`): each trains in a fresh process with
`peftkit.train` on real data, and its peak is the process's peak resident set size above its
idle baseline (peftkit/bench/measure.py). The planner predicts weights + gradients + optimizer
states + activations (peftkit/planner/); what a real run holds beyond that is fitted here:

- ``CPU_OVERHEAD_BYTES``: the median residual (measured - predicted without overhead) over the
  unquantized cells of the calibration suite;
- ``CPU_GATED_TEMPORARIES_SCALE``: for gated-MLP (Llama-style) models, the median share of the
  planner's per-token CPU temporaries that a real run keeps, given that overhead;
- ``KBIT_RETAINED[q]``: for each quantization, what the quantized cells keep beyond that, as a
  constant plus a share of the float32 bytes of the quantized layers' weights (least squares
  over cells of at least two model sizes; the constant alone from one size).

    HF_HUB_OFFLINE=1 peftkit bench benchmarks/suites/calibration.yaml
    HF_HUB_OFFLINE=1 peftkit bench benchmarks/suites/calibration_llm.yaml
    python benchmarks/calibrate_memory.py --fit benchmarks/results/calibration benchmarks/results/calibration_llm \\
        --output benchmarks/results/planner_calibration.json
    python benchmarks/calibrate_memory.py --check benchmarks/results/main benchmarks/results/llm

``--fit`` prints the constants to put in peftkit/planner/constants.py (it does not edit the file);
``--check`` prints each cell's error with the planner as it is now.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MiB = 2**20


def _cells(results_dir: Path) -> tuple[dict, list[dict]]:
    """(results.json, its successful cells that have a training step to predict)."""
    results = json.loads((results_dir / "results.json").read_text())
    rows = [r for r in results["rows"] if r.get("status") == "ok" and r.get("seq_len") and r.get("peak_memory_mb")]
    return results, rows


def components(results: dict, rows: list[dict]) -> list[dict]:
    """Per cell: measured peak, the planner's prediction without its fitted terms, quantized values."""
    from peftkit.bench.common import model_source
    from peftkit.bench.runner import label_counter
    from peftkit.bench.suite import load_suite
    from peftkit.planner import CPU_GATED_TEMPORARIES_SCALE, activation_bytes, plan

    suite = load_suite(results["suite_file"])
    path, _ = model_source(suite)
    num_labels = label_counter(suite)
    out = []
    for row in rows:
        task, spec = suite.task(row["task"]), suite.strategy(row["strategy"])
        options = {spec.strategy: dict(spec.options)} if spec.options else {}
        result = plan(path, task=task.task, batch_size=int(row["batch_size"]), seq_len=int(row["seq_len"]),
                      strategies=[spec.strategy], quantization=(spec.quantization,), device="cpu",
                      num_labels=num_labels(row), **options)
        planned, profile = result.rows[0], result._profiles[0]
        structure = profile.structure
        temporaries = activation_bytes(structure, int(row["batch_size"]), int(row["seq_len"]), "cpu", 4)[1]
        if structure.gated:  # the per-token part only, without the fitted scale (LM-head logits stay)
            logits = 2 * int(row["batch_size"]) * (int(row["seq_len"]) + structure.virtual_tokens) * structure.vocab * 4
            temporaries = (temporaries - logits) / CPU_GATED_TEMPORARIES_SCALE
        out.append({"gated": structure.gated, "gated_temporaries": temporaries if structure.gated else 0,
                    "scale_used": CPU_GATED_TEMPORARIES_SCALE,"suite": suite.name, "task": task.name, "strategy": spec.name, "quantization": spec.quantization,
                    "batch_size": row["batch_size"], "seq_len": row["seq_len"], "measured": row["peak_memory_mb"] * MiB,
                    "predicted": planned.predicted_peak, "without_overhead": planned.predicted_peak - planned.overhead,
                    "quantized_values": profile.structure.quantized_values})
    return out


def fit(cells: list[dict]) -> dict:
    """The constants, from calibration cells (predictions made with the scale then in force)."""
    plain = [c["measured"] - c["without_overhead"] for c in cells if not c["quantization"] and not c["gated"]]
    if not plain:
        raise SystemExit("No unquantized encoder cell to fit the overhead on.")
    overhead = statistics.median(plain)

    def unscaled(c):  # the prediction without overhead, with the gated temporaries at scale 0
        return c["without_overhead"] - c["scale_used"] * c["gated_temporaries"]

    gated = [(c["measured"] - overhead - unscaled(c)) / c["gated_temporaries"]
             for c in cells if c["gated"] and not c["quantization"] and c["gated_temporaries"]]
    scale = statistics.median(gated) if gated else None
    retained = {}
    for q in ("8bit", "4bit"):
        points = [(4 * c["quantized_values"], c["measured"] - overhead - unscaled(c) - (scale or 1.0) * c["gated_temporaries"])
                  for c in cells if c["quantization"] == q and c["quantized_values"]]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        if len(set(xs)) > 1:  # y = constant + share * float32 bytes
            mx, my = statistics.mean(xs), statistics.mean(ys)
            share = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
            retained[q] = (int(my - share * mx), round(share, 3))
        else:
            retained[q] = (int(statistics.median(ys)), 0.0)
    return {"CPU_OVERHEAD_BYTES": int(overhead), "CPU_OVERHEAD_MiB": round(overhead / MiB, 1),
            "CPU_GATED_TEMPORARIES_SCALE": None if scale is None else round(scale, 2), "KBIT_RETAINED": retained}


def errors(cells: list[dict]) -> dict:
    for c in cells:
        c["error_percent"] = round(100 * (c["predicted"] - c["measured"]) / c["measured"], 1)
    absolute = [abs(c["error_percent"]) for c in cells]
    return {"cells": len(cells), "median_abs_error_percent": round(statistics.median(absolute), 1),
            "worst_abs_error_percent": max(absolute)} if cells else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", metavar="DIR", type=Path, nargs="*", default=[], help="calibration suites' results folders")
    parser.add_argument("--check", metavar="DIR", type=Path, nargs="*", default=[], help="results folders to score")
    parser.add_argument("--output", type=Path, help="write the fitted constants and every cell's error here (JSON)")
    args = parser.parse_args(argv)
    if not args.fit and not args.check:
        parser.error("give --fit DIR and/or --check DIR ...")
    record: dict = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    if args.fit:
        cells = [c for folder in args.fit for c in components(*_cells(folder))]
        record["fitted"] = fit(cells)
        record["calibration"] = {"summary": errors(cells), "cells": cells}
        print("fitted:", json.dumps(record["fitted"]))
    for folder in args.check:
        results, rows = _cells(folder)
        cells = components(results, rows)
        record.setdefault("checks", {})[results["suite"]] = {"summary": errors(cells), "cells": cells}
    for name, block in [("calibration", record.get("calibration"))] + list(record.get("checks", {}).items()):
        if not block:
            continue
        for c in block["cells"]:
            print(f"{name:12} {c['task']:14} {c['strategy']:18} measured {c['measured'] / MiB:7.0f} MiB  predicted "
                  f"{c['predicted'] / MiB:7.0f} MiB  {c['error_percent']:+6.1f}%")
        print(f"{name}: {json.dumps(block['summary'])}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
