"""Where a MiniLM LoRA training step spends its time, in float32 and under bf16 autocast.

    python benchmarks/profile_step.py                      # batch 32 x 64 tokens, 5 profiled steps each
    python benchmarks/profile_step.py --steps 2 --top 15   # a quick look

The step is peftkit's: the packaged MiniLM (sentence-transformers/all-MiniLM-L6-v2) wrapped with
LoRA (peftkit's defaults), AdamW over peftkit's parameter groups, forward + backward + gradient
clipping + optimizer step, the forward under ``torch.autocast("cpu", torch.bfloat16)`` for bf16
(what ``mixed_precision="bf16"`` does). ``torch.profiler`` records the steps after warm-up ones;
the report sums the self CPU time of the recorded operators into buckets (large matmuls, small
matmuls: the LoRA A/B products, dropout, casts, attention, optimizer, elementwise rest) and lists
the top operators, per precision, with the step time and the FLOP rate
(`peftkit.flops.step_flops`) against this machine's matmul peak (`peftkit.flops.matmul_peak`).

On a CPU without native bfloat16 (AVX2 only) the bf16 profile shows emulated bfloat16, slower than
float32: peftkit refuses mixed_precision="bf16" there; the profile still shows where casts go.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

PHASES = ("forward", "backward", "clip", "optimizer")  # the record_function ranges of `step`
# Operator name -> kind; first match wins. A "small matmul" multiplies a 2-D operand with a side of at
# most SMALL (LoRA's rank-r A and B at r <= 16, the 2-label head), told apart by the recorded input shapes.
SMALL = 16
KINDS = (
    ("dropout", ("dropout", "bernoulli")),
    ("casts / copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone")),
    ("attention", ("scaled_dot_product", "softmax")),
    (
        "matmul",
        ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm", "mkldnn"),
    ),
    ("norm / gelu / embedding", ("layer_norm", "gelu", "embedding", "tanh")),
)


def _kind(name: str, shapes) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k.lower() in low for k in keys):
            if kind == "matmul" and any(len(s) == 2 and min(s) <= SMALL for s in shapes or ()):
                return "small matmul (LoRA A/B, head)"
            return kind
    return "elementwise / other"


def _bucket(event) -> str | None:
    """ "phase: kind" of a profiled operator (its phase from the enclosing `step` range); None outside a step."""
    parent, phase = event.cpu_parent, None
    while parent is not None and phase is None:
        phase = parent.name if parent.name in PHASES else None
        parent = parent.cpu_parent
    if phase is None:
        return None
    if phase in ("clip", "optimizer"):
        return phase
    return f"{phase}: {_kind(event.name, event.input_shapes)}"


def build(batch_size: int, seq_len: int, seed: int = 0):
    """peftkit's LoRA MiniLM, its optimizer (peftkit's groups) and one random batch of token ids."""
    import peftkit
    from peftkit.training import parameter_groups

    model, tokenizer = peftkit.load_model(
        "sentence-transformers/all-MiniLM-L6-v2", task="classification", num_labels=2
    )
    model = peftkit.wrap(model, "lora")
    model.train()
    lr = 5e-4
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01, lr=lr), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "input_ids": torch.randint(1000, tokenizer.vocab_size, (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=generator),
    }
    return model, optimizer, batch


def step(model, optimizer, batch, precision: str) -> None:
    """One training step as peftkit's loop takes it."""
    from torch.profiler import record_function

    cast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast("cpu", enabled=False)
    )
    with record_function("forward"), cast:
        loss = model(**batch).loss
    with record_function("backward"):
        loss.float().backward()
    with record_function("clip"):
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    with record_function("optimizer"):
        optimizer.step()
        optimizer.zero_grad()


def profile(
    precision: str, steps: int, warmup: int, batch_size: int, seq_len: int, top: int, peak_size: int = 2048
) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from peftkit.flops import PRECISION_DTYPES, matmul_peak, step_flops

    model, optimizer, batch = build(batch_size, seq_len)
    flops = step_flops(model, batch)
    for _ in range(warmup):
        step(model, optimizer, batch, precision)
    times = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            step(model, optimizer, batch, precision)
            times.append(time.perf_counter() - start)
    buckets: dict[str, float] = defaultdict(float)
    for event in prof.events():
        bucket = _bucket(event)
        if bucket is not None:
            buckets[bucket] += event.self_cpu_time_total / 1e6 / steps
    seconds = statistics.median(times)
    peak = matmul_peak(PRECISION_DTYPES[precision], size=peak_size)
    print(
        f"\n== {precision}: batch {batch_size} x {seq_len}, {steps} profiled steps after {warmup} warm-up; "
        f"median step {seconds:.3f} s, {flops / 1e9:.1f} GFLOP/step, {flops / seconds / 1e9:.1f} GFLOP/s = "
        f"{flops / seconds / peak:.0%} of this machine's {peak / 1e9:.3g} GFLOP/s {PRECISION_DTYPES[precision]} "
        "matmul peak"
    )
    buckets["Python / framework (step time not in operators)"] = max(0.0, seconds - sum(buckets.values()))
    total = sum(buckets.values())
    print(f"{'where (self CPU time per step)':<44}{'seconds':>9}{'share':>8}")
    for name, value in sorted(buckets.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<42}{value:>9.3f}{value / total:>8.1%}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return {
        "precision": precision,
        "step_seconds": seconds,
        "gflops_per_step": flops / 1e9,
        "buckets": dict(buckets),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per precision (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps first (default: 1)")
    parser.add_argument("--top", type=int, default=20, help="operators listed per precision (default: 20)")
    parser.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="side of the square matmul timed for the peak (default: 2048)",
    )
    parser.add_argument("--precision", choices=("no", "bf16", "both"), default="both")
    args = parser.parse_args(argv)
    from transformers.utils import logging

    from peftkit.precision import cpu_bf16_supported, cpu_name

    logging.set_verbosity_error()
    print(
        f"CPU: {cpu_name()}, native bfloat16: {cpu_bf16_supported()}, torch threads: {torch.get_num_threads()}"
    )
    results = [
        profile(p, args.steps, args.warmup, args.batch_size, args.seq_len, args.top, args.peak_size)
        for p in (("no", "bf16") if args.precision == "both" else (args.precision,))
    ]
    if len(results) == 2:
        print(f"\nbf16 / float32 step time: {results[1]['step_seconds'] / results[0]['step_seconds']:.2f}")


if __name__ == "__main__":
    main()
