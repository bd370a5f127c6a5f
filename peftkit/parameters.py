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


def strategy_table(make_model, strategies=None) -> str:
    """A markdown table of trainable parameters per strategy for fresh models from ``make_model()``.

    A strategy the model refuses gets its row with the reason, not a number.
    """
    from .strategies import STRATEGIES, wrap

    lines = ["| strategy | trainable parameters | total parameters | trainable % |", "|---|---:|---:|---:|"]
    for name in strategies or STRATEGIES:
        try:
            counts = count_parameters(wrap(make_model(), name))
        except ValueError as err:
            reason = str(err).split(":")[0]
            lines.append(f"| {name} | refused: {reason} | | |")
            continue
        lines.append(f"| {name} | {counts.trainable:,} | {counts.total:,} | {counts.percent:.3f} |")
    return "\n".join(lines)
