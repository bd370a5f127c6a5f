"""How close training comes to the machine's limit: FLOPs of a training step, against a measured peak.

- `step_flops`: the FLOPs of one forward + backward, counted by ``torch.utils.flop_counter.
  FlopCounterMode`` (matmuls, convolutions, attention; elementwise work and the optimizer, small
  for adapters, are not counted: these are the "model FLOPs" of the MFU literature). The count is
  the same in every precision, so it runs in the model's own dtype.
- `matmul_peak`: what this machine reaches on a large square matmul (2048^3 by default) in a
  given dtype, the best of a few timed runs, cached per process: the ceiling a step can approach.
- `utilization`: FLOPs/step, achieved FLOP/s (FLOPs x steps / training seconds) and the fraction
  of the peak in the step's precision: the benchmark's columns (`cell_columns` fills them).
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import torch

# The dtype a mixed precision setting multiplies in ("no": the model's float32).
PRECISION_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one training forward + backward of ``model`` on ``batch`` (which holds the labels).

    Runs a real step without an optimizer: the gradients it leaves are cleared (set to None), and
    the model's train / eval mode is restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    try:
        with FlopCounterMode(display=False) as counter:
            model(**batch).loss.backward()
    finally:
        for param in model.parameters():
            param.grad = None
        model.train(was_training)
    return int(counter.get_total_flops())


@cache
def matmul_peak(
    dtype: torch.dtype = torch.float32, device: str = "cpu", size: int = 2048, repeats: int = 3
) -> float:
    """FLOP/s of the fastest of ``repeats`` ``size``^3 matmuls in ``dtype`` on ``device`` (after one warm-up),
    with torch's current thread count. Cached: measured once per process and setting."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    torch.mm(a, b)  # warm-up; where one product takes over a second (bfloat16 emulated), it is the measure
    sync()
    best = time.perf_counter() - start
    for _ in range(repeats if best < 1.0 else 0):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def utilization(
    flops_per_step: int, steps: int, seconds: float, precision: str, device: str = "cpu"
) -> dict[str, Any]:
    """The benchmark columns: ``step_gflops``, ``achieved_gflops_per_s``, ``peak_gflops_per_s`` (the
    `matmul_peak` in the precision's dtype) and ``peak_fraction``."""
    achieved = flops_per_step * steps / seconds if seconds > 0 else 0.0
    peak = matmul_peak(PRECISION_DTYPES.get(precision, torch.float32), device)
    return {
        "mixed_precision": precision,
        "step_gflops": _four_digits(flops_per_step / 1e9),
        "achieved_gflops_per_s": _four_digits(achieved / 1e9),
        "peak_gflops_per_s": _four_digits(peak / 1e9),
        "peak_fraction": _four_digits(achieved / peak),
    }


def _four_digits(value: float) -> float:
    """Four significant digits: 87.03 GFLOP for MiniLM, 0.0351 for a tiny test model."""
    return float(f"{value:.4g}")


def sample_batch(
    task, tokenizer, dataset, batch_size: int, max_length: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A training batch as the loop sees it: ``batch_size`` seeded random rows of ``dataset`` (canonical
    columns), prepared and padded by the `peftkit.tasks` task."""
    from datasets import DatasetDict

    rows = dataset.shuffle(seed=seed).select(range(min(batch_size, len(dataset))))
    prepared = task.prepare(DatasetDict(train=rows), tokenizer, max_length=max_length)["train"]
    return task.collator(tokenizer)([prepared[i] for i in range(len(prepared))])


def cell_columns(
    model, tokenizer, task, dataset, config, steps: int, seconds: float, device: str = "cpu"
) -> dict[str, Any]:
    """`utilization` of a finished training run of ``steps`` optimizer steps in ``seconds``: its FLOPs/step
    counted on a sample batch of the run's size (times its gradient accumulation)."""
    from .precision import resolve_mixed_precision

    precision = resolve_mixed_precision(config.mixed_precision, on_cpu=device == "cpu")  # as training did
    batch = sample_batch(task, tokenizer, dataset, config.batch_size, config.max_length, config.seed)
    per_step = step_flops(model, batch) * config.gradient_accumulation_steps
    return utilization(per_step, steps, seconds, precision, "cuda" if device == "cuda" else "cpu")
