"""``peftkit tune`` / `peftkit.tune`: hyperparameter search with Optuna over any train option.

Each trial is one `peftkit train` run (the same parser and `cli.run_training`) into
``OUTPUT/trials/NNN``, scored on the validation split (never test) by the task's main metric
(or ``metric_for_best``). Optuna's TPE sampler proposes the values (seeded per trial number, so
a run is reproducible, a resumed study does not repeat itself and parallel workers differ), and
a median (or successive-halving) pruner stops a trial at a validation evaluation where it is
behind the others. The study lives in Optuna's storage: ``OUTPUT/study.db`` (SQLite) unless
``--storage URL`` names another database, so re-running the same command resumes the study,
and several workers given one ``--storage`` share it.

OUTPUT holds ``best.yaml`` (a config ``peftkit train --config`` takes as is), ``study.db``,
``trials.csv``, ``optimization_history.png`` and ``param_importances.png``. Only the best
trial keeps its ``best/`` checkpoint. Neither torch nor optuna is imported until a search runs.

A new study's trial 0 tries the untuned values (`default_point`: the strategy's default lr, the head
at the same rate, the other defaults that lie in the space), so that a short search chooses other
values only where a trial beats the defaults on validation; ``--no-default-trial`` skips it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# TrainConfig fields that are not hyperparameters: where to write, how to show, what to resume.
NOT_SEARCHABLE = ("output_dir", "resume_from_checkpoint", "progress", "report_to", "device", "cpu", "metric_for_best",
                  "greater_is_better", "load_best_at_end", "save_steps", "save_total_limit", "log_every")


class SearchSpaceError(ValueError):
    """A --search entry or search-space key that cannot be searched."""


# --------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (integers when both are), log-uniform with ``log``."""

    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def check(self, key: str) -> None:
        if not self.low < self.high:
            raise SearchSpaceError(f"--search {key}={self}: low must be below high (e.g. {key}=1e-5:1e-3:log).")
        if self.log and self.low <= 0:
            raise SearchSpaceError(f"--search {key}={self}: a log range needs low > 0.")

    def holds(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial, key: str):
        if self.integer:
            return trial.suggest_int(key, self.low, self.high, log=self.log)
        return trial.suggest_float(key, float(self.low), float(self.high), log=self.log)

    def __str__(self) -> str:
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")


@dataclass(frozen=True)
class Choice:
    """One of ``values``."""

    values: tuple

    def check(self, key: str) -> None:
        if len(self.values) < 2 or len(set(map(repr, self.values))) != len(self.values):
            raise SearchSpaceError(f"--search {key}={self}: give at least two different values (e.g. {key}=4,8,16).")

    def holds(self, value: Any) -> bool:
        return value in self.values

    def suggest(self, trial, key: str):
        return trial.suggest_categorical(key, list(self.values))

    def __str__(self) -> str:
        return ",".join(map(str, self.values))


def _number(text: str, key: str, spec: str) -> float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise SearchSpaceError(f"--search {key}={spec}: {text!r} is not a number (a range is low:high[:log]).") from None
    if not math.isfinite(value):
        raise SearchSpaceError(f"--search {key}={spec}: {text!r} is not a finite number.")
    return value


def parse_spec(key: str, spec: Any) -> Range | Choice:
    """One search entry: ``"low:high[:log]"``, ``"a,b,c"``, a list of choices, or a Range / Choice."""
    from .cli import _literal

    if isinstance(spec, (Range, Choice)):
        param = spec
    elif isinstance(spec, (list, tuple)):
        param = Choice(tuple(spec))
    elif isinstance(spec, str) and "," in spec:
        param = Choice(tuple(_literal(v.strip()) for v in spec.split(",") if v.strip()))
    elif isinstance(spec, str) and ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise SearchSpaceError(f"--search {key}={spec}: a range is low:high or low:high:log.")
        param = Range(_number(parts[0], key, spec), _number(parts[1], key, spec), log=len(parts) == 3)
    else:
        raise SearchSpaceError(
            f"--search {key}={spec}: give a range low:high[:log] or choices a,b,c. To fix a value instead, "
            f"pass it as a train flag (--lr, --option {key}=..., --set {key}=...)."
        )
    param.check(key)
    return param


def parse_search(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Range | Choice]:
    """``--search key=spec`` entries (or a mapping key -> spec) as a search space."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        for item in items or []:
            if "=" not in item:
                raise SearchSpaceError(f"--search expects key=low:high[:log] or key=a,b,c, got {item!r}.")
            pairs.append(tuple(item.split("=", 1)))
    space = {}
    for key, spec in pairs:
        key = key.strip().replace("-", "_")
        if not key:
            raise SearchSpaceError(f"--search ={spec}: the key is empty; name an option, e.g. lr=1e-5:1e-3:log.")
        space[key] = parse_spec(key, spec)
    return space


def default_space(strategy: str, task: str) -> dict[str, Range | Choice]:
    """The search space a strategy gets by default: the one place it is written down."""
    from .introspect import has_head
    from .strategies import default_learning_rate

    lr = default_learning_rate(strategy)
    space: dict[str, Range | Choice] = {"lr": Range(lr / 5, lr * 5, log=True)}
    if has_head(task):
        # Untuned, the head trains at the strategy's rate (head_lr None): the range reaches it (prompt
        # tuning's 3e-2), so that the default trial below lies in the space.
        space["head_lr"] = Range(1e-4, max(1e-2, lr), log=True)
    space["warmup_ratio"] = Range(0.0, 0.2)
    space["weight_decay"] = Range(0.0, 0.1)
    space.update(STRATEGY_SPACES.get(strategy, {}))
    return space


STRATEGY_SPACES: dict[str, dict[str, Range | Choice]] = {
    "lora": {"r": Choice((4, 8, 16, 32)), "alpha": Choice((8, 16, 32, 64))},
    "adapter": {"reduction_factor": Choice((8, 16, 32, 64))},
}


def _searchable(strategy: str) -> tuple[set[str], set[str]]:
    from .strategies import get_strategy
    from .training import TrainConfig

    train = {f.name for f in fields(TrainConfig)} - set(NOT_SEARCHABLE)
    return train, set(get_strategy(strategy).options)


def search_space(strategy: str, task: str, search=None, fixed: Iterable[str] = ()) -> dict[str, Range | Choice]:
    """The default space less the ``fixed`` keys (given as train flags), with ``search`` on top.

    Refuses, before anything trains, a key that is neither a searchable training option nor an
    option of ``strategy``, and ``head_lr`` for a task without a fresh head.
    """
    from .introspect import has_head, head_tasks

    overrides = parse_search(search)
    train_keys, strategy_keys = _searchable(strategy)
    for key in overrides:
        if key not in train_keys | strategy_keys:
            raise SearchSpaceError(
                f"--search {key}: strategy {strategy!r} has no option {key!r} and it is no searchable training "
                f"option. Strategy options: {', '.join(sorted(strategy_keys)) or 'none'}; training options: "
                f"{', '.join(sorted(train_keys))}."
            )
        if key == "head_lr" and not has_head(task):
            raise SearchSpaceError(f"--search head_lr: task {task!r} has no new task head; only {', '.join(head_tasks())} do.")
    fixed = set(fixed)
    space = {k: v for k, v in default_space(strategy, task).items() if k not in fixed}
    space.update(overrides)
    return space


def default_point(strategy: str, space: Mapping[str, Range | Choice], lr: float | None = None,
                  options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The values of ``space``'s keys that a run without tuning would use, where they lie in the space:
    ``lr`` (given, else the strategy's default), ``head_lr`` (the same rate: untuned, the head trains at
    lr), the other training options' TrainConfig defaults and the strategy's option defaults (``options``
    given, else its resolved defaults). A key whose untuned value is outside its range is left out (the
    sampler draws it)."""
    from .strategies import default_learning_rate, get_strategy
    from .training import TrainConfig

    rate = lr if lr is not None else default_learning_rate(strategy)
    untuned: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)}
    untuned.update(get_strategy(strategy).resolve_options(dict(options or {})))
    untuned.update(lr=rate, head_lr=rate)
    return {key: untuned[key] for key, param in space.items() if key in untuned and param.holds(untuned[key])}


# --------------------------------------------------------------------------- one trial


def _normalized(args: argparse.Namespace) -> argparse.Namespace:
    """A copy whose --set / --option are folded into train_options / strategy_options and whose
    paths are absolute, so a trial (and best.yaml) can be built by filling in values."""
    from .cli import _key_values, expand_path, strategy_options_from_args

    args = copy.deepcopy(args)
    if args.resume:
        raise ValueError("peftkit tune starts every trial afresh; drop --resume (re-run the same tune command to resume the study).")
    args.train_options = {**(args.train_options or {}), **_key_values(args.set, "--set")}
    args.strategy_options = strategy_options_from_args(args)
    args.set = args.option = None
    for name in ("data", "train", "validation", "test", "model"):
        value = expand_path(getattr(args, name))
        if value and Path(value).exists():
            value = str(Path(value).resolve())
        setattr(args, name, value)
    return args


def _fixed_keys(args: argparse.Namespace) -> set[str]:
    from .cli import _TRAIN_FLAGS

    given = {field for dest, field in _TRAIN_FLAGS.items() if getattr(args, dest, None) is not None}
    return given | set(args.train_options) | set(args.strategy_options)


def _with_values(args: argparse.Namespace, values: dict[str, Any], strategy_keys: set[str]) -> argparse.Namespace:
    """``args`` with the tuned ``values`` filled in (strategy options, train flags or train_options)."""
    from .cli import _TRAIN_FLAGS

    args = copy.deepcopy(args)
    flags = {field: dest for dest, field in _TRAIN_FLAGS.items()}
    for key, value in values.items():
        if key in strategy_keys:
            args.strategy_options[key] = value
        elif key in flags:
            setattr(args, flags[key], value)
        else:
            args.train_options[key] = value
    return args


class _Reporter:
    """Reports each validation evaluation to the Optuna trial; prunes when the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> bool:
        import optuna

        self.trial.report(metrics[self.metric], step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.metric} {metrics[self.metric]:.4g})")
        return False


def best_validation(history: list[dict[str, Any]], metric: str, greater: bool) -> float:
    """The best validation value of ``metric`` over a run's evaluations (rows of TrainResult.history)."""
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    values = [row[key] for row in history if key in row]
    if not values:
        raise RuntimeError(f"The trial ran no validation evaluation of {metric}; give --validation or --eval-steps.")
    return max(values) if greater else min(values)


def _trial_dir(output: Path, number: int) -> Path:
    return output / "trials" / f"{number:03d}"


# --------------------------------------------------------------------------- outputs


TRAIN_ONLY = ("config", "output", "resume", "set", "option")


def best_config(args: argparse.Namespace, values: dict[str, Any], strategy_keys: set[str]) -> dict[str, Any]:
    """The config (keys = `peftkit train` flags) of a trial with ``values``: model, data, columns,
    strategy, options, lr and every tuned value."""
    from .cli import add_train_arguments
    from .strategies import default_learning_rate

    filled = _with_values(args, values, strategy_keys)
    train_parser = argparse.ArgumentParser()
    add_train_arguments(train_parser)
    defaults = vars(train_parser.parse_args([]))
    out = {}
    for dest in defaults:
        value = getattr(filled, dest, None)
        if dest in TRAIN_ONLY or value is None or value == {}:
            continue
        out[dest] = value
    out.setdefault("lr", default_learning_rate(filled.strategy))
    return out


@contextlib.contextmanager
def _replaced(path: Path):
    """Yield a temporary path (this process's own: workers share OUTPUT) renamed to ``path`` once written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_best_yaml(path: Path, config: dict[str, Any], header: str) -> None:
    import yaml

    with _replaced(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(config, sort_keys=False))


def write_trials_csv(study, path: Path) -> None:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    with _replaced(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_plots(study, output: Path) -> list[Path]:
    """Optimization history and parameter importances as PNGs (matplotlib, imported here)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print("peftkit tune: no plots: matplotlib is not installed (pip install matplotlib).")
        return []
    import optuna
    from optuna.visualization import matplotlib as vis

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in (("optimization_history", vis.plot_optimization_history),
                           ("param_importances", vis.plot_param_importances)):
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as err:  # e.g. importances need 2+ complete trials
                print(f"peftkit tune: no {name} plot: {err}")
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.tight_layout()
            with _replaced(output / f"{name}.png") as tmp:
                figure.savefig(tmp, dpi=100, format="png")
            plt.close(figure)
            written.append(output / f"{name}.png")
    return written


def clean_trials(study, output: Path) -> None:
    """Checkpoints of finished trials: only the best trial keeps its ``best/``; no trial keeps
    ``checkpoints/`` or ``final/``. Running trials (of any worker) are left alone."""
    from optuna.trial import TrialState

    best = _best_number(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        folder = _trial_dir(output, trial.number)
        kept = ("best",) if trial.number == best else ()
        for name in ("checkpoints", "final", "best"):
            if name not in kept and (folder / name).is_dir():
                shutil.rmtree(folder / name, ignore_errors=True)


def _best_number(study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:  # no complete trial yet
        return None


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


# --------------------------------------------------------------------------- the search


@dataclass
class TuneResult:
    """``study``: the Optuna study; ``best_config``: the path of best.yaml (None without a
    complete trial); ``best_value`` / ``best_params``: the best trial's."""

    study: Any
    best_config: Path | None
    best_value: float | None
    best_params: dict[str, Any]


def make_pruner(pruner: Any):
    """"median" (Optuna's MedianPruner), "halving" (SuccessiveHalvingPruner), "none", or a pruner."""
    import optuna

    if not isinstance(pruner, str):
        return pruner
    pruners = {"median": optuna.pruners.MedianPruner, "halving": optuna.pruners.SuccessiveHalvingPruner,
               "none": optuna.pruners.NopPruner}
    if pruner not in pruners:
        raise ValueError(f"Unknown pruner {pruner!r}: choose one of {', '.join(pruners)}.")
    return pruners[pruner]()


def _sampler(seed: int, number: int, fixed: Mapping[str, Any] | None = None):
    """TPE seeded per trial number: reproducible, no repeats on resume, different across workers;
    ``fixed``: values this trial takes instead of sampling them."""
    import optuna

    tpe = optuna.samplers.TPESampler(seed=seed * 100_003 + number, constant_liar=True)
    if not fixed:
        return tpe
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.PartialFixedSampler(dict(fixed), tpe)


def _storage(url: str):
    import inspect

    import optuna
    from optuna import storages

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # The heartbeat marks a trial whose worker was killed as failed, and runs it again once.
    # Optuna 4.9 renamed the callback and its argument; older ones have the first names only.
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    argument = "heartbeat_stale_trial_callback"
    if argument not in inspect.signature(storages.RDBStorage).parameters:
        argument = "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120,
                                   **{argument: retry(max_retry=1)})


def open_study(url: str, attempts: int = 5, **kwargs: Any):
    """``optuna.create_study(load_if_exists=True)`` on ``url``. Workers started together race to create
    the storage's tables and the study; the loser gets an IntegrityError (or, on SQLite, a lock error),
    and opening again finds what the winner made."""
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.create_study(storage=_storage(url), load_if_exists=True, **kwargs)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def run_tune(args: argparse.Namespace, pruner: Any = None) -> TuneResult:
    """The search the parsed ``peftkit tune`` arguments describe (see the module docstring)."""
    import optuna
    from tqdm.auto import tqdm

    from .cli import run_training, train_config_from_args
    from .introspect import check_task
    from .strategies import get_strategy
    from .tasks import get_task
    from .training import TrainingDiverged, target_metric

    if not args.model:
        raise SystemExit("peftkit: --model is required (a local model directory or hub id).")
    if not args.task:
        raise SystemExit("peftkit: --task is required: classification, token-classification or causal-lm.")
    if args.trials < 1:
        raise ValueError(f"--trials {args.trials}: give at least 1 trial.")
    task = check_task(args.task)
    get_strategy(args.strategy)
    base = _normalized(args)
    if base.max_steps and not base.eval_steps:  # pruning needs evaluations along the way
        base.eval_steps = max(1, base.max_steps // 5)
    strategy_keys = set(get_strategy(base.strategy).options)
    space = search_space(base.strategy, task, base.search, fixed=_fixed_keys(base))
    get_strategy(base.strategy).resolve_options(base.strategy_options)
    config = train_config_from_args(base)  # refuses bad training options before anything trains
    metric, greater = target_metric(config, get_task(task))

    output = Path(base.output)
    output.mkdir(parents=True, exist_ok=True)
    url = base.storage or f"sqlite:///{(output / 'study.db').resolve()}"
    name = base.study_name or output.resolve().name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if greater else "minimize"
    study = open_study(url, study_name=name, direction=direction, sampler=_sampler(config.seed, 0),
                       pruner=make_pruner(pruner or base.pruner))
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"Study {name!r} in {url} was made to {study.direction.name.lower()} its value, but {metric} must be "
            f"{direction}d. Use another --output or --study-name."
        )
    where = ("the validation file" if base.validation else
             "the validation split of --data (a seeded carve-out of train when it has none)" if base.data else
             f"a seeded carve-out of --train (10%, seed {config.seed}; give --validation to choose)")
    print(f"peftkit tune: study {name!r} in {url}: {_finished(study)} of {args.trials} trials finished; "
          f"{direction} validation {metric} on {where}, never test.")
    print("peftkit tune: search space: " + ", ".join(f"{k}={v}" for k, v in space.items()))
    # Trial 0 (one per study, whichever worker gets it) tries the untuned values: the search then chooses
    # others only where a trial beats the defaults on validation (a few random points can all miss them).
    start = default_point(base.strategy, space, base.lr, base.strategy_options) if base.default_trial else {}
    if start and not study.trials:
        print("peftkit tune: trial 0 tries the untuned values: " + ", ".join(f"{k}={v:g}" if isinstance(v, float)
              else f"{k}={v}" for k, v in start.items()))

    def objective(trial) -> float:
        trial.study.sampler = _sampler(config.seed, trial.number, start if trial.number == 0 else None)
        values = {key: param.suggest(trial, key) for key, param in space.items()}
        folder = _trial_dir(output, trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        trial_args = _with_values(base, values, strategy_keys)
        trial_args.output, trial_args.test = str(folder), None  # scored on validation, never test
        try:
            with (folder / "train.log").open("a") as log, contextlib.redirect_stdout(log):
                result, _ = run_training(trial_args, callbacks=[_Reporter(trial, metric)], progress=False)
        except TrainingDiverged as err:
            raise optuna.TrialPruned(f"diverged: {str(err).split(':')[0]}") from err
        return best_validation(result.history, metric, greater)

    bar = tqdm(total=args.trials, initial=min(args.trials, _finished(study)), desc="trials", unit="trial",
               disable=not sys.stderr.isatty())

    def after_trial(study, trial) -> None:
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        if trial.state.name == "COMPLETE":
            what = f"{metric} {trial.value:.4f}"
        else:
            last = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
            what = trial.state.name.lower() + (f" ({metric} {last:.4f})" if last is not None else "")
        best = _best_number(study)
        best_text = f"best {study.best_value:.4f} (trial {best})" if best is not None else "no complete trial yet"
        bar.update(1)
        bar.write(f"trial {trial.number:3d} {what}  {params}  {seconds:.1f}s  | {best_text}")
        clean_trials(study, output)
        write_outputs(study, base, output, strategy_keys, metric, plots=False)

    remaining = args.trials - _finished(study)
    try:
        if remaining > 0:
            stop = optuna.study.MaxTrialsCallback(args.trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
            study.optimize(objective, n_trials=remaining, timeout=args.timeout, callbacks=[after_trial, stop])
    finally:
        bar.close()
    clean_trials(study, output)
    best_yaml = write_outputs(study, base, output, strategy_keys, metric, plots=True)
    best = _best_number(study)
    if best is None:
        print(f"peftkit tune: no trial completed (all pruned or failed); see {output / 'trials.csv'}.")
        return TuneResult(study, None, None, {})
    print(f"peftkit tune: best trial {best}: validation {metric} {study.best_value:.4f} with {study.best_params}")
    print(f"peftkit tune: train it: peftkit train --config {best_yaml} --output RUN_DIR")
    return TuneResult(study, best_yaml, study.best_value, dict(study.best_params))


def write_outputs(study, base: argparse.Namespace, output: Path, strategy_keys: set[str], metric: str,
                  plots: bool) -> Path | None:
    """trials.csv, best.yaml (once a trial completed) and, with ``plots``, the PNGs."""
    write_trials_csv(study, output / "trials.csv")
    best = _best_number(study)
    if best is None:
        return None
    path = output / "best.yaml"
    header = (f"# peftkit train --config {path} --output RUN_DIR\n"
              f"# peftkit tune trial {best}: validation {metric} {study.best_value:.4f}. To train longer, pass\n"
              "# --max-steps N (or drop max_steps here and pass --epochs N).\n")
    write_best_yaml(path, best_config(base, dict(study.best_params), strategy_keys), header)
    if plots:
        write_plots(study, output)
    return path


# --------------------------------------------------------------------------- CLI and Python API


def setup_tune_parser(p: argparse.ArgumentParser) -> Callable:
    """``peftkit tune``: every ``peftkit train`` flag plus the search's own."""
    from .cli import add_train_arguments

    add_train_arguments(p)
    p.add_argument("--trials", type=int, default=20, help="finish this many trials in the study (resumed studies count "
                   "the trials they have; workers sharing a study share the count; default 20)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--search", action="append", metavar="KEY=SPEC",
                   help="search KEY over low:high[:log] or a,b,c (replaces its default range; repeatable)")
    p.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user:pw@host/db "
                   "(default: sqlite:///OUTPUT/study.db)")
    p.add_argument("--study-name", help="name of the study in the storage (default: the output folder's name)")
    p.add_argument("--pruner", default="median", choices=["median", "halving", "none"],
                   help="stop trials behind the others at their evaluations (default: median)")
    p.add_argument("--no-default-trial", dest="default_trial", action="store_false",
                   help="start sampling at once; by default the first trial tries the untuned values (the "
                   "strategy's default lr, the head at the same rate, every other default inside the space)")
    return cmd_tune


def cmd_tune(args: argparse.Namespace) -> int:
    import datasets
    import transformers

    datasets.disable_progress_bars()  # one line per trial, not the bars of every trial's loading
    transformers.utils.logging.disable_progress_bar()
    try:
        result = run_tune(args)
    except KeyboardInterrupt:
        print(f"\npeftkit tune: interrupted; re-run the same command to resume the study in {args.output}.", file=sys.stderr)
        return 130
    return 0 if result.best_config is not None else 1


def tune(*, search: Mapping[str, Any] | None = None, pruner: Any = "median", **options: Any) -> TuneResult:
    """Search hyperparameters from Python; keywords are ``peftkit tune``'s flags with underscores.

    ``tune(model=..., task="classification", train="train.csv", validation="dev.csv",
    strategy="lora", trials=12, max_steps=300, output="runs/tune", search={"lr": "1e-5:1e-3:log",
    "r": [4, 8, 16]})``. ``pruner`` is "median", "halving", "none" or an Optuna pruner.
    """
    parser = argparse.ArgumentParser(prog="peftkit tune")
    setup_tune_parser(parser)
    args = parser.parse_args([])
    unknown = sorted(set(options) - set(vars(args)) - {"handler"})
    if unknown:
        raise TypeError(f"tune() got unknown option(s) {', '.join(unknown)}. Valid: {', '.join(sorted(vars(args)))}.")
    for key, value in options.items():
        setattr(args, key, value)
    args.search = dict(search or {})
    return run_tune(args, pruner=pruner)
