"""The one training loop: Accelerate, blind to the strategy (it only sees trainable parameters).

``train(model, tokenizer, data, TrainConfig(...), task=None) -> TrainResult``

- The task (``peftkit.tasks``) turns the DatasetDict into model inputs, pads batches, runs one
  evaluation step and computes metrics; nothing here knows a column name.
- ``TrainConfig.batch_size`` is per process. Every step draws one global batch of
  ``batch_size * num_processes`` examples (grouped by length, seeded) and splits it across
  processes, so the same seed gives the same batches on one process or many.
- Output directory: ``train_log.jsonl`` and ``train_log.csv`` (loss, lr, throughput, eval
  metrics), ``train_log.png`` (their plot), ``run_config.yaml`` (how the run was made),
  ``best/`` (the best model so far, written with `peftkit.save`, with a model card README.md),
  ``checkpoints/step-N/`` (``accelerator.save_state`` + ``trainer_state.json``, each renamed
  into place once complete), ``metrics.json`` (final test metrics).
- One run per output directory (`peftkit.rundir`): a lock refuses a second run while one
  trains; an earlier run's outputs are never trained over unless ``resume_from_checkpoint``
  continues it (same settings, model and data, else refused naming what differs) or
  ``overwrite=True`` replaces it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

SCHEDULERS = ("linear", "cosine")
PRECISIONS = ("no", "bf16", "fp16", "auto")
# None: what `accelerate launch` configured, else "no". "auto" (bf16 where the machine multiplies it
# natively, `peftkit.precision.bf16_pays`) becomes the default once measured to keep accuracy over seeds.
DEFAULT_MIXED_PRECISION = None
STATE_FILE = "trainer_state.json"
BEST_STATE_FILE = "best_trainable.safetensors"
DEFAULT_EPOCHS = 3
CHANCE_MARGIN = 0.97  # a validation loss above 97% of the label entropy: learned (next to) nothing


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
    ``mixed_precision=None`` keeps what ``accelerate launch`` configured (else "no"); "bf16" works on
    GPUs and on CPUs with native bfloat16 (AVX512-BF16 / AMX), "auto" picks it where the machine has it
    (`peftkit.precision`); parameters and optimizer state stay float32 either way.
    ``compile=True`` runs the training forward through ``torch.compile`` (`peftkit.compiling`), falling
    back to eager with a warning where compiling fails.

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
    device, cpu, gradient_checkpointing, compile), and in model, strategy, options, task and data.

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
        for name in ("max_steps", "eval_steps", "save_steps", "eval_batch_size", "early_stopping_patience", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise bad(name, "must be a positive integer, or None to leave it off.")
        if self.epochs is not None and self.epochs < 1 and not self.max_steps:
            raise bad("epochs", "must be at least 1 (or set max_steps; None picks it from the data size).")
        if int(self.min_steps) < 0:
            raise bad("min_steps", "must be 0 or more.")
        if self.overwrite and self.resume_from_checkpoint:
            raise bad("overwrite", "and resume_from_checkpoint contradict each other: resume the run in output_dir, "
                                   "or overwrite it, not both.")
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
            raise bad("report_to", f"unknown tracker(s) {', '.join(unknown)}: choose from {', '.join(LoggerType.list())} "
                      '(comma-separated for several), or None / "none".')
        if self.head_lr is not None and not self.head_lr > 0:
            raise bad("head_lr", "must be a positive number, or None for the same rate as lr.")
        if self.device not in (None, "auto", "cpu", "cuda"):
            raise bad("device", 'choose "cpu", "cuda" or None (automatic).')
        self._check_adversarial_and_teacher(bad)

    def _check_adversarial_and_teacher(self, bad) -> None:
        from .adversarial import METHODS

        if self.adversarial in ("none", ""):
            self.adversarial = None
        if self.adversarial is not None and self.adversarial not in METHODS:
            raise bad("adversarial", f"choose one of {', '.join(METHODS)}, or None to train without it.")
        if not float(self.adv_epsilon) > 0:
            raise bad("adv_epsilon", "must be a positive number (the L2 radius of the perturbation per example).")
        if int(self.adv_steps) < 1:
            raise bad("adv_steps", "must be a positive integer (the ascent steps of pgd / freelb).")
        if self.adv_alpha is not None and not float(self.adv_alpha) > 0:
            raise bad("adv_alpha", "must be a positive number, or None for adv_epsilon / adv_steps.")
        if not 0 <= float(self.distill_alpha) <= 1:
            raise bad("distill_alpha", "must be in [0, 1] (the weight of the teacher's soft targets).")
        if not float(self.distill_temperature) > 0:
            raise bad("distill_temperature", "must be a positive number.")
        if isinstance(self.teacher, nn.Module):
            from .distill import TeacherRef

            self.teacher = TeacherRef(self.teacher)  # never deep-copied with the config
        elif self.teacher in ("", "none"):
            self.teacher = None
        elif self.teacher is not None and not isinstance(self.teacher, (str, os.PathLike)) and not hasattr(self.teacher, "model"):
            raise bad("teacher", "give a model object, a model directory or hub id, or a peftkit checkpoint.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (a YAML section), rejecting unknown keys with the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown training option(s) {', '.join(unknown)}. Valid options: {', '.join(sorted(known))}.")
        return cls(**values)


@dataclass
class TrainResult:
    """``metrics``: final metrics on ``split`` (test when the data has one); ``history``: one row
    per evaluation; ``best_checkpoint``: directory of the best model (None without evaluation);
    ``final_checkpoint``: the model the metrics were computed with; ``log``: every logged row."""

    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    final_checkpoint: Path | None = None
    split: str = "test"
    log: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- device checks


def check_device(config: TrainConfig) -> str:
    """Refuse, with the fix, a device or mixed precision this machine cannot give; the mixed precision
    the run gets ("auto" resolved, `peftkit.precision.resolve_mixed_precision`)."""
    use_cpu = config.cpu or config.device == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        raise RuntimeError(
            f"device='cuda' was asked for, but no CUDA GPU is visible to torch {torch.__version__} "
            "(torch.cuda.is_available() is False). Train on the CPU (device='cpu', or --cpu on the "
            "command line), or run on a machine with an NVIDIA GPU and a CUDA build of torch."
        )
    from .precision import resolve_mixed_precision

    return resolve_mixed_precision(config.mixed_precision, on_cpu=use_cpu or not has_cuda)


def fresh_accelerator_state() -> None:
    """Forget Accelerate's process-wide settings (outside a distributed launch): several train() or
    eval calls in one Python process may ask for different ones, e.g. another mixed precision."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if not (PartialState._shared_state and PartialState().use_distributed):
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    precision = check_device(config)
    fresh_accelerator_state()
    log_with = _available_trackers(config.report_to) or None
    # torchrun / `accelerate launch --multi_gpu` on a machine without a GPU: run the processes on
    # the CPU (gloo) instead of falling back silently to one process.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cpu = config.cpu or config.device == "cpu" or (world_size > 1 and not torch.cuda.is_available())
    _warn_ignored_processes()
    return Accelerator(
        mixed_precision=precision,
        cpu=use_cpu,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=log_with,
        project_dir=config.output_dir,
    )


def tracker_names(report_to: str | list[str] | None) -> list[str]:
    """``report_to`` as a list of Accelerate tracker names ("wandb,tensorboard" -> both; None / "none" -> [])."""
    names = report_to.split(",") if isinstance(report_to, str) else list(report_to or [])
    return [n.strip() for n in names if n.strip() and n.strip() != "none"]


def _available_trackers(report_to: str | list[str] | None) -> list[str]:
    """The trackers to log with; a tracker whose package is missing is refused with its install command
    (Accelerate itself would drop it silently)."""
    from accelerate.tracking import get_available_trackers

    names, available = tracker_names(report_to), [str(t) for t in get_available_trackers()]
    if "all" in names:
        if not available:
            raise RuntimeError("report_to='all' found no experiment tracker installed: pip install tensorboard "
                               "(or wandb, mlflow, ... any tracker Accelerate supports).")
        return available
    missing = [n for n in names if n not in available]
    if missing:
        raise RuntimeError(f"report_to={','.join(missing)!r} needs the {' and '.join(missing)} package"
                           f"{'s' if len(missing) > 1 else ''}: pip install {' '.join(missing)}")
    return names


def _warn_ignored_processes() -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process (Accelerate runs several CPU
    processes only through mpirun); say so rather than let the user believe N are training."""
    if "WORLD_SIZE" in os.environ or os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return
    asked = [b for a, b in zip(parent, parent[1:] + [""], strict=True) if a in ("--num_processes", "--num-processes")]
    asked += [a.split("=", 1)[1] for a in parent if a.startswith(("--num_processes=", "--num-processes="))]
    for value in asked:
        if value.isdigit() and int(value) > 1:
            warnings.warn(
                "accelerate launch --cpu ignores --num_processes without --mpirun_hostfile: this is ONE "
                "process. For several CPU processes run `accelerate launch --multi_gpu --num_processes N "
                "<script> --cpu` (or torchrun --nproc_per_node N <script> --cpu); they use gloo on the CPU.",
                stacklevel=3,
            )
            return


# --------------------------------------------------------------------------- batching


class GlobalBatchSampler:
    """Global batches (of ``batch_size`` = per-process size x processes), deterministic per epoch.

    Training: a seeded permutation; with ``group_by_length``, chunks of 50 batches are sorted by
    length so that each batch holds similar lengths (less padding), the batch order is then
    shuffled and the longest batch goes first (an out-of-memory shows at once).
    Evaluation (``shuffle=False``): sorted by length, longest first. Accelerate splits each
    global batch across processes.
    """

    def __init__(self, lengths: list[int], batch_size: int, *, shuffle: bool, group_by_length: bool = True, seed: int = 0):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.drop_last = False
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        """Set the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def _batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i : i + size].tolist() for i in range(0, n, size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if not self.group_by_length:
            return [order[i : i + size].tolist() for i in range(0, n, size)]
        chunk = size * 50
        grouped = np.concatenate(
            [c[np.argsort(-self.lengths[c], kind="stable")] for c in np.array_split(order, range(chunk, n, chunk))]
        )
        batches = [grouped[i : i + size].tolist() for i in range(0, n, size)]
        full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < size else (batches, [])
        full = [full[i] for i in rng.permutation(len(full))]
        if full:
            longest = max(range(len(full)), key=lambda i: self.lengths[full[i]].max())
            full.insert(0, full.pop(longest))
        return full + last

    def __iter__(self):
        yield from self._batches()


def _input_lengths(dataset) -> list[int]:
    column = "input_ids" if "input_ids" in dataset.column_names else dataset.column_names[0]
    return [len(x) if hasattr(x, "__len__") else 1 for x in dataset[column]]


def _loader(dataset, collate, batch_size: int, *, shuffle: bool, config: TrainConfig) -> DataLoader:
    sampler = GlobalBatchSampler(
        _input_lengths(dataset), batch_size, shuffle=shuffle, group_by_length=config.group_by_length, seed=config.seed
    )
    # A private generator: making an iterator must not draw from the global RNG (dropout's), so
    # a resumed run sees the same random numbers as an uninterrupted one.
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=generator)


# --------------------------------------------------------------------------- optimizer


def _no_decay(module: nn.Module, param_name: str, param: torch.Tensor) -> bool:
    return param_name.endswith("bias") or param.ndim < 2 or "norm" in type(module).__name__.lower()


def _head_parameters(model: nn.Module) -> set[int]:
    """ids of the trainable parameters of the task head (PEFT's ``modules_to_save`` copy included)."""
    from .introspect import head_module_names

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        heads = head_module_names(base)
    except ValueError:
        heads = []
    if not heads:
        raise ValueError(
            f"head_lr was given, but {type(base).__name__} has no task head created fresh for the task "
            "(only classification and token-classification models have one). Drop head_lr (--head-lr)."
        )
    return {id(p) for name in heads for p in base.get_submodule(name).parameters() if p.requires_grad}


def parameter_groups(
    model: nn.Module, weight_decay: float, *, lr: float | None = None, head_lr: float | None = None
) -> list[dict[str, Any]]:
    """Trainable parameters as AdamW groups: weight decay on weights; none on biases, norms.

    Each group is named (``"decay"``, ``"no_decay"``, and with ``head_lr`` ``"head_decay"``,
    ``"head_no_decay"``) and carries its own ``lr`` when ``lr`` is given: the task head's
    parameters get ``head_lr``, the others ``lr``. A strategy that needs groups of its own
    (LoRA+) adjusts these in its ``param_groups`` hook, which the training loop calls.
    """
    if head_lr is not None and lr is None:
        raise ValueError("parameter_groups: head_lr needs lr, the rate of the other parameters.")
    head = _head_parameters(model) if head_lr is not None else set()
    groups: dict[str, list[torch.Tensor]] = {"decay": [], "no_decay": [], "head_decay": [], "head_no_decay": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            key = "no_decay" if _no_decay(module, name, param) else "decay"
            groups[f"head_{key}" if id(param) in head else key].append(param)
    if not seen:
        raise ValueError(
            "The model has no trainable parameters. Wrap it first, e.g. peftkit.wrap(model, 'lora'), "
            "or pass a model whose parameters require grad."
        )
    out = []
    for key, params in groups.items():
        if key.startswith("head_") and not params:
            continue
        group = {"name": key, "params": params, "weight_decay": 0.0 if key.endswith("no_decay") else weight_decay}
        if lr is not None:
            group["lr"] = head_lr if key.startswith("head_") else lr
        out.append(group)
    return out


def resolve_learning_rate(model: nn.Module, config: TrainConfig) -> float:
    """The configured lr, else the wrapped strategy's default (full fine-tuning's for a plain model)."""
    if config.lr is not None:
        return float(config.lr)
    from .strategies import default_learning_rate, strategy_of, wrap_info

    info = wrap_info(model)
    return default_learning_rate(info.strategy.split(":")[0]) if info else strategy_of(model).default_lr


def _enable_checkpointing(model: nn.Module) -> None:
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    method = getattr(target, "activation_checkpointing_enable", None) or getattr(target, "gradient_checkpointing_enable", None)
    if method is None:
        raise ValueError(f"{type(target).__name__} does not support gradient checkpointing; set gradient_checkpointing=False.")
    method()
    if getattr(target.config, "use_cache", None):
        target.config.use_cache = False


def _trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- logging


class RunLog:
    """Rows of loss / lr / throughput / metrics: train_log.jsonl (appended), train_log.csv, trackers."""

    def __init__(self, output_dir: Path, accelerator, resumed: bool):
        self.rows: list[dict[str, Any]] = []
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.jsonl = output_dir / "train_log.jsonl"
        self.csv = output_dir / "train_log.csv"
        if self.main and not resumed:
            self.jsonl.unlink(missing_ok=True)

    def restore(self, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)
        if self.main:  # drop rows written after the checkpoint by the run that was killed
            self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.main:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self._write_csv()
        if self.accelerator.trackers:
            scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(scalars, step=row["step"])

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k, v in row.items() if k not in columns and not isinstance(v, (dict, list))]
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)


# --------------------------------------------------------------------------- evaluation


def _concat_padded(parts: list[np.ndarray]) -> np.ndarray:
    if parts[0].ndim < 2:
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    padded = [np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2), constant_values=-100) for p in parts]
    return np.concatenate(padded)


def evaluate(model: nn.Module, dataloader, task, accelerator) -> dict[str, float]:
    """Run the task's eval step over a prepared dataloader; metrics over all processes' samples."""
    was_training = model.training
    model.eval()
    collected: dict[str, list[np.ndarray]] = {}
    for batch in dataloader:
        with torch.no_grad():
            out = task.eval_step(model, batch)
        out = {k: accelerator.pad_across_processes(v, dim=1, pad_index=-100) if v.ndim >= 2 else v for k, v in out.items()}
        out = accelerator.gather_for_metrics(out)
        for key, value in out.items():
            collected.setdefault(key, []).append(value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy())
    model.train(was_training)
    gathered = {k: _concat_padded(v) for k, v in collected.items()}
    return {k: float(v) for k, v in task.compute_metrics(gathered).items()}


# --------------------------------------------------------------------------- train


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)


def _resolve_task(task, model: nn.Module):
    if task is None:
        from .introspect import infer_task
        from .strategies import wrap_info

        info = wrap_info(model)
        task = info.task if info and info.task else infer_task(model)
    if isinstance(task, str):
        from .tasks import get_task

        return get_task(task)
    return task


def _latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def _check_checkpoint_fits(folder: Path, model: nn.Module) -> None:
    """Refuse a checkpoint written for other trainable parameters (names or shapes)."""
    from safetensors import safe_open

    file = folder / "model.safetensors"
    if not file.is_file():
        return
    expected = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    with safe_open(str(file), "pt") as f:
        saved = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    if saved != expected:
        differ = sorted(k for k in saved.keys() & expected.keys() if saved[k] != expected[k])[:2]
        raise ValueError(
            f"Checkpoint {folder} does not fit this model: it was written for other trainable parameters "
            f"(only in the checkpoint: {sorted(saved.keys() - expected.keys())[:2]}, only in the model: "
            f"{sorted(expected.keys() - saved.keys())[:2]}, other shapes: {differ}). Resume with the same "
            "model, strategy and options as the run that wrote it."
        )


def _save_model(model: nn.Module, tokenizer, path: Path) -> None:
    from .checkpoint import atomic_directory, save
    from .strategies import wrap_info

    if wrap_info(model) is not None:
        save(model, path, tokenizer=tokenizer)
        return
    with atomic_directory(path) as tmp:  # a plain transformers model, trained in full
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def target_metric(config: TrainConfig, task) -> tuple[str, bool]:
    """The metric that picks the best model, and whether greater is better (a `peftkit.tasks` Task)."""
    metric = config.metric_for_best or task.main_metric
    greater = config.greater_is_better
    if greater is None:
        greater = task.greater_is_better if metric == task.main_metric else not metric.endswith("loss")
    return metric, greater


def train(model: nn.Module, tokenizer, data, config: TrainConfig, task=None, callbacks=(), *,
          run_info: dict[str, Any] | None = None) -> TrainResult:
    """Fine-tune ``model`` on ``data`` (a DatasetDict from `peftkit.data.load_data`).

    ``task`` is a task name or a `peftkit.tasks` Task; by default the model's own task. Whatever
    parameters require grad are trained; the strategy that chose them does not matter here.
    ``callbacks``: objects with ``on_evaluate(step, metrics) -> bool``, called (on every process)
    after each validation evaluation with the task's metrics; True stops training there, and
    an exception they raise ends the run (a hyperparameter search prunes a trial this way).
    ``run_info``: what the caller knows beyond these objects, for ``run_config.yaml`` and the
    model card: ``command`` (default: this process's command line), ``model`` (path or hub id),
    ``quantization``, ``data`` (``{"train": file, ...}``; files are recorded with their sha256).
    """
    task = _resolve_task(task, model)
    with _claim_output_dir(config):
        run = _Run(model, tokenizer, data, config, task, callbacks, run_info)
        try:
            run.loop()
            return run.finish()
        finally:
            run.adversary.remove()


@contextmanager
def _claim_output_dir(config: TrainConfig):
    """Lock the output directory and make it ready (main process; see `peftkit.rundir`)."""
    from .rundir import output_lock, prepare_output_dir

    if int(os.environ.get("RANK", "0")) != 0:  # the other processes of a launch share rank 0's claim
        yield
        return
    with output_lock(config.output_dir):
        for note in prepare_output_dir(config.output_dir, resume=bool(config.resume_from_checkpoint), overwrite=config.overwrite):
            print(f"peftkit: {note}")
        yield


class _Run:
    """One training run: set up by __init__, trained by `loop`, evaluated on test by `finish`."""

    def __init__(self, model: nn.Module, tokenizer, data, config: TrainConfig, task, callbacks=(),
                 run_info: dict[str, Any] | None = None):
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from .introspect import fit_max_length
        from .rundir import run_identity

        # Within the model's position limit; the caller's config is left as it was given.
        config = replace(config, max_length=fit_max_length(model, tokenizer, config.max_length))
        self.config, self.task, self.tokenizer, self.data = config, task, tokenizer, data
        self.callbacks = list(callbacks or ())
        self.out_dir = Path(config.output_dir)
        self.identity = run_identity(config, model, task, data)
        resume_dir = self._resume_dir()
        self.accelerator = accelerator = _make_accelerator(config)
        set_seed(config.seed)
        if accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if "train" not in data or len(data["train"]) == 0:
            raise ValueError(f"The data has no training examples (splits: { {k: len(v) for k, v in data.items()} }).")
        with accelerator.main_process_first():
            prepared = task.prepare(data, tokenizer, max_length=config.max_length)
        collate, world = task.collator(tokenizer), accelerator.num_processes
        eval_size = (config.eval_batch_size or 2 * config.batch_size) * world
        train_dl = _loader(prepared["train"], collate, config.batch_size * world, shuffle=True, config=config)
        self.sampler = train_dl.batch_sampler
        loaders = {
            split: _loader(prepared[split], collate, eval_size, shuffle=False, config=config)
            for split in ("validation", "test")
            if split in prepared and len(prepared[split])
        }
        if config.gradient_checkpointing:
            _enable_checkpointing(model)
        self.lr = resolve_learning_rate(model, config)
        from .strategies import strategy_of

        self.strategy = strategy_of(model)  # its hooks: the loop never asks which strategy it is
        groups = parameter_groups(model, config.weight_decay, lr=self.lr, head_lr=config.head_lr)
        optimizer = torch.optim.AdamW(self.strategy.param_groups(model, groups, self.lr), lr=self.lr)
        steps_per_epoch = math.ceil(len(train_dl) / config.gradient_accumulation_steps)
        self.epochs = resolve_epochs(config, steps_per_epoch)
        self.total_steps = config.max_steps or steps_per_epoch * self.epochs
        self.strategy.on_train_start(model, self.total_steps)
        warmup = int(config.warmup_ratio * self.total_steps)
        scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps)
        prepared_objects = accelerator.prepare(model, optimizer, train_dl, scheduler, *loaders.values())
        self.model, self.optimizer, self.train_dl, self.scheduler = prepared_objects[:4]
        self.loaders = dict(zip(loaders, prepared_objects[4:], strict=True))
        self.raw_model = accelerator.unwrap_model(self.model)
        from .compiling import CompiledForward

        self.forward = CompiledForward(self.model, config.compile)  # the training forward, compiled if asked
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.loss_of = _objective(self.raw_model, config, task, accelerator)
        from .adversarial import Adversary

        self.adversary = Adversary(self.model, accelerator, config.adversarial, config.adv_epsilon, config.adv_steps,
                                   config.adv_alpha)
        trainable = _trainable_names(self.model)

        def keep_trainable(models, weights, _dir):  # checkpoints hold only what trains
            for state in weights:
                for key in [k for k in state if k not in trainable]:
                    del state[key]

        accelerator.register_save_state_pre_hook(keep_trainable)
        self.metric, self.greater = target_metric(config, task)
        self.state, self.best_weights = _State(), None
        if resume_dir is not None:
            self._resume(resume_dir)
        self.log = RunLog(self.out_dir, accelerator, resumed=resume_dir is not None)
        if resume_dir is not None:
            self.log.restore(self.state.log)
        if tracker_names(config.report_to):
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in asdict(config).items()}
            accelerator.init_trackers("peftkit", config=flat)
        chance = getattr(task, "chance_loss", None)  # a task of one's own may not have it
        self.chance = chance(prepared["train"]) if chance else None
        self.record = self._record(model, run_info or {}, resume_dir, warmup)
        if accelerator.is_main_process:
            from .runreport import write_run_config

            write_run_config(self.out_dir / "run_config.yaml", self.record)
            if resume_dir is not None:
                print(f"peftkit: resumed from checkpoint {resume_dir} (step {self.state.step} of {self.total_steps}, "
                      f"epoch {self._epoch_position():g})")

    def _record(self, model: nn.Module, run_info: dict[str, Any], resume_dir: Path | None, warmup: int) -> dict[str, Any]:
        """What run_config.yaml and the model cards say about this run."""
        from .runreport import command_line, data_files, library_versions, timestamp
        from .strategies import strategy_of, wrap_info

        info = wrap_info(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        identity = {k: v for k, v in self.identity.items() if k not in ("config", "data", "task")}
        resolved = {
            "epochs_resolved": None if self.config.max_steps else self.epochs, "total_steps": self.total_steps,
            "warmup_steps": warmup, "lr_resolved": self.lr, "metric_for_best_resolved": self.metric,
            "greater_is_better_resolved": self.greater, "num_processes": self.accelerator.num_processes,
            "device_resolved": str(self.accelerator.device), "mixed_precision_resolved": str(self.accelerator.mixed_precision),
        }
        return json.loads(json.dumps({
            "command": run_info.get("command") or command_line(),
            "started": timestamp(),
            "resumed_from": str(resume_dir) if resume_dir is not None else None,
            "versions": library_versions(),
            "model": {**identity, "path": run_info.get("model"), "format": info.format if info else strategy_of(model).checkpoint_format,
                      "quantization": run_info.get("quantization"), "trainable_parameters": trainable,
                      "total_parameters": sum(p.numel() for p in model.parameters())},
            "task": self.identity["task"],
            "data": {"files": data_files(run_info.get("data")), "splits": self.identity["data"]},
            "train": {**asdict(self.config), **resolved},
        }, default=str))

    # ---- resuming

    def _resume_dir(self) -> Path | None:
        asked = self.config.resume_from_checkpoint
        if not asked:
            return None
        folder = _latest_checkpoint(self.out_dir) if asked is True else Path(asked)
        if folder is None or not (folder / STATE_FILE).is_file():
            raise FileNotFoundError(
                f"No complete checkpoint at {folder or self.out_dir / 'checkpoints'} to resume from (a complete one "
                f"holds {STATE_FILE}). Train with save_steps set to write checkpoints, or drop resume_from_checkpoint."
            )
        from .rundir import check_resume_identity

        check_resume_identity(folder, json.loads((folder / STATE_FILE).read_text()).get("run"), self.identity)
        return folder

    def _resume(self, folder: Path) -> None:
        """Model, optimizer, scheduler, RNG (accelerate) + step, data position, best, log (ours)."""
        from accelerate.utils import DistributedType
        from safetensors.torch import load_file

        # Plain and DDP checkpoints hold only the trainable tensors; DeepSpeed and FSDP save their own way.
        own_format = self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM)
        if not own_format:
            _check_checkpoint_fits(folder, self.model)
        self.accelerator.load_state(str(folder), **({} if own_format else {"strict": False}))
        self.state = _State(**json.loads((folder / STATE_FILE).read_text())["state"])
        if (folder / BEST_STATE_FILE).is_file():
            self.best_weights = load_file(str(folder / BEST_STATE_FILE))

    # ---- the loop

    def _epoch_position(self) -> float:
        return round(self.state.epoch + self.state.batches_in_epoch / len(self.train_dl), 4)

    def _step(self, batch) -> float:
        """Forward, backward and (when the accumulation is complete) an optimizer step."""
        accelerator, state = self.accelerator, self.state
        with accelerator.accumulate(self.model):
            with self.adversary.clean_pass():  # peftkit.adversarial; a no-op without adversarial training
                loss = self.loss_of(self.forward, batch)  # peftkit.distill: the task loss, plus a teacher's
                mean_loss = accelerator.reduce(loss.detach().float(), "mean").item()
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"The loss became {mean_loss} at step {state.step + 1} (epoch {state.epoch + 1}, lr "
                        f"{self.scheduler.get_last_lr()[0]:.3g}): training diverged. Lower the learning rate "
                        f"(e.g. lr={self.lr / 10:g}), keep max_grad_norm on, or train with mixed_precision='no'."
                    )
                accelerator.backward(loss)
            self.adversary.attack(lambda: self.loss_of(self.forward, batch))
            if accelerator.sync_gradients and self.config.max_grad_norm:
                accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            if accelerator.sync_gradients:  # a complete optimizer step, its gradients not yet zeroed
                self.strategy.on_step(self.raw_model, state.step + 1, self.total_steps)
            self.optimizer.zero_grad()
        return mean_loss

    def loop(self) -> None:
        from tqdm.auto import tqdm

        config, state, accelerator = self.config, self.state, self.accelerator
        show = config.progress and accelerator.is_local_main_process
        progress = tqdm(total=self.total_steps, initial=state.step, disable=not show, desc="train")
        window = _Window()
        stop = state.step >= self.total_steps
        self.model.train()
        while not stop:
            self.sampler.use_epoch(state.epoch)
            skip = state.batches_in_epoch
            for batch in accelerator.skip_first_batches(self.train_dl, skip) if skip else self.train_dl:
                window.add(self._step(batch), next(iter(batch.values())).shape[0] * accelerator.num_processes)
                state.batches_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                progress.update(1)
                if state.step % config.log_every == 0 or state.step == self.total_steps:
                    row = {"step": state.step, "epoch": self._epoch_position(), **window.take(), "lr": self.scheduler.get_last_lr()[0]}
                    self.log.add(row)
                    progress.set_postfix(loss=f"{row['loss']:.4f}")
                stop = state.step >= self.total_steps
                with window.paused():  # evaluation and checkpoints do not count in throughput
                    if "validation" in self.loaders and config.eval_steps and state.step % config.eval_steps == 0:
                        stop = self.evaluate_and_keep_best() or stop
                    if config.save_steps and state.step % config.save_steps == 0 and not stop:
                        self.save_checkpoint()
                if stop:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
                if "validation" in self.loaders and not config.eval_steps:
                    stop = self.evaluate_and_keep_best()
                stop = stop or (not config.max_steps and state.epoch >= self.epochs)
        progress.close()
        if "validation" in self.loaders and (not state.history or state.history[-1]["step"] != state.step):
            self.evaluate_and_keep_best()  # the model training ended with competes for best too

    # ---- evaluation, best model, checkpoints

    def evaluate_and_keep_best(self) -> bool:
        """Evaluate on validation, keep the best; True when early stopping says stop."""
        state, accelerator = self.state, self.accelerator
        metrics = evaluate(self.model, self.loaders["validation"], self.task, accelerator)
        if self.metric not in metrics:
            raise KeyError(f"metric_for_best={self.metric!r} is not among the task's metrics: {', '.join(metrics)}.")
        row = {"step": state.step, "epoch": self._epoch_position()}
        row.update({k if k.startswith("eval_") else f"eval_{k}": v for k, v in metrics.items()})
        value, best = metrics[self.metric], state.best_metric
        if best is None or (value > best if self.greater else value < best):
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
            self.best_weights = {n: p.detach().cpu().clone() for n, p in self.raw_model.named_parameters() if p.requires_grad}
            if accelerator.is_main_process:
                _save_model(self.raw_model, self.tokenizer, self.out_dir / "best")
                self._write_card(self.out_dir / "best")
        else:
            state.bad_evals += 1
        sample = _generated_sample(self.task, self.raw_model, self.tokenizer, self.data, self.config, accelerator)
        if sample:
            row["sample"] = sample
        state.history.append(row)
        self.log.add(row)
        accelerator.wait_for_everyone()
        asked = [bool(c.on_evaluate(state.step, dict(metrics))) for c in self.callbacks if hasattr(c, "on_evaluate")]
        patience = self.config.early_stopping_patience
        return bool(patience and state.bad_evals >= patience) or any(asked)

    def save_checkpoint(self) -> None:
        """accelerator.save_state into a temp dir, plus our state; renamed into place when complete."""
        from safetensors.torch import save_file

        accelerator, state, limit = self.accelerator, self.state, self.config.save_total_limit
        final = self.out_dir / "checkpoints" / f"step-{state.step}"
        tmp = final.with_name(f".tmp-step-{state.step}")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
            if accelerator.is_main_process:
                state.log = self.log.rows
                if self.best_weights is not None:
                    save_file(self.best_weights, str(tmp / BEST_STATE_FILE))
                saved = {"state": asdict(state), "config": asdict(self.config), "run": self.identity}
                (tmp / STATE_FILE).write_text(json.dumps(saved, indent=1, default=str))
        except BaseException:  # a full disk, an interrupt: no half-written checkpoint stays behind
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            older = sorted((p for p in final.parent.glob("step-*") if p != final), key=lambda p: int(p.name.split("-")[1]))
            for folder in older[: max(0, len(older) - limit + 1)] if limit else []:
                shutil.rmtree(folder, ignore_errors=True)
        accelerator.wait_for_everyone()

    def finish(self) -> TrainResult:
        """Back to the best weights (if kept), final metrics on test (else validation), outputs."""
        config, accelerator, out_dir = self.config, self.accelerator, self.out_dir
        if self.best_weights is not None and config.load_best_at_end:
            params = dict(self.raw_model.named_parameters())
            with torch.no_grad():
                for name, value in self.best_weights.items():
                    params[name].copy_(value.to(params[name].device))
            self.strategy.on_weights_restored(self.raw_model)
        split = "test" if "test" in self.loaders else "validation"
        metrics = evaluate(self.model, self.loaders[split], self.task, accelerator) if split in self.loaders else {}
        best_dir = out_dir / "best" if self.best_weights is not None else None
        final_dir = best_dir if (best_dir is not None and config.load_best_at_end) else out_dir / "final"
        if accelerator.is_main_process:
            from .runreport import plot_log

            if final_dir != best_dir:
                _save_model(self.raw_model, self.tokenizer, final_dir)
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            if split != "test":
                print(f"peftkit: the data has no test split; final metrics are on the validation split: {metrics}")
            if best_dir is not None:
                self._write_card(best_dir, metrics if final_dir == best_dir else None, split)
            if final_dir != best_dir:
                self._write_card(final_dir, metrics, split)
            plot_log(self.log.rows, out_dir / "train_log.png")
        self._warn_if_chance()
        if tracker_names(config.report_to):
            accelerator.end_training()
        accelerator.wait_for_everyone()
        return TrainResult(metrics, self.state.history, best_dir, final_dir, split, self.log.rows)

    # ---- what the output tells

    def _write_card(self, folder: Path, metrics: dict[str, float] | None = None, split: str = "test") -> None:
        from .runreport import write_model_card

        state = self.state
        best = ({self.metric: state.best_metric, "step": state.best_step} if state.best_metric is not None else None)
        write_model_card(folder, self.record, best=best, final=metrics, split=split)

    def _warn_if_chance(self) -> None:
        """Warn when validation never beat predicting the label frequencies (`CHANCE_MARGIN`)."""
        losses = [r["eval_loss"] for r in self.state.history if isinstance(r.get("eval_loss"), (int, float))]
        if self.chance is None or not losses or min(losses) < CHANCE_MARGIN * self.chance:
            return
        message = (
            f"The validation loss never went below {min(losses):.4f}, while predicting the training label "
            f"frequencies scores {self.chance:.4f} (their entropy): the model learned next to nothing in "
            f"{self.total_steps} steps at lr {self.lr:g}. Train longer (epochs, max_steps or min_steps), raise the "
            "learning rate (lr), or check that the labels match the texts."
        )
        if self.accelerator.is_main_process:
            warnings.warn(message, stacklevel=4)


def _objective(model: nn.Module, config: TrainConfig, task, accelerator):
    """``loss_of(model, batch)``: the task loss, mixed with the teacher's soft targets when one is given."""
    from .distill import Distiller, check_compatible, load_teacher

    teacher = None
    if config.teacher is not None:
        teacher = load_teacher(config.teacher, getattr(task, "name", "classification"))
        check_compatible(model, teacher, task)
    return Distiller(teacher, config.distill_alpha, config.distill_temperature, task, accelerator)


def resolve_epochs(config: TrainConfig, steps_per_epoch: int) -> int:
    """``config.epochs``, or (None) 3 epochs, more when needed to reach ``config.min_steps`` steps."""
    if config.epochs is not None:
        return int(config.epochs)
    return max(DEFAULT_EPOCHS, math.ceil(config.min_steps / max(1, steps_per_epoch)))


class _Window:
    """Mean loss and samples/s over the steps since the last log row, pauses excluded."""

    def __init__(self):
        self.loss, self.batches, self.samples, self.start = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: float, samples: int) -> None:
        self.loss, self.batches, self.samples = self.loss + loss, self.batches + 1, self.samples + samples

    def take(self) -> dict[str, float | None]:
        seconds = time.perf_counter() - self.start
        row = {"loss": self.loss / max(1, self.batches), "samples_per_second": round(self.samples / seconds, 2) if seconds > 0 else None}
        self.__init__()
        return row

    @contextmanager
    def paused(self):
        began = time.perf_counter()
        yield
        self.start += time.perf_counter() - began


def _generated_sample(task, model, tokenizer, data, config: TrainConfig, accelerator) -> list[dict[str, str]] | None:
    """For generative tasks: the model's answer to the first validation prompt(s), for the log."""
    n = config.sample_generations
    if not n or not hasattr(task, "generate") or not accelerator.is_main_process:
        return None
    split = data.get("validation")
    if split is None or "prompt" not in split.column_names:
        return None
    rows = split.select(range(min(n, len(split))))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = task.generate(model, tokenizer, rows["prompt"], max_new_tokens=32)
    model.train(was_training)
    references = rows["response"] if "response" in rows.column_names else [None] * len(outputs)
    return [{"prompt": p, "generated": g, "reference": r} for p, g, r in zip(rows["prompt"], outputs, references, strict=True)]
