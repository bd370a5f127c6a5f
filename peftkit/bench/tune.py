"""The short hyperparameter search a suite runs per (task, strategy) before that strategy's cells.

    python -m peftkit.bench.tune --suite SUITE.yaml --task sst2 --strategy lora --output DIR

A suite with a ``tune:`` section (see `peftkit.bench.suite`) tunes each (task, strategy) with
`peftkit.tuning.tune` (Optuna: the same search as ``peftkit tune``) on the task's validation split,
never test: its ``validation:`` file, else a seeded carve-out of train that every cell of the task
then leaves out (`suite.HOLDOUT_FRACTION`). The trials train on the seed-0 cell's training set.
The cells then train with the chosen values (`Suite.with_tuned`).

Each search runs in its own process (like a cell) into
``OUTPUT/tune/<task>/<strategy>-<settings hash>/``: Optuna's ``study.db`` (an interrupted search
resumes) and ``tuned.json`` (the chosen values, the best validation score, the trial count). A
re-run suite reads ``tuned.json`` and trains nothing; changing the tune settings (other than
``trials`` / ``timeout``) starts a new folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .suite import BASELINE_STRATEGIES, HOLDOUT_SEED, StrategySpec, Suite, TaskSpec, load_suite

TUNED_JSON = "tuned.json"


def tunes_for(suite: Suite, task: str, strategy: str) -> StrategySpec | None:
    """The strategy whose tune settings a cell of ``strategy`` takes (a baseline: the baseline
    strategy's), or None when its cells are not tuned."""
    if strategy in BASELINE_STRATEGIES and not suite.baselines:
        return None
    spec = suite.tuned_for(strategy)
    return spec if spec.tune else None


def _train_size(task: TaskSpec) -> int | None:
    return None if None in task.train_sizes else max(task.train_sizes)


def tune_options(
    suite: Suite, task: TaskSpec, spec: StrategySpec, output: Path | None = None
) -> dict[str, Any]:
    """The keywords of `peftkit.tuning.tune` for ``spec`` on ``task`` (what is not tuned is fixed to
    the suite's values: the budget, the strategy's options and lr when given).

    A trial trains ``tune.max_steps`` steps, by default the cells' own ``max_steps``: the values are
    chosen at the budget the cells train with. A shorter ``tune.max_steps`` makes the search cheaper
    but chooses at that shorter budget (a rate best over 150 steps need not be best over 300).
    """
    from .common import model_source, resolve_device

    settings = dict(spec.tune or {})
    budget = suite.budget_for(task)
    steps = settings.get("max_steps") or budget.get("max_steps")
    if steps:  # a flag, not a train option, so that trials evaluate every steps/5 (the pruner needs them)
        budget = {k: v for k, v in budget.items() if k not in ("max_steps", "epochs")}
    model, _ = model_source(suite)
    options: dict[str, Any] = dict(
        model=model,
        task=task.task,
        train=task.train,
        validation=task.validation,
        test=None,
        strategy=spec.strategy,
        strategy_options=dict(spec.options),
        quantization=spec.quantization,
        lr=spec.lr,
        max_length=task.max_length,
        seed=HOLDOUT_SEED,
        max_train_samples=_train_size(task),
        max_eval_samples=settings.get("max_eval_samples"),
        max_steps=steps,
        eval_steps=settings.get("eval_steps"),
        trials=settings.get("trials", 6),
        default_trial=bool(settings.get("default_trial", False)),
        timeout=settings.get("timeout"),
        train_options={**budget, "device": resolve_device(suite)},
        **task.columns,
    )
    if output is not None:
        options["output"] = str(output)
    return options


def settings_key(suite: Suite, task: TaskSpec, spec: StrategySpec) -> str:
    """A short hash of what the search depends on, except ``trials`` and ``timeout`` (raising them resumes it)."""
    what = {
        "model": suite.model.path,
        "task": [
            task.task,
            Path(task.train).name,
            Path(task.validation or "").name,
            task.columns,
            task.max_length,
            _train_size(task),
            suite.budget_for(task),
        ],
        "strategy": [spec.strategy, spec.options, spec.lr, spec.quantization],
        "tune": {k: v for k, v in (spec.tune or {}).items() if k not in ("trials", "timeout")},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]


def tune_dir(out: Path, suite: Suite, task: TaskSpec, spec: StrategySpec) -> Path:
    return Path(out) / "tune" / task.name / f"{spec.name}-{settings_key(suite, task, spec)}"


def cached(folder: Path, trials: int) -> dict[str, Any] | None:
    """The finished search in ``folder`` (tuned.json) if it ran at least ``trials`` trials (or its timeout)."""
    file = folder / TUNED_JSON
    if not file.is_file():
        return None
    try:
        found = json.loads(file.read_text())
    except ValueError:
        return None
    return found if found.get("requested", 0) >= trials else None


def cached_tunes(suite: Suite, out: Path, cells) -> dict[tuple[str, str], dict[str, Any]]:
    """{(task, strategy): tuned.json} for the ``cells`` (CellKeys) whose search already finished."""
    found = {}
    for key in cells:
        spec = tunes_for(suite, key.task, key.strategy)
        if spec is not None and (
            hit := cached(tune_dir(out, suite, suite.task(key.task), spec), spec.tune.get("trials", 6))
        ):
            found[(key.task, key.strategy)] = hit
    return found


def ensure_tuned(
    suite: Suite, task: str, strategy: str, out: Path, progress: bool = True
) -> dict[str, Any] | None:
    """The tuned values for the cells of (task, strategy): cached, else searched now in a subprocess.

    Returns tuned.json's content ({"params", "value", "metric", "trials", ...}), or None when the
    cells are not tuned. A search that fails or completes no trial gives ``params`` {} and ``error``.
    """
    spec = tunes_for(suite, task, strategy)
    if spec is None:
        return None
    task_spec = suite.task(task)
    folder = tune_dir(out, suite, task_spec, spec)
    trials = (spec.tune or {}).get("trials", 6)
    found = cached(folder, trials)
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "peftkit.bench.tune",
        "--suite",
        str(suite.path),
        "--task",
        task,
        "--strategy",
        spec.name,
        "--output",
        str(folder),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if progress:
        print(
            f"peftkit bench: tuning {task}/{spec.name} ({trials} trials, log: {folder / 'tune.log'})",
            file=sys.stderr,
        )
    start = time.perf_counter()
    with (folder / "tune.log").open("a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    found = cached(folder, trials)
    if found is None:
        lines = [x for x in (folder / "tune.log").read_text(errors="replace").splitlines() if x.strip()]
        found = {
            "params": {},
            "trials": 0,
            "requested": trials,
            "error": f"the search exited with status {code}: {' | '.join(lines[-3:])[-500:]}",
        }
    if progress:
        what = found.get("error") or (
            f"{found['trials']} trials, best validation {found.get('metric')} "
            f"{found.get('value', float('nan')):.4f} with {found['params']}"
        )
        print(
            f"peftkit bench: tuned {task}/{spec.name} in {time.perf_counter() - start:.0f} s: {what}",
            file=sys.stderr,
        )
    return found


def run_search(suite: Suite, task: str, strategy: str, output: Path) -> dict[str, Any]:
    """Run (or resume) the search and write tuned.json; in the search's own process."""
    from ..tuning import _finished, tune

    spec = suite.strategy(strategy)
    settings = spec.tune or {}
    options = tune_options(suite, suite.task(task), spec, output)
    result = tune(search=settings.get("search"), pruner=settings.get("pruner", "median"), **options)
    found = {
        "params": dict(result.best_params),
        "value": result.best_value,
        "trials": _finished(result.study),
        "requested": options["trials"],
        "metric": suite.task(task).metric,
        "settings": settings,
    }
    if result.best_config is None:
        found["error"] = "no trial completed (all pruned or failed); see trials.csv"
    (output / TUNED_JSON).write_text(json.dumps(found, indent=1, default=str) + "\n")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    found = run_search(load_suite(args.suite), args.task, args.strategy, Path(args.output))
    return 0 if not found.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
