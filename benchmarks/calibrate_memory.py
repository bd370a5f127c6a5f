"""Fit the planner's CPU constants on measured benchmark cells, and score it on others.

The measurements are benchmark cells (`peftkit bench`): each trains in a fresh process with
`peftkit.train` on real data, and its peak is the process's peak resident set size above its
idle baseline (peftkit/bench/measure.py). The planner predicts weights + gradients + optimizer
states + activations (peftkit/planner/); what a real run holds beyond that is fitted here:

- ``CPU_RUNTIME_BYTES``, ``CPU_SHAPE_BYTES``, ``CPU_SHAPE_SHARE``: the CPU overhead, runtime +
  log2(distinct batch shapes) * (bytes + share of the step's activations), least squares over the
  unquantized encoder cells (the sweep suite's 64 to 4,096 examples give the shape term);
- ``CPU_GATED_TEMPORARIES_SCALE``: for gated-MLP (Llama-style) models, the median share of the
  planner's per-token CPU temporaries that a real run keeps, given that overhead;
- ``KBIT_RETAINED[q]``: for each quantization, what the quantized cells keep beyond that, as a
  constant plus a share of the float32 bytes of the quantized layers' weights (least squares
  over cells of at least two model sizes; the constant alone from one size);
- ``ADVERSARIAL_PASS_SHARE``: what each extra adversarial pass keeps, as a share of one pass's
  activations: the median over the fgm cells (``--fit-adversarial``; their pgd cells stay held out).

    HF_HUB_OFFLINE=1 peftkit bench benchmarks/suites/calibration.yaml   # and calibration_llm, sweep, robust
    python benchmarks/calibrate_memory.py --fit benchmarks/results/calibration benchmarks/results/calibration_llm \
        benchmarks/results/sweep --fit-adversarial benchmarks/results/robust \
        --output benchmarks/results/planner_calibration.json
    python benchmarks/planner_check.py    # every committed suite against the planner

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


def _kbit_used():
    from peftkit.planner import KBIT_RETAINED

    return KBIT_RETAINED


def components(results: dict, rows: list[dict]) -> list[dict]:
    """Per cell: measured peak, the planner's prediction and the parts the fitted terms act on."""
    import math

    from peftkit.bench.cell import plan_cell
    from peftkit.bench.common import model_source
    from peftkit.bench.runner import label_counter, recorded_suite_file
    from peftkit.bench.suite import load_suite
    from peftkit.planner import CPU_GATED_TEMPORARIES_SCALE, activation_bytes
    from peftkit.planner.constants import ADVERSARIAL_PASS_SHARE
    from peftkit.planner.costs import adversarial_passes, distinct_batches

    suite = load_suite(recorded_suite_file(results))
    path, extra = model_source(suite)
    num_labels = label_counter(suite)
    out = []
    for row in rows:
        task, spec = suite.task(row["task"]), suite.strategy(row["strategy"])
        batch, seq = int(row["batch_size"]), int(row["seq_len"])
        result = plan_cell(path, task.task, spec, batch, seq, "cpu", num_labels(row), row.get("train_samples"),
                           row.get("max_steps"), extra.get("gguf_file"), row.get("next_seq_len"))
        planned, profile = result.rows[0], result._profiles[0]
        structure = profile.structure
        temporaries = activation_bytes(structure, batch, seq, "cpu", 4)[1]
        if structure.gated:  # the per-token part only, without the fitted scale (LM-head logits stay)
            logits = 2 * batch * (seq + structure.virtual_tokens) * structure.vocab * 4
            temporaries = (temporaries - logits) / CPU_GATED_TEMPORARIES_SCALE
        passes = adversarial_passes(result.adversarial, result.adv_steps)
        one_pass = planned.activations / (1 + (passes - 1) * ADVERSARIAL_PASS_SHARE)
        kbit = 0
        if spec.quantization:
            constant, share = _kbit_used()[spec.quantization]
            kbit = constant + share * 4 * structure.quantized_values
        out.append({"gated": structure.gated, "gated_temporaries": temporaries if structure.gated else 0,
                    "scale_used": CPU_GATED_TEMPORARIES_SCALE, "suite": suite.name, "task": task.name,
                    "strategy": spec.name, "quantization": spec.quantization, "seed": row.get("seed", 0),
                    "batch_size": batch, "seq_len": seq, "train_samples": row.get("train_samples"),
                    "max_steps": row.get("max_steps"), "measured": row["peak_memory_mb"] * MiB,
                    "predicted": planned.predicted_peak, "without_overhead": planned.predicted_peak - planned.overhead,
                    "overhead_used": planned.overhead - kbit, "kbit_used": kbit,
                    "log2_batches": math.log2(distinct_batches(batch, seq, row.get("train_samples"), row.get("max_steps"))),
                    "activations": one_pass, "passes": passes,
                    "adversarial_used": planned.activations - one_pass, "quantized_values": structure.quantized_values,
                    "cuda_peak": planned.cuda_peak})
    return out


def fit(cells: list[dict], adversarial_cells: list[dict] = ()) -> dict:
    """The constants, from calibration cells (predictions made with the constants then in force).

    1. CPU overhead = runtime + log2(distinct batches) * (bytes + share * activations): least squares
       over the unquantized, non-adversarial encoder cells (residual: measured - everything else).
    2. The gated-MLP temporaries scale: the median over the unquantized Llama-style cells.
    3. The k-bit retained terms per quantization (constant + share of the float32 bytes).
    4. The adversarial pass share: the median over the fgm cells.
    """
    import numpy as np

    def base(c):  # the prediction without overhead, adversarial extra, k-bit term and gated temporaries
        return c["without_overhead"] - c["adversarial_used"] - c["scale_used"] * c["gated_temporaries"]

    plain = [c for c in cells if not c["quantization"] and not c["gated"] and c["passes"] == 1]
    if len(plain) < 3:
        raise SystemExit("Need at least three unquantized encoder cells to fit the overhead on.")
    design = np.array([[1.0, c["log2_batches"], c["log2_batches"] * c["activations"]] for c in plain])
    target = np.array([c["measured"] - base(c) for c in plain])
    runtime, per_doubling, share = np.linalg.lstsq(design, target, rcond=None)[0]
    if share < 0:  # no activation-proportional part: refit without it
        runtime, per_doubling = np.linalg.lstsq(design[:, :2], target, rcond=None)[0]
        share = 0.0

    def overhead(c):
        return runtime + c["log2_batches"] * (per_doubling + share * c["activations"])

    gated = [(c["measured"] - overhead(c) - base(c)) / c["gated_temporaries"]
             for c in cells if c["gated"] and not c["quantization"] and c["gated_temporaries"] and c["passes"] == 1]
    scale = statistics.median(gated) if gated else None
    retained = {}
    for q in ("8bit", "4bit"):
        points = [(4 * c["quantized_values"],
                   c["measured"] - overhead(c) - base(c) - (scale or 1.0) * c["gated_temporaries"])
                  for c in cells if c["quantization"] == q and c["quantized_values"] and c["passes"] == 1]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        if len(set(xs)) > 1:  # y = constant + share * float32 bytes
            mx, my = statistics.mean(xs), statistics.mean(ys)
            q_share = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
            retained[q] = (int(my - q_share * mx), round(q_share, 3))
        else:
            retained[q] = (int(statistics.median(ys)), 0.0)
    fgm = [(c["measured"] - overhead(c) - base(c) - c["kbit_used"]) / c["activations"]
           for c in [*cells, *adversarial_cells] if c["passes"] == 2 and c["activations"]]
    return {"CPU_RUNTIME_BYTES": int(runtime), "CPU_SHAPE_BYTES": int(per_doubling),
            "CPU_SHAPE_SHARE": round(float(share), 4), "CPU_RUNTIME_MiB": round(runtime / MiB, 1),
            "CPU_SHAPE_MiB": round(per_doubling / MiB, 1),
            "CPU_GATED_TEMPORARIES_SCALE": None if scale is None else round(scale, 2), "KBIT_RETAINED": retained,
            "ADVERSARIAL_PASS_SHARE": round(statistics.median(fgm), 2) if fgm else None}


def errors(cells: list[dict]) -> dict:
    for c in cells:
        c["error_percent"] = round(100 * (c["predicted"] - c["measured"]) / c["measured"], 1)
    absolute = [abs(c["error_percent"]) for c in cells]
    return {"cells": len(cells), "median_abs_error_percent": round(statistics.median(absolute), 1),
            "worst_abs_error_percent": max(absolute)} if cells else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", metavar="DIR", type=Path, nargs="*", default=[], help="calibration suites' results folders")
    parser.add_argument("--fit-adversarial", metavar="DIR", type=Path, nargs="*", default=[],
                        help="results folders whose fgm cells fit ADVERSARIAL_PASS_SHARE (their other cells stay held out)")
    parser.add_argument("--check", metavar="DIR", type=Path, nargs="*", default=[], help="results folders to score")
    parser.add_argument("--output", type=Path, help="write the fitted constants and every cell's error here (JSON)")
    args = parser.parse_args(argv)
    if not args.fit and not args.check:
        parser.error("give --fit DIR and/or --check DIR ...")
    record: dict = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    if args.fit:
        cells = [c for folder in args.fit for c in components(*_cells(folder))]
        adversarial = [c for folder in args.fit_adversarial for c in components(*_cells(folder))]
        record["fitted"] = fit(cells, adversarial)
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
