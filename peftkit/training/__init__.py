"""The one training loop: Accelerate, blind to the strategy (it only sees trainable parameters).

``train(model, tokenizer, data, TrainConfig(...), task=None) -> TrainResult``

- The task (``peftkit.tasks``) turns the DatasetDict into model inputs, pads batches, runs one
  evaluation step, computes metrics and shows generated samples; nothing here knows a column name.
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

The package, one concern per module:

- ``config``: `TrainConfig` (validates itself), `TrainResult`, `resolve_epochs`, `target_metric`;
- ``environment``: device and mixed precision checks, the Accelerator and its trackers;
- ``sampling``: `GlobalBatchSampler` and the DataLoaders;
- ``optimizer``: `parameter_groups`;
- ``runlog``: `RunLog` (train_log.jsonl / .csv, trackers) and the throughput window;
- ``loop``: the run itself (`evaluate`, checkpoints, best model, outputs, `batch_signature`); it imports neither
  `peftkit.strategies` nor `peftkit.checkpoint`: it is handed a `RunParts`;
- ``run``: `train`, which resolves the learning rate, the strategy's hooks, the save function, the
  run's identity and the teacher, and hands them to the loop.
"""

from .config import (
    DEFAULT_EPOCHS,
    DEFAULT_MIXED_PRECISION,
    PRECISIONS,
    SCHEDULERS,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    resolve_epochs,
    target_metric,
    tracker_names,
)
from .environment import check_device, fresh_accelerator_state
from .evaluation import evaluate
from .loop import BEST_STATE_FILE, CHANCE_MARGIN, STATE_FILE, RunParts, batch_signature
from .loop import _Run as _Run  # the run itself, for tests that look inside a step
from .optimizer import parameter_groups
from .run import resolve_learning_rate, save_model, train
from .runlog import RunLog
from .sampling import GlobalBatchSampler

__all__ = [
    "BEST_STATE_FILE",
    "CHANCE_MARGIN",
    "DEFAULT_EPOCHS",
    "DEFAULT_MIXED_PRECISION",
    "PRECISIONS",
    "SCHEDULERS",
    "STATE_FILE",
    "GlobalBatchSampler",
    "RunLog",
    "RunParts",
    "TrainConfig",
    "TrainResult",
    "batch_signature",
    "TrainingDiverged",
    "check_device",
    "evaluate",
    "fresh_accelerator_state",
    "parameter_groups",
    "resolve_epochs",
    "resolve_learning_rate",
    "save_model",
    "target_metric",
    "tracker_names",
    "train",
]
