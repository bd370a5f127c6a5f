"""Where a MiniLM LoRA training step spends its time, in float32 and under bf16 autocast.

    python benchmarks/profile_step.py                      # batch 32 x 64 tokens, 5 profiled steps each
    python benchmarks/profile_step.py --steps 2 --top 15   # a quick look
    python benchmarks/profile_step.py --output benchmarks/results/main/profile_step.md

The step is peftkit's: the packaged MiniLM (sentence-transformers/all-MiniLM-L6-v2) wrapped with
LoRA (peftkit's defaults), AdamW over peftkit's parameter groups, forward + backward + gradient
clipping + optimizer step, the forward under ``torch.autocast("cpu", torch.bfloat16)`` for bf16
(what ``mixed_precision="bf16"`` does). Per precision:

- the step time: the median of ``--timed`` steps run without the profiler (its shape recording
  slows every operator call), and the FLOP rate it gives (`peftkit.flops.step_flops`) against this
  machine's matmul peak in that dtype (`peftkit.flops.matmul_peak`);
- what dropout costs: the same timing with LoRA's dropout off, the model's own dropout off, and
  both off (``p = 0``: torch returns the input untouched), time no profile can attribute as well; and
  with every dropout drawn by `peftkit.dropout.CpuDropout`, as `peftkit.train` runs it by default
  (the profile below is of torch's dropout, "as trained");
- where the time goes: ``torch.profiler`` records ``--steps`` steps after warm-up ones; the report
  sums the self CPU time of the recorded operators into buckets (large matmuls, small matmuls: the
  LoRA A/B products, dropout, casts, attention, optimizer, elementwise rest) as shares of the
  profiled step, and lists the top operators.

On a CPU without native bfloat16 (AVX2 only) the bf16 profile shows emulated bfloat16, slower than
float32: peftkit refuses mixed_precision="bf16" there; the profile still shows where casts go.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

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


def model_and_optimizer(strategy: str = "lora", lr: float = 5e-4):
    """The packaged MiniLM wrapped by ``strategy`` at peftkit's defaults, in training mode, its tokenizer,
    and AdamW over peftkit's parameter groups."""
    import peftkit
    from peftkit.training import parameter_groups

    model, tokenizer = peftkit.load_model(
        "sentence-transformers/all-MiniLM-L6-v2", task="classification", num_labels=2
    )
    model = peftkit.wrap(model, strategy)
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01, lr=lr), lr=lr)
    return model, tokenizer, optimizer


def build(batch_size: int, seq_len: int, seed: int = 0):
    """peftkit's LoRA MiniLM, its optimizer (peftkit's groups) and one random batch of token ids."""
    model, tokenizer, optimizer = model_and_optimizer()
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


def timed(model, optimizer, batch, precision: str, steps: int) -> float:
    """Median seconds of ``steps`` unprofiled training steps (after one warm-up step)."""
    step(model, optimizer, batch, precision)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(model, optimizer, batch, precision)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def set_dropout(model, p_lora: float | None, p_model: float | None) -> None:
    """Set the dropout probability of LoRA's input dropout and of the model's own dropout layers
    (None: leave them)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            p = p_lora if "lora_dropout" in name else p_model
            if p is not None:
                module.p = p


def profile(
    precision: str,
    steps: int,
    warmup: int,
    batch_size: int,
    seq_len: int,
    top: int,
    timed_steps: int,
    peak_size: int = 2048,
    say=print,
) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from peftkit.dropout import faster_dropout
    from peftkit.flops import PRECISION_DTYPES, matmul_peak, step_flops

    model, optimizer, batch = build(batch_size, seq_len)
    flops = step_flops(model, batch)
    peak = matmul_peak(PRECISION_DTYPES[precision], size=peak_size)
    lora_p = next(
        m.p for n, m in model.named_modules() if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)
    )
    model_p = next(
        m.p for n, m in model.named_modules() if "lora_dropout" not in n and isinstance(m, torch.nn.Dropout)
    )
    ablations = {}
    for label, (p_lora, p_model) in {
        "as trained": (lora_p, model_p),
        f"LoRA dropout off (was {lora_p})": (0.0, model_p),
        f"model dropout off (was {model_p})": (lora_p, 0.0),
        "all dropout off": (0.0, 0.0),
    }.items():
        set_dropout(model, p_lora, p_model)
        ablations[label] = timed(model, optimizer, batch, precision, timed_steps)
    set_dropout(model, lora_p, model_p)
    with faster_dropout(model):  # what peftkit.train does (TrainConfig.fast_dropout)
        ablations["peftkit's CPU dropout (train's default)"] = timed(
            model, optimizer, batch, precision, timed_steps
        )
    seconds = ablations["as trained"]
    say(
        f"\n== {precision}: batch {batch_size} x {seq_len}; median of {timed_steps} unprofiled steps {seconds:.3f} s, "
        f"{flops / 1e9:.1f} GFLOP/step, {flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / peak:.0%} of this "
        f"machine's {peak / 1e9:.4g} GFLOP/s {PRECISION_DTYPES[precision]} matmul peak"
    )
    say(f"{'step time (unprofiled)':<44}{'seconds':>9}{'vs as trained':>15}{'of peak':>9}")
    for label, value in ablations.items():
        say(f"  {label:<42}{value:>9.3f}{value / seconds:>15.2f}{flops / value / peak:>9.0%}")

    for _ in range(warmup):
        step(model, optimizer, batch, precision)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step(model, optimizer, batch, precision)
    buckets: dict[str, float] = defaultdict(float)
    for event in prof.events():
        bucket = _bucket(event)
        if bucket is not None:
            buckets[bucket] += event.self_cpu_time_total / 1e6 / steps
    total = sum(buckets.values())
    say(f"\n{'where (self CPU time per profiled step)':<44}{'seconds':>9}{'share':>8}")
    for name, value in sorted(buckets.items(), key=lambda kv: -kv[1]):
        say(f"  {name:<42}{value:>9.3f}{value / total:>8.1%}")
    say(f"  (a profiled step's operators: {total:.3f} s; the profiler's shape recording slows each call)")
    say(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return {
        "precision": precision,
        "step_seconds": seconds,
        "gflops_per_step": flops / 1e9,
        "ablations": ablations,
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
    parser.add_argument(
        "--timed", type=int, default=8, help="unprofiled steps timed per setting (default: 8)"
    )
    parser.add_argument("--output", default=None, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    import datetime
    import sys

    from transformers.utils import logging

    from peftkit.precision import cpu_bf16_supported, cpu_name
    from peftkit.runreport import library_versions

    logging.set_verbosity_error()
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text)
        lines.append(text)

    say(
        f"CPU: {cpu_name()}, native bfloat16: {cpu_bf16_supported()}, torch threads: {torch.get_num_threads()}; "
        + ", ".join(f"{k} {v}" for k, v in library_versions().items())
    )
    results = [
        profile(
            p,
            args.steps,
            args.warmup,
            args.batch_size,
            args.seq_len,
            args.top,
            args.timed,
            args.peak_size,
            say,
        )
        for p in (("no", "bf16") if args.precision == "both" else (args.precision,))
    ]
    if len(results) == 2:
        say(
            f"\nbf16 / float32 step time (unprofiled): {results[1]['step_seconds'] / results[0]['step_seconds']:.2f}"
        )
    if args.output:
        command = "python benchmarks/profile_step.py " + " ".join(sys.argv[1:])
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        Path(args.output).write_text(
            f"# Where a MiniLM LoRA training step's time goes\n\n`{command}` ({when})\n\n```\n"
            + "\n".join(lines)
            + "\n```\n"
        )


if __name__ == "__main__":
    main()
