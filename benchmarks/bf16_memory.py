"""What bf16 autocast does to a CPU training run's memory: the tensors autograd saves, and the peak RSS.

    python benchmarks/bf16_memory.py                                  # full and LoRA, 60 steps each way
    python benchmarks/bf16_memory.py --output benchmarks/results/bf16/memory.md

Each run is its own process: the packaged MiniLM wrapped by `peftkit.wrap` (full fine-tuning, LoRA at
peftkit's defaults), AdamW, and ``--steps`` training steps of batch 32 (`profile_step.step`: the forward
under ``torch.autocast("cpu", torch.bfloat16)`` for bf16, as Accelerate wraps it), either every batch
at ``--seq-len`` tokens ("fixed") or the first at ``--seq-len`` and the rest at random lengths from 16
to ``--seq-len`` ("varying", as dynamic padding gives a real run). Per run: the bytes of the tensors
autograd saved in the last step's forward (by dtype; a storage counted once) and the peak RSS of the
steps above the RSS once the model and optimizer exist (VmHWM, reset before the first step).
The question it answers: the bf16 benchmark cells peaked higher than float32 ones (full fine-tuning
+16%), while autocast's bfloat16 copies are half the size of what they replace.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import model_and_optimizer, step  # noqa: E402

MiB = 2**20
RUNS = [(s, p, shapes) for s in ("full", "lora") for shapes in ("fixed", "varying") for p in ("no", "bf16")]


def one(strategy: str, precision: str, shapes: str, steps: int, seq_len: int, batch_size: int = 32) -> dict:
    """Train ``steps`` steps in this process; the saved-tensor bytes and the peak RSS above the start."""
    from peftkit.bench.measure import peak_rss_bytes, reset_peak_rss, rss_bytes

    model, tokenizer, optimizer = model_and_optimizer(strategy, lr=1e-4)
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    lengths = [seq_len] + [
        rng.randint(16, seq_len) if shapes == "varying" else seq_len for _ in range(steps - 1)
    ]
    saved: dict[int, tuple[int, str]] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = (storage.nbytes(), str(tensor.dtype).removeprefix("torch."))
        return tensor

    start = rss_bytes()
    reset_ok = reset_peak_rss()
    for length in lengths:
        batch = {
            "input_ids": torch.randint(1000, tokenizer.vocab_size, (batch_size, length), generator=generator),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch_size,), generator=generator),
        }
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step(model, optimizer, batch, precision)
    by_dtype: dict[str, int] = {}
    for size, dtype in saved.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + size
    return {
        "strategy": strategy,
        "precision": precision,
        "shapes": shapes,
        "steps": steps,
        "last_length": lengths[-1],
        "saved_mib": {k: round(v / MiB, 1) for k, v in sorted(by_dtype.items())},
        "peak_rss_above_start_mib": round((peak_rss_bytes() - start) / MiB, 1),
        "peak_reset": reset_ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (default: 60)")
    parser.add_argument("--seq-len", type=int, default=64, help="the longest batch (default: 64)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here (markdown)")
    parser.add_argument("--one", nargs=3, metavar=("STRATEGY", "PRECISION", "SHAPES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one, steps=args.steps, seq_len=args.seq_len)))
        return 0

    from peftkit.precision import cpu_bf16_supported, cpu_name
    from peftkit.runreport import library_versions

    rows = []
    for strategy, precision, shapes in RUNS:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            strategy,
            precision,
            shapes,
            "--steps",
            str(args.steps),
            "--seq-len",
            str(args.seq_len),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# bf16 autocast and a CPU run's memory",
        "",
        f"`python benchmarks/bf16_memory.py {' '.join(sys.argv[1:])}` ({when}; CPU: {cpu_name()}, native "
        f"bfloat16: {cpu_bf16_supported()}, torch threads: {torch.get_num_threads()}; "
        + ", ".join(f"{k} {v}" for k, v in library_versions().items())
        + ")",
        "",
        f"Batch 32, {args.steps} steps per run, the longest batch {args.seq_len} tokens. Saved: what autograd kept from "
        "the last step's forward (its length in the table). Peak: VmHWM of the steps above the RSS before them.",
        "",
        "| strategy | batches | precision | saved (MiB) | saved by dtype (MiB) | peak RSS above start (MiB) |",
        "|---|---|---|---:|---|---:|",
    ]
    for r in rows:
        by = ", ".join(f"{k} {v}" for k, v in r["saved_mib"].items() if v)
        lines.append(
            f"| {r['strategy']} | {r['shapes']} (last {r['last_length']}) | {r['precision']} | "
            f"{sum(r['saved_mib'].values()):.1f} | {by} | {r['peak_rss_above_start_mib']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
