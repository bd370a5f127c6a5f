"""What the machine gives a run: the device and mixed precision checks, the Accelerator, its
experiment trackers, and warnings about launches that do not do what they seem to."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .config import TrainConfig, tracker_names


def check_device(config: TrainConfig) -> str:
    """Refuse, with the fix, a device or mixed precision this machine cannot give; the mixed precision
    the run gets ("auto" resolved, `peftkit.precision.resolve_mixed_precision`)."""
    use_cpu = (
        config.cpu
        or config.device == "cpu"
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        raise RuntimeError(
            f"device='cuda' was asked for, but no CUDA GPU is visible to torch {torch.__version__} "
            "(torch.cuda.is_available() is False). Train on the CPU (device='cpu', or --cpu on the "
            "command line), or run on a machine with an NVIDIA GPU and a CUDA build of torch."
        )
    from ..precision import resolve_mixed_precision

    return resolve_mixed_precision(config.mixed_precision, on_cpu=use_cpu or not has_cuda)


def fresh_accelerator_state() -> None:
    """Forget Accelerate's process-wide settings (outside a distributed launch): several train() or
    eval calls in one Python process may ask for different ones, e.g. another mixed precision."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if not (PartialState._shared_state and PartialState().use_distributed):
        AcceleratorState._reset_state()
        GradientState._reset_state()


def make_accelerator(config: TrainConfig):
    """The run's Accelerator: the checked device and mixed precision, accumulation, global batches split
    across processes (``split_batches``), and the trackers of ``report_to``."""
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


def _available_trackers(report_to: str | list[str] | None) -> list[str]:
    """The trackers to log with; a tracker whose package is missing is refused with its install command
    (Accelerate itself would drop it silently)."""
    from accelerate.tracking import get_available_trackers

    names, available = tracker_names(report_to), [str(t) for t in get_available_trackers()]
    if "all" in names:
        if not available:
            raise RuntimeError(
                "report_to='all' found no experiment tracker installed: pip install tensorboard "
                "(or wandb, mlflow, ... any tracker Accelerate supports)."
            )
        return available
    missing = [n for n in names if n not in available]
    if missing:
        raise RuntimeError(
            f"report_to={','.join(missing)!r} needs the {' and '.join(missing)} package"
            f"{'s' if len(missing) > 1 else ''}: pip install {' '.join(missing)}"
        )
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
    asked = [
        b
        for a, b in zip(parent, parent[1:] + [""], strict=True)
        if a in ("--num_processes", "--num-processes")
    ]
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


def enable_checkpointing(model: nn.Module) -> None:
    """Gradient (activation) checkpointing on the base model, under its transformers 5 name or the old one."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    method = getattr(target, "activation_checkpointing_enable", None) or getattr(
        target, "gradient_checkpointing_enable", None
    )
    if method is None:
        raise ValueError(
            f"{type(target).__name__} does not support gradient checkpointing; set gradient_checkpointing=False."
        )
    method()
    if getattr(target.config, "use_cache", None):
        target.config.use_cache = False
