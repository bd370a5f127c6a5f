"""Counting parameters honestly, quantized layers and PEFT wrappers included."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} of {self.total:,} ({self.percent:.4f}%)"


def _numel(param) -> int:
    """Parameters a tensor stands for: bitsandbytes 4-bit packs two values per byte."""
    n = param.numel()
    if type(param).__name__ == "Params4bit":
        n *= 2 * param.element_size()
    return n


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters of a model, wrapped or not.

    Shared (tied) tensors count once; 4-bit weights count as the values they hold, the way
    PEFT's ``get_nb_trainable_parameters`` does; the frozen originals that PEFT keeps beside a
    trained copy of a task head (``modules_to_save``) are not counted twice.
    """
    trainable = total = 0
    for name, param in model.named_parameters():
        if ".original_module." in name:
            continue
        n = _numel(param)
        total += n
        if param.requires_grad:
            trainable += n
    return ParameterCount(trainable, total)
