"""The loop: one training run, blind to the strategy and to the task's columns.

`_Run` prepares the data through the task, builds the optimizer and scheduler, trains with
Accelerate, evaluates, keeps the best weights, writes resumable checkpoints and the run's outputs.
What depends on the strategy or on the checkpoint format (the learning rate, the strategy's hooks,
how a trained model is saved, the run's identity, a teacher) arrives in `RunParts`, resolved by
`peftkit.training.run.train`: this module imports neither `peftkit.strategies` nor `peftkit.checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig, TrainingDiverged, TrainResult, resolve_epochs, target_metric, tracker_names
from .environment import enable_checkpointing, make_accelerator
from .evaluation import evaluate
from .optimizer import parameter_groups
from .runlog import RunLog, Window
from .sampling import make_loader

STATE_FILE = "trainer_state.json"
BEST_STATE_FILE = "best_trainable.safetensors"
CHANCE_MARGIN = 0.97  # a validation loss above 97% of the label entropy: learned (next to) nothing


@dataclass
class RunParts:
    """What the loop is given instead of finding it out (`peftkit.training.run.train` resolves it).

    ``lr``: the learning rate (the config's, else the strategy's default). ``hooks``: the strategy's
    hooks, called without asking which strategy it is: ``param_groups(model, groups, lr)``,
    ``on_train_start(model, total_steps)``, ``on_step(model, step, total_steps)``,
    ``on_weights_restored(model)``. ``save(model, tokenizer, path)``: writes a trained model (best/,
    final/); ``model_format``: the format it writes, for run_config.yaml. ``identity``:
    `peftkit.rundir.run_identity` of this run, compared on resume. ``teacher``: the loaded teacher
    model to distill from, or None.
    """

    lr: float
    hooks: Any
    save: Callable[[nn.Module, Any, Path], None]
    model_format: str
    identity: dict[str, Any]
    teacher: nn.Module | None = None


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


def batch_signature(batch) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A batch's tensors' names and shapes, sorted: what its FLOPs depend on (`TrainResult.batch_shapes`)."""
    return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items() if hasattr(v, "shape")))


def _trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


class _Run:
    """One training run: set up by __init__, trained by `loop`, evaluated on test by `finish`."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        data,
        config: TrainConfig,
        task,
        parts: RunParts,
        callbacks=(),
        run_info: dict[str, Any] | None = None,
    ):
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        self.config, self.task, self.tokenizer, self.data = config, task, tokenizer, data
        self.callbacks = list(callbacks or ())
        self.out_dir = Path(config.output_dir)
        self.identity, self.save_model, self.model_format = parts.identity, parts.save, parts.model_format
        resume_dir = self._resume_dir()
        self.accelerator = accelerator = make_accelerator(config)
        set_seed(config.seed)
        if accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if "train" not in data or len(data["train"]) == 0:
            raise ValueError(
                f"The data has no training examples (splits: { {k: len(v) for k, v in data.items()} })."
            )
        with accelerator.main_process_first():
            prepared = task.prepare(data, tokenizer, max_length=config.max_length)
        collate, world = task.collator(tokenizer), accelerator.num_processes
        eval_size = (config.eval_batch_size or 2 * config.batch_size) * world
        train_dl = make_loader(
            prepared["train"], collate, config.batch_size * world, shuffle=True, config=config
        )
        self.sampler = train_dl.batch_sampler
        self.batch_shapes: Counter = Counter()  # what `loop` trains on and for how long: `TrainResult`
        self.step_seconds = 0.0
        loaders = {
            split: make_loader(prepared[split], collate, eval_size, shuffle=False, config=config)
            for split in ("validation", "test")
            if split in prepared and len(prepared[split])
        }
        if config.gradient_checkpointing:
            enable_checkpointing(model)
        self.lr = parts.lr
        self.hooks = parts.hooks  # the strategy's hooks: the loop never asks which strategy it is
        groups = parameter_groups(model, config.weight_decay, lr=self.lr, head_lr=config.head_lr)
        optimizer = torch.optim.AdamW(self.hooks.param_groups(model, groups, self.lr), lr=self.lr)
        steps_per_epoch = math.ceil(len(train_dl) / config.gradient_accumulation_steps)
        self.epochs = resolve_epochs(config, steps_per_epoch)
        self.total_steps = config.max_steps or steps_per_epoch * self.epochs
        self.hooks.on_train_start(model, self.total_steps)
        warmup = int(config.warmup_ratio * self.total_steps)
        scheduler = get_scheduler(
            config.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps
        )
        prepared_objects = accelerator.prepare(model, optimizer, train_dl, scheduler, *loaders.values())
        self.model, self.optimizer, self.train_dl, self.scheduler = prepared_objects[:4]
        self.loaders = dict(zip(loaders, prepared_objects[4:], strict=True))
        self.raw_model = accelerator.unwrap_model(self.model)
        from ..compiling import CompiledForward

        self.forward = CompiledForward(self.model, config.compile)  # the training forward, compiled if asked
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        from ..adversarial import Adversary
        from ..distill import Distiller

        # peftkit.distill: the task loss, mixed with the teacher's soft targets when there is a teacher
        self.loss_of = Distiller(
            parts.teacher, config.distill_alpha, config.distill_temperature, task, accelerator
        )

        self.adversary = Adversary(
            self.model,
            accelerator,
            config.adversarial,
            config.adv_epsilon,
            config.adv_steps,
            config.adv_alpha,
        )
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
            flat = {
                k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                for k, v in asdict(config).items()
            }
            accelerator.init_trackers("peftkit", config=flat)
        chance = getattr(task, "chance_loss", None)  # a task of one's own may not have it
        self.chance = chance(prepared["train"]) if chance else None
        self.record = self._record(model, run_info or {}, resume_dir, warmup)
        if accelerator.is_main_process:
            from ..runreport import write_run_config

            write_run_config(self.out_dir / "run_config.yaml", self.record)
            if resume_dir is not None:
                print(
                    f"peftkit: resumed from checkpoint {resume_dir} (step {self.state.step} of {self.total_steps}, "
                    f"epoch {self._epoch_position():g})"
                )

    def _record(
        self, model: nn.Module, run_info: dict[str, Any], resume_dir: Path | None, warmup: int
    ) -> dict[str, Any]:
        """What run_config.yaml and the model cards say about this run."""
        from ..runreport import command_line, data_files, library_versions, timestamp

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        identity = {k: v for k, v in self.identity.items() if k not in ("config", "data", "task")}
        resolved = {
            "epochs_resolved": None if self.config.max_steps else self.epochs,
            "total_steps": self.total_steps,
            "warmup_steps": warmup,
            "lr_resolved": self.lr,
            "metric_for_best_resolved": self.metric,
            "greater_is_better_resolved": self.greater,
            "num_processes": self.accelerator.num_processes,
            "device_resolved": str(self.accelerator.device),
            "mixed_precision_resolved": str(self.accelerator.mixed_precision),
        }
        return json.loads(
            json.dumps(
                {
                    "command": run_info.get("command") or command_line(),
                    "started": timestamp(),
                    "resumed_from": str(resume_dir) if resume_dir is not None else None,
                    "versions": library_versions(),
                    "model": {
                        **identity,
                        "path": run_info.get("model"),
                        "format": self.model_format,
                        "quantization": run_info.get("quantization"),
                        "trainable_parameters": trainable,
                        "total_parameters": sum(p.numel() for p in model.parameters()),
                    },
                    "task": self.identity["task"],
                    "data": {"files": data_files(run_info.get("data")), "splits": self.identity["data"]},
                    "train": {**asdict(self.config), **resolved},
                },
                default=str,
            )
        )

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
        from ..rundir import check_resume_identity

        check_resume_identity(folder, json.loads((folder / STATE_FILE).read_text()).get("run"), self.identity)
        return folder

    def _resume(self, folder: Path) -> None:
        """Model, optimizer, scheduler, RNG (accelerate) + step, data position, best, log (ours)."""
        from accelerate.utils import DistributedType
        from safetensors.torch import load_file

        # Plain and DDP checkpoints hold only the trainable tensors; DeepSpeed and FSDP save their own way.
        own_format = self.accelerator.distributed_type in (
            DistributedType.DEEPSPEED,
            DistributedType.FSDP,
            DistributedType.MEGATRON_LM,
        )
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
                self.hooks.on_step(self.raw_model, state.step + 1, self.total_steps)
            self.optimizer.zero_grad()
        return mean_loss

    def loop(self) -> None:
        from tqdm.auto import tqdm

        config, state, accelerator = self.config, self.state, self.accelerator
        show = config.progress and accelerator.is_local_main_process
        progress = tqdm(total=self.total_steps, initial=state.step, disable=not show, desc="train")
        window = Window()
        stop = state.step >= self.total_steps
        self.model.train()
        while not stop:
            self.sampler.use_epoch(state.epoch)
            skip = state.batches_in_epoch
            for batch in accelerator.skip_first_batches(self.train_dl, skip) if skip else self.train_dl:
                window.add(self._step(batch), next(iter(batch.values())).shape[0] * accelerator.num_processes)
                self.batch_shapes[batch_signature(batch)] += 1
                state.batches_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                progress.update(1)
                if state.step % config.log_every == 0 or state.step == self.total_steps:
                    row = {
                        "step": state.step,
                        "epoch": self._epoch_position(),
                        **window.take(),
                        "lr": self.scheduler.get_last_lr()[0],
                    }
                    self.log.add(row)
                    progress.set_postfix(loss=f"{row['loss']:.4f}")
                stop = state.step >= self.total_steps
                with window.paused():  # evaluation and checkpoints do not count in throughput
                    if (
                        "validation" in self.loaders
                        and config.eval_steps
                        and state.step % config.eval_steps == 0
                    ):
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
        self.step_seconds = window.seconds()
        if "validation" in self.loaders and (not state.history or state.history[-1]["step"] != state.step):
            self.evaluate_and_keep_best()  # the model training ended with competes for best too

    # ---- evaluation, best model, checkpoints

    def evaluate_and_keep_best(self) -> bool:
        """Evaluate on validation, keep the best; True when early stopping says stop."""
        state, accelerator = self.state, self.accelerator
        metrics = evaluate(self.model, self.loaders["validation"], self.task, accelerator)
        if self.metric not in metrics:
            raise KeyError(
                f"metric_for_best={self.metric!r} is not among the task's metrics: {', '.join(metrics)}."
            )
        row = {"step": state.step, "epoch": self._epoch_position()}
        row.update({k if k.startswith("eval_") else f"eval_{k}": v for k, v in metrics.items()})
        value, best = metrics[self.metric], state.best_metric
        if best is None or (value > best if self.greater else value < best):
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
            self.best_weights = {
                n: p.detach().cpu().clone() for n, p in self.raw_model.named_parameters() if p.requires_grad
            }
            if accelerator.is_main_process:
                self.save_model(self.raw_model, self.tokenizer, self.out_dir / "best")
                self._write_card(self.out_dir / "best")
        else:
            state.bad_evals += 1
        sample = self._log_samples()
        if sample:
            row["sample"] = sample
        state.history.append(row)
        self.log.add(row)
        accelerator.wait_for_everyone()
        asked = [
            bool(c.on_evaluate(state.step, dict(metrics)))
            for c in self.callbacks
            if hasattr(c, "on_evaluate")
        ]
        patience = self.config.early_stopping_patience
        return bool(patience and state.bad_evals >= patience) or any(asked)

    def _log_samples(self) -> list[dict[str, Any]] | None:
        """The task's samples of the model's outputs on validation (generative tasks: answers to the
        first prompts, `Task.log_samples`), for the log row; None where the task shows none."""
        n, samples, split = (
            self.config.sample_generations,
            getattr(self.task, "log_samples", None),
            self.data.get("validation"),
        )
        if not n or samples is None or split is None or not self.accelerator.is_main_process:
            return None
        model = self.raw_model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            rows = samples(model, self.tokenizer, split, n)
        model.train(was_training)
        return rows

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
            older = sorted(
                (p for p in final.parent.glob("step-*") if p != final),
                key=lambda p: int(p.name.split("-")[1]),
            )
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
            self.hooks.on_weights_restored(self.raw_model)
        split = "test" if "test" in self.loaders else "validation"
        metrics = (
            evaluate(self.model, self.loaders[split], self.task, accelerator) if split in self.loaders else {}
        )
        best_dir = out_dir / "best" if self.best_weights is not None else None
        final_dir = best_dir if (best_dir is not None and config.load_best_at_end) else out_dir / "final"
        if accelerator.is_main_process:
            from ..runreport import plot_log

            if final_dir != best_dir:
                self.save_model(self.raw_model, self.tokenizer, final_dir)
            (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            if split != "test":
                print(
                    f"peftkit: the data has no test split; final metrics are on the validation split: {metrics}"
                )
            if best_dir is not None:
                self._write_card(best_dir, metrics if final_dir == best_dir else None, split)
            if final_dir != best_dir:
                self._write_card(final_dir, metrics, split)
            plot_log(self.log.rows, out_dir / "train_log.png")
        self._warn_if_chance()
        if tracker_names(config.report_to):
            accelerator.end_training()
        accelerator.wait_for_everyone()
        # The caller's model runs as before training: without the autocast Accelerate wrapped its forward in
        # (bf16 is the default on some CPUs); the metrics above were taken in the training precision.
        accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
        return TrainResult(
            metrics,
            self.state.history,
            best_dir,
            final_dir,
            split,
            self.log.rows,
            batch_shapes=dict(self.batch_shapes),
            step_seconds=round(self.step_seconds, 3),
            mixed_precision=str(accelerator.mixed_precision),
        )

    # ---- what the output tells

    def _write_card(self, folder: Path, metrics: dict[str, float] | None = None, split: str = "test") -> None:
        from ..runreport import write_model_card

        state = self.state
        best = (
            {self.metric: state.best_metric, "step": state.best_step}
            if state.best_metric is not None
            else None
        )
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
