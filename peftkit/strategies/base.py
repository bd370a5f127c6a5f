"""The Strategy interface and the record a wrapped model carries.

A strategy only decides which parameters exist and train. It never loads data or trains.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..introspect import trainable_state
from .options import Rule, check

INFO_ATTR = "peftkit_info"


@dataclass
class WrapInfo:
    """What `wrap` did to a model: enough to save, reload and report it."""

    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    base_model: str | None = None
    format: str = "peftkit"  # "peft" (PEFT's own files), "peftkit" (trained tensors), "full"

    def __post_init__(self) -> None:
        # A base loaded from a relative folder is recorded by its absolute path, so a checkpoint
        # saved after a change of directory (or read from elsewhere) still finds it.
        if self.base_model and not os.path.isabs(self.base_model) and os.path.isdir(self.base_model):
            self.base_model = os.path.abspath(self.base_model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrap_info(model: nn.Module) -> WrapInfo | None:
    """The WrapInfo of a model returned by `peftkit.wrap`, or None for a plain model."""
    return getattr(model, INFO_ATTR, None)


class Strategy:
    """One fine-tuning strategy.

    Subclasses set the class attributes and implement `apply`. `options` maps each option
    name to its default (the one place defaults live); `option_rules` maps the same names to
    the `Rule` each value must meet (type and range, see `peftkit.strategies.options`).
    `resolve_options` rejects any other name and any value its rule refuses, before anything
    is built; `check_options` may add rules that tie options together.
    """

    name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    option_rules: ClassVar[dict[str, Rule]] = {}
    # How a checkpoint holds it: "peft" (PEFT's own files), "peftkit" (the trained tensors), "full".
    # "peft" is loaded back by PeftModel.
    checkpoint_format: ClassVar[str] = "peftkit"
    plan_rank: ClassVar[int] = 100  # the planner's order when no benchmark results rank it: lower first
    mergeable: ClassVar[bool] = False
    merge_refusal: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...] | None] = None  # the tasks it supports; None: every registered task
    default_lr: ClassVar[float] = 1e-3
    summary: ClassVar[str] = ""

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise ValueError(
                f"Unknown option(s) {', '.join(map(repr, unknown))} for strategy {self.name!r}. "
                f"Its options are: {valid}."
            )
        resolved = {**self.options, **given}
        for key, value in given.items():
            if key in self.option_rules:  # every built-in option has one (tests/test_validation.py)
                check(self.name, key, value, self.option_rules[key], self.options[key])
        self.check_options(resolved)
        return resolved

    def check_options(self, options: dict[str, Any]) -> None:
        """Rules between options (each one already meets its own rule); raise a ValueError."""

    def apply(self, model: nn.Module, task: str, **options: Any) -> nn.Module:
        raise NotImplementedError

    def record(self, model: nn.Module, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The options and checkpoint format `wrap` records for ``model`` (what `apply` returned). A
        strategy that picks its implementation at wrap time records its pick, so a checkpoint reloads
        the same way."""
        return options, self.checkpoint_format

    def checkpoint_state(self, model: nn.Module, options: dict[str, Any]) -> tuple[dict[str, Any], dict]:
        """(tensors, options) a ``peftkit``-format checkpoint stores: by default the trained tensors
        and the options as recorded; `peftkit.load` wraps a fresh base with those options and loads
        those tensors into it."""
        return trainable_state(model), options

    # ---- hooks the training loop calls on the wrapped model's strategy (it never tests names)

    def param_groups(self, model: nn.Module, groups: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (`peftkit.training.parameter_groups`), adjusted or as they are."""
        return groups

    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        """Called once before the first step with the run's length in optimizer steps."""

    def on_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after each optimizer step (``step`` counts from 1), with the gradients still there."""

    def on_weights_restored(self, model: nn.Module) -> None:
        """Called when the loop puts earlier weights back (the best evaluation's, at the end of a run)."""

    def on_load(self, model: nn.Module) -> None:
        """Called by `peftkit.load` on the model it rebuilt from a checkpoint (in PEFT's format or ours)."""


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_heads(model: nn.Module, heads: list[str]) -> None:
    """Make the task-head modules of a classification model trainable."""
    for name in heads:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
