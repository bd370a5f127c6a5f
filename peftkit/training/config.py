"""What a training run is asked for: `TrainConfig` (validating itself), `TrainResult`, and the small
rules that turn a config into numbers (`resolve_epochs`, `target_metric`).

``peftkit.static`` reads this module's literal constants and `TrainConfig`'s field defaults from the
source (``peftkit --help`` imports no torch): keep them literals.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

SCHEDULERS = ("linear", "cosine")
PRECISIONS = ("no", "bf16", "fp16", "auto")
# None: what `accelerate launch` configured (bf16 / fp16), else bf16 on a CPU with native bfloat16 and
# float32 elsewhere (`peftkit.precision.default_mixed_precision`, measured in benchmarks/results/bf16).
DEFAULT_MIXED_PRECISION = None
DEFAULT_EPOCHS = 3


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything `train` needs besides the model, tokenizer and data.

    ``lr=None`` picks the strategy's default (`peftkit.strategies.default_learning_rate`).
    ``head_lr`` is the rate of the task head created fresh for classification / token
    classification (None: the same as ``lr``); the scheduler scales every group alike.
    ``max_steps`` (optimizer steps) overrides ``epochs``. ``eval_steps=None`` evaluates once per
    epoch; ``metric_for_best=None`` uses the task's main metric. ``resume_from_checkpoint`` is a
    checkpoint directory, or True for the latest one under ``output_dir/checkpoints``.
    ``mixed_precision=None`` keeps what ``accelerate launch`` configured (bf16 / fp16), else trains in bf16
    on a CPU with native bfloat16 (AVX512-BF16 / AMX: measured 1.22x faster at equal accuracy) and in float32
    elsewhere; "no" asks for float32; "bf16" works on GPUs and on such CPUs, "auto" picks it where the
    machine has it, GPUs included (`peftkit.precision`); parameters and optimizer state stay float32 always.
    ``compile=True`` runs the training forward through ``torch.compile`` (`peftkit.compiling`), falling
    back to eager with a warning where compiling fails. ``fast_dropout=True`` draws dropout masks on the CPU
    with `peftkit.dropout.CpuDropout` during training (16 random bits per element instead of torch's float
    draw: the same Bernoulli masks, p within 8e-6; measured in benchmarks/results/bf16), False keeps torch's.

    Length of training: ``epochs=None`` (the default) trains 3 epochs, or more when 3 epochs
    would make fewer than ``min_steps`` optimizer steps (small data): enough epochs to reach
    ``min_steps``. Given explicitly, ``epochs`` (or ``max_steps``) is obeyed as is.
    ``min_steps=150`` was measured on SST-2 with the packaged MiniLM and LoRA (lr 5e-4, batch 16, the
    best of 400 validation sentences scored on 400 test ones): 160 rows, 3 epochs (30 steps) 0.60, loss
    stuck at ln 2; 15 epochs (150 steps, the new default) 0.78; 30 epochs (300 steps) 0.75 (over-fit).
    300 rows: 8 epochs (152 steps) 0.77. 1,000 rows: 3 epochs (189 steps, unchanged) 0.81. From
    about 800 rows on (batch 16) the default stays 3 epochs, so 100k rows train as before.
    At the end, a validation loss never below 97% of the training labels' entropy (the loss of
    predicting the label frequencies) is warned about: such a run learned next to nothing.

    ``overwrite=True`` replaces an earlier run found in ``output_dir`` (only the files and folders
    peftkit writes there); without it such a directory is refused, unless resuming. A resumed run
    must match the checkpoint's run in every field except those in
    `peftkit.rundir.NOT_COMPARED` (output_dir, resume_from_checkpoint, overwrite, progress,
    log_every, eval_batch_size, report_to, sample_generations, save_steps, save_total_limit,
    device, cpu, gradient_checkpointing, compile, fast_dropout), and in model, strategy, options, task and data.

    ``adversarial`` ("fgm", "pgd", "freelb"; None: off) perturbs the input embeddings' output by at
    most ``adv_epsilon`` (L2 per example) in ``adv_steps`` ascent steps of ``adv_alpha`` (None:
    adv_epsilon / adv_steps); see `peftkit.adversarial`. ``teacher`` (a model, a model directory
    or hub id, or a peftkit checkpoint) distills its logits into the model: the loss becomes
    ``(1 - distill_alpha) * task loss + distill_alpha * T^2 * KL`` at temperature
    ``distill_temperature``; see `peftkit.distill`.
    """

    output_dir: str = "peftkit-output"
    seed: int = 0
    epochs: int | None = None
    min_steps: int = 150
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int | None = None
    lr: float | None = None
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "linear"
    max_grad_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str | None = DEFAULT_MIXED_PRECISION
    compile: bool = False
    fast_dropout: bool = True
    eval_steps: int | None = None
    early_stopping_patience: int | None = None
    metric_for_best: str | None = None
    greater_is_better: bool | None = None
    load_best_at_end: bool = True
    save_steps: int | None = None
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | bool | None = None
    group_by_length: bool = True
    log_every: int = 10
    report_to: str | list[str] | None = None
    max_length: int = 128
    cpu: bool = False
    device: str | None = None
    progress: bool = True
    sample_generations: int = 1
    overwrite: bool = False
    adversarial: str | None = None
    # 0.1: on MiniLM + LoRA (SST-2, 100 steps of 32, 400 dev.tsv sentences, one seed) FGM at 0.1 scored 0.843
    # against 0.815 without; 0.3 lost (0.773) and 1.0 learned nothing (0.520): token vectors there have L2 norm ~1.1.
    adv_epsilon: float = 0.1
    adv_steps: int = 2
    adv_alpha: float | None = None
    teacher: Any = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("batch_size", "gradient_accumulation_steps", "log_every"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be a positive integer.")
        for name in (
            "max_steps",
            "eval_steps",
            "save_steps",
            "eval_batch_size",
            "early_stopping_patience",
            "save_total_limit",
        ):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise bad(name, "must be a positive integer, or None to leave it off.")
        if self.epochs is not None and self.epochs < 1 and not self.max_steps:
            raise bad("epochs", "must be at least 1 (or set max_steps; None picks it from the data size).")
        if int(self.min_steps) < 0:
            raise bad("min_steps", "must be 0 or more.")
        if self.overwrite and self.resume_from_checkpoint:
            raise bad(
                "overwrite",
                "and resume_from_checkpoint contradict each other: resume the run in output_dir, "
                "or overwrite it, not both.",
            )
        if self.scheduler not in SCHEDULERS:
            raise bad("scheduler", f"choose one of {', '.join(SCHEDULERS)}.")
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise bad("mixed_precision", f"choose one of {', '.join(PRECISIONS)}.")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "must be in [0, 1).")
        if self.lr is not None and not self.lr > 0:
            raise bad("lr", "must be a positive number, or None for the strategy's default.")
        trackers = tracker_names(self.report_to)
        from accelerate.utils import LoggerType

        unknown = [t for t in trackers if t not in LoggerType.list()]
        if unknown:
            raise bad(
                "report_to",
                f"unknown tracker(s) {', '.join(unknown)}: choose from {', '.join(LoggerType.list())} "
                '(comma-separated for several), or None / "none".',
            )
        if self.head_lr is not None and not self.head_lr > 0:
            raise bad("head_lr", "must be a positive number, or None for the same rate as lr.")
        if self.device not in (None, "auto", "cpu", "cuda"):
            raise bad("device", 'choose "cpu", "cuda" or None (automatic).')
        self._check_adversarial_and_teacher(bad)

    def _check_adversarial_and_teacher(self, bad) -> None:
        from ..adversarial import METHODS

        if self.adversarial in ("none", ""):
            self.adversarial = None
        if self.adversarial is not None and self.adversarial not in METHODS:
            raise bad("adversarial", f"choose one of {', '.join(METHODS)}, or None to train without it.")
        if not float(self.adv_epsilon) > 0:
            raise bad(
                "adv_epsilon", "must be a positive number (the L2 radius of the perturbation per example)."
            )
        if int(self.adv_steps) < 1:
            raise bad("adv_steps", "must be a positive integer (the ascent steps of pgd / freelb).")
        if self.adv_alpha is not None and not float(self.adv_alpha) > 0:
            raise bad("adv_alpha", "must be a positive number, or None for adv_epsilon / adv_steps.")
        if not 0 <= float(self.distill_alpha) <= 1:
            raise bad("distill_alpha", "must be in [0, 1] (the weight of the teacher's soft targets).")
        if not float(self.distill_temperature) > 0:
            raise bad("distill_temperature", "must be a positive number.")
        if isinstance(self.teacher, nn.Module):
            from ..distill import TeacherRef

            self.teacher = TeacherRef(self.teacher)  # never deep-copied with the config
        elif self.teacher in ("", "none"):
            self.teacher = None
        elif (
            self.teacher is not None
            and not isinstance(self.teacher, (str, os.PathLike))
            and not hasattr(self.teacher, "model")
        ):
            raise bad("teacher", "give a model object, a model directory or hub id, or a peftkit checkpoint.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (a YAML section), rejecting unknown keys with the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown training option(s) {', '.join(unknown)}. Valid options: {', '.join(sorted(known))}."
            )
        return cls(**values)


@dataclass
class TrainResult:
    """``metrics``: final metrics on ``split`` (test when the data has one); ``history``: one row
    per evaluation; ``best_checkpoint``: directory of the best model (None without evaluation);
    ``final_checkpoint``: the model the metrics were computed with; ``log``: every logged row;
    ``batch_shapes`` and ``step_seconds``: what this process trained on, and for how long (a resumed run:
    since it resumed); ``mixed_precision``: the precision it trained (and took ``metrics``) in."""

    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    final_checkpoint: Path | None = None
    split: str = "test"
    log: list[dict[str, Any]] = field(default_factory=list)
    # What this process trained on: each micro-batch's shapes (`batch_signature`) and how often it came, and
    # the seconds spent in training steps (evaluation and checkpoints excluded): `peftkit.flops` reads both.
    batch_shapes: dict[tuple, int] = field(default_factory=dict)
    step_seconds: float = 0.0
    mixed_precision: str = "no"  # what it trained in ("auto" and the default resolved)


def tracker_names(report_to: str | list[str] | None) -> list[str]:
    """``report_to`` as a list of Accelerate tracker names ("wandb,tensorboard" -> both; None / "none" -> [])."""
    names = report_to.split(",") if isinstance(report_to, str) else list(report_to or [])
    return [n.strip() for n in names if n.strip() and n.strip() != "none"]


def resolve_epochs(config: TrainConfig, steps_per_epoch: int) -> int:
    """``config.epochs``, or (None) 3 epochs, more when needed to reach ``config.min_steps`` steps."""
    if config.epochs is not None:
        return int(config.epochs)
    return max(DEFAULT_EPOCHS, math.ceil(config.min_steps / max(1, steps_per_epoch)))


def target_metric(config: TrainConfig, task) -> tuple[str, bool]:
    """The metric that picks the best model, and whether greater is better (a `peftkit.tasks` Task)."""
    metric = config.metric_for_best or task.main_metric
    greater = config.greater_is_better
    if greater is None:
        greater = task.greater_is_better if metric == task.main_metric else not metric.endswith("loss")
    return metric, greater
