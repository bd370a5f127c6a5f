"""`train`: the public entry. It resolves what depends on the strategy and on the checkpoint
format (the learning rate, the strategy's hooks, how a trained model is saved, the run's identity,
the teacher), claims the output directory, and hands the rest to the loop (`peftkit.training.loop`),
which never asks which strategy it trains."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from .config import TrainConfig, TrainResult
from .loop import RunParts, _Run


def train(
    model: nn.Module,
    tokenizer,
    data,
    config: TrainConfig,
    task=None,
    callbacks=(),
    *,
    run_info: dict[str, Any] | None = None,
) -> TrainResult:
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
    from ..dropout import faster_dropout
    from ..introspect import fit_max_length
    from ..rundir import run_identity
    from ..strategies import strategy_of, wrap_info

    task = _resolve_task(task, model)
    with _claim_output_dir(config):
        # Within the model's position limit; the caller's config is left as it was given.
        config = replace(config, max_length=fit_max_length(model, tokenizer, config.max_length))
        info, strategy = wrap_info(model), strategy_of(model)
        parts = RunParts(
            lr=resolve_learning_rate(model, config),
            hooks=strategy,
            save=save_model,
            model_format=info.format if info else strategy.checkpoint_format,
            identity=run_identity(config, model, task, data),
            teacher=_teacher(model, config, task),
        )
        with faster_dropout(model, config.fast_dropout):  # the caller's model gets its own modules back
            run = _Run(model, tokenizer, data, config, task, parts, callbacks, run_info)
            try:
                run.loop()
                return run.finish()
            finally:
                run.adversary.remove()


def resolve_learning_rate(model: nn.Module, config: TrainConfig) -> float:
    """The configured lr, else the wrapped strategy's default (full fine-tuning's for a plain model)."""
    if config.lr is not None:
        return float(config.lr)
    from ..strategies import default_learning_rate, strategy_of, wrap_info

    info = wrap_info(model)
    return default_learning_rate(info.strategy.split(":")[0]) if info else strategy_of(model).default_lr


def save_model(model: nn.Module, tokenizer, path: Path) -> None:
    """Write a trained model: `peftkit.save` for a wrapped one, ``save_pretrained`` for a plain one."""
    from ..checkpoint import atomic_directory, save
    from ..strategies import wrap_info

    if wrap_info(model) is not None:
        save(model, path, tokenizer=tokenizer)
        return
    with atomic_directory(path) as tmp:  # a plain transformers model, trained in full
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def _teacher(model: nn.Module, config: TrainConfig, task) -> nn.Module | None:
    """The teacher to distill from (`TrainConfig.teacher` loaded), checked against the student."""
    if config.teacher is None:
        return None
    from ..distill import check_compatible, load_teacher

    teacher = load_teacher(config.teacher, getattr(task, "name", "classification"))
    check_compatible(model, teacher, task)
    return teacher


def _resolve_task(task, model: nn.Module):
    if task is None:
        from ..introspect import infer_task
        from ..strategies import wrap_info

        info = wrap_info(model)
        task = info.task if info and info.task else infer_task(model)
    if isinstance(task, str):
        from ..tasks import get_task

        return get_task(task)
    return task


@contextmanager
def _claim_output_dir(config: TrainConfig):
    """Lock the output directory and make it ready (main process; see `peftkit.rundir`)."""
    from ..rundir import output_lock, prepare_output_dir

    if int(os.environ.get("RANK", "0")) != 0:  # the other processes of a launch share rank 0's claim
        yield
        return
    with output_lock(config.output_dir):
        for note in prepare_output_dir(
            config.output_dir, resume=bool(config.resume_from_checkpoint), overwrite=config.overwrite
        ):
            print(f"peftkit: {note}")
        yield
