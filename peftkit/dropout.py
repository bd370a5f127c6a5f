"""Dropout with cheaper random masks on the CPU, swapped in for the length of a training run.

torch's CPU dropout draws one float per element (``bernoulli_``) from a generator that runs on one
thread: on a 2-core Xeon it takes ~4 ms for one 32 x 64 x 384 activation, most of a LoRA layer's
forward there, and dropout was 39% of a float32 MiniLM LoRA step (benchmarks/results/bf16/profile_step.md).
`CpuDropout` draws 64 random bits per four elements instead and compares each 16-bit quarter with a
threshold: the same element-wise Bernoulli(1 - p) keep mask (p rounded to a multiple of 1/65536, under
8e-6 away), scaled by 1 / (1 - p), from the same seeded torch generator; autograd keeps a one-byte mask
for the backward where torch keeps a float one. On other devices, while compiling (TorchInductor makes its
own masks) and for in-place dropout it is ``nn.Dropout``.

`faster_dropout(model)` replaces every ``nn.Dropout`` in the model (its own, and PEFT's LoRA input
dropout) by a `CpuDropout` of the same ``p`` and puts the originals back on exit; `peftkit.train` does
it unless ``TrainConfig.fast_dropout`` is False, so the model it hands back has its own modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_LEVELS = 1 << 16  # a 16-bit draw per element


def dropout_cpu(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x`` with each element zeroed with probability ``p`` (a multiple of 1/65536) and the rest scaled
    by 1 / (1 - p); the mask from 16 random bits per element. Differentiable in ``x``."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    words.random_(-(1 << 63), None)  # every int64 (64 uniform bits), from torch's seeded default generator
    draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768..32767
    keep = draws >= round(p * _LEVELS) - _LEVELS // 2
    return x * keep * (1.0 / (1.0 - p))


class CpuDropout(nn.Dropout):
    """``nn.Dropout`` whose masks on the CPU come from `dropout_cpu` (the module docstring says when not)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or self.inplace
            or not 0.0 < self.p < 1.0
            or x.device.type != "cpu"
            or torch.compiler.is_compiling()
        ):
            return super().forward(x)
        return dropout_cpu(x, self.p)


@contextmanager
def faster_dropout(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every ``nn.Dropout`` of ``model`` (the class itself, not subclasses) is a
    `CpuDropout` with the same ``p``; yields how many were swapped. The originals come back on exit."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if enabled:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout and child.p > 0:
                    fast = CpuDropout(child.p, child.inplace)
                    fast.train(child.training)
                    setattr(parent, name, fast)
                    swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, original in reversed(swapped):
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)
