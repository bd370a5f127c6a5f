"""How close training comes to the machine's limit: FLOPs of training, against a measured peak.

- `step_flops`: the FLOPs of one forward + backward, counted by ``torch.utils.flop_counter.
  FlopCounterMode`` (matmuls, convolutions, attention; elementwise work and the optimizer, small
  for adapters, are not counted: these are the "model FLOPs" of the MFU literature). The count is
  the same in every precision, so it runs in the model's own dtype.
- `trained_flops`: the FLOPs of every micro-batch a run trained on, from the shapes the loop
  recorded (`peftkit.training.TrainResult.batch_shapes`): length-grouped batches are padded far less
  than a random one, so one sample batch times the step count overstates the work.
- `matmul_peak`: what this machine reaches on a large square matmul (2048^3 by default) in a
  given dtype, the best of a few timed runs, cached per process: the ceiling a step can approach.
- `utilization`: FLOPs/step, achieved FLOP/s (FLOPs / seconds in training steps) and the fraction
  of the peak in the step's precision: the benchmark's columns (`cell_columns` fills them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
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
    """The benchmark columns: ``step_gflops`` (mean per optimizer step), ``achieved_gflops_per_s``,
    ``peak_gflops_per_s`` (the `matmul_peak` in the precision's dtype), ``peak_fraction`` and the
    ``step_seconds`` they were achieved in."""
    achieved = flops_per_step * steps / seconds if seconds > 0 else 0.0
    peak = matmul_peak(PRECISION_DTYPES.get(precision, torch.float32), device)
    return {
        "mixed_precision": precision,
        "step_gflops": _four_digits(flops_per_step / 1e9),
        "achieved_gflops_per_s": _four_digits(achieved / 1e9),
        "peak_gflops_per_s": _four_digits(peak / 1e9),
        "peak_fraction": _four_digits(achieved / peak),
        "step_seconds": round(seconds, 2),
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


def shaped(sample: dict[str, torch.Tensor], signature) -> dict[str, torch.Tensor]:
    """``sample`` with each tensor cropped, or padded with zeros, to the shape ``signature`` names
    (`peftkit.training.batch_signature`): a batch with a trained batch's shapes, for counting its FLOPs."""
    batch = dict(sample)
    for name, shape in signature:
        source = sample[name]
        out = source.new_zeros(shape)
        common = tuple(slice(0, min(a, b)) for a, b in zip(shape, source.shape, strict=True))
        out[common] = source[common]
        batch[name] = out
    return batch


def trained_flops(
    model: torch.nn.Module, batch_shapes: Mapping[tuple, int], sample: dict[str, torch.Tensor]
) -> int:
    """FLOPs of training forward + backward over micro-batches of ``batch_shapes`` (signature -> count).

    Every operation of a batch is batched over its rows, so a shape's FLOPs are ``fixed + rows x per_row``:
    ``per_row`` from a one-row batch of that shape, ``fixed`` (what does not grow with the rows: a penalty
    on the weights, as AdaLoRA's) from one whole batch of the commonest shape. One short count per distinct
    length instead of one full step per batch.
    """
    if not batch_shapes:
        return 0

    def rows(signature) -> int:
        return max((shape[0] for _, shape in signature if shape), default=1)

    def one_row(signature):
        return tuple((name, (1, *shape[1:]) if shape else shape) for name, shape in signature)

    per_row: dict[tuple, int] = {}
    for signature in batch_shapes:
        key = one_row(signature)
        if key not in per_row:
            per_row[key] = step_flops(model, shaped(sample, key))
    common = max(batch_shapes, key=lambda sig: (batch_shapes[sig], rows(sig)))
    fixed = 0.0
    if rows(common) > 1:
        whole = step_flops(model, shaped(sample, common))
        fixed = (rows(common) * per_row[one_row(common)] - whole) / (rows(common) - 1)
    total = sum(
        count * (fixed + rows(sig) * (per_row[one_row(sig)] - fixed)) for sig, count in batch_shapes.items()
    )
    return round(total)


def cell_columns(
    model, tokenizer, task, dataset, config, result, steps: int, device: str = "cpu"
) -> dict[str, Any]:
    """`utilization` of a finished training run (its `peftkit.training.TrainResult`) of ``steps`` optimizer
    steps: the FLOPs of the batches it trained on (`trained_flops`) over its seconds in training steps, against
    the peak of the precision it trained in."""
    sample = sample_batch(task, tokenizer, dataset, config.batch_size, config.max_length, config.seed)
    total = trained_flops(model, result.batch_shapes, sample)
    device = "cuda" if device == "cuda" else "cpu"
    return utilization(total // max(1, steps), steps, result.step_seconds, result.mixed_precision, device)
