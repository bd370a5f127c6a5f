"""Run a suite: every cell in its own process, results kept after each cell, tables and plots at the end.

- Each cell runs as ``python -m peftkit.bench.cell ...`` so its memory is measured clean.
- A cell that fails (a refusal, an exception, a crash, a timeout) is recorded with its error
  and the suite goes on.
- ``results.json`` is rewritten after every cell; a re-run skips the cells already there
  (keyed by suite / task / strategy / quantization / seed / train size). Failed cells are
  skipped too unless ``retry_failed``. A cell whose learning rate or strategy options changed in
  the suite file since it ran is run again (`stale_reason`); so is a tuned cell whose search is not
  cached for the current tune settings (OUTPUT/tune/ deleted or the settings changed): tuned again first.
- At the end: ``results.csv`` (the issue's columns first, in order), ``results.md`` and the
  PNG plots (`peftkit.bench.report`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from .cell import empty_row
from .results import RESULTS_JSON, read_results, write_results
from .suite import BASELINE_STRATEGIES, CellKey, Suite, SuiteError, load_suite


def default_output_dir(suite: Suite) -> Path:
    """``benchmarks/results/<suite>`` beside ``benchmarks/suites``, else under the working directory."""
    if suite.path.parent.name == "suites":
        return suite.path.parent.parent / "results" / suite.name
    return Path("benchmarks") / "results" / suite.name


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM (and GPU when torch sees one) of this machine."""
    cpu = platform.processor() or platform.machine()
    ram = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
            ram = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    out: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "os": f"{platform.system()} {platform.release()}"}
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return out


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a user would type it (with the env vars that matter)."""
    argv = list(sys.argv if argv is None else argv)
    head = Path(argv[0]).name if argv else "peftkit"
    if head == "__main__.py":
        words = ["python", "-m", "peftkit.bench", *argv[1:]]
    elif head == "peftkit":
        words = ["peftkit", *argv[1:]]
    else:
        words = ["python", *argv]
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("HF_HUB_OFFLINE", "PEFTKIT_DATA_DIR") if os.environ.get(k)]
    return " ".join(env + [shlex.join(words)])


# --------------------------------------------------------------------------- one cell


def _cell_command(suite: Suite, key: CellKey, result: Path, work_dir: Path | None,
                  tuned: dict[str, Any] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "peftkit.bench.cell", "--suite", str(suite.path), "--task", key.task,
           "--strategy", key.strategy, "--seed", str(key.seed), "--result", str(result)]
    if tuned and tuned.get("params"):
        cmd += ["--tuned", json.dumps(tuned["params"], sort_keys=True)]
    if key.train_size is not None:
        cmd += ["--train-size", str(key.train_size)]
    if work_dir is not None:
        cmd += ["--work-dir", str(work_dir)]
    return cmd


def run_one(suite: Suite, key: CellKey, log_dir: Path, timeout: float | None = None, keep_dir: Path | None = None,
            tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one cell in a subprocess (with the ``tuned`` values, tuned.json's content, when its strategy
    is tuned); always returns a row (with ``error`` when it failed), holding ``tuned_params`` and ``tune_trials``."""
    row = _run_cell_process(suite, key, log_dir, timeout, keep_dir, tuned)
    if tuned is not None:
        row.update(tuned_params=json.dumps(tuned.get("params") or {}, sort_keys=True), tune_trials=tuned.get("trials", 0))
        if tuned.get("error"):
            row["tune_error"] = tuned["error"]
    return row


def _run_cell_process(suite: Suite, key: CellKey, log_dir: Path, timeout: float | None, keep_dir: Path | None,
                      tuned: dict[str, Any] | None) -> dict[str, Any]:
    safe = key.id().replace("/", "__")
    result = log_dir / f"{safe}.json"
    log = log_dir / f"{safe}.log"
    result.unlink(missing_ok=True)
    work = keep_dir / safe if keep_dir else None
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    error = None
    try:
        with log.open("w") as out:
            proc = subprocess.run(_cell_command(suite, key, result, work, tuned), stdout=out, stderr=subprocess.STDOUT,
                                  env=env, timeout=timeout)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        returncode, error = None, f"Timeout: the cell ran over {timeout:g} s and was stopped (raise --cell-timeout)."
    if result.is_file():
        try:
            return json.loads(result.read_text())
        except ValueError:
            pass
    row = empty_row(suite, key, suite.task(key.task))
    text = log.read_text(errors="replace") if log.is_file() else ""
    if error is None:
        tail = [line for line in text.splitlines() if line.strip()][-3:]
        error = f"the cell process exited with status {returncode} without a result: {' | '.join(tail)[-600:]}"
    row["error"] = error
    row["traceback"] = text[-4000:]
    return row


# --------------------------------------------------------------------------- the suite


def select_cells(suite: Suite, tasks: list[str] | None = None, strategies: list[str] | None = None) -> list[CellKey]:
    """The suite's cells, optionally only some tasks / strategies (names checked)."""
    for name in tasks or []:
        suite.task(name)
    for name in strategies or []:
        if not name.startswith("baseline-"):
            suite.strategy(name)
    return [k for k in suite.cells() if (not tasks or k.task in tasks) and (not strategies or k.strategy in strategies)]


RETUNE = "re-tune"


def stale_reason(suite: Suite, row: dict[str, Any], tuned: dict[str, Any] | None = None) -> str | None:
    """Why a finished row no longer matches the suite file (its lr, options, training options or teacher changed, it was not
    tuned and now is, or its tuned values changed), else None. ``tuned``: the finished search its strategy trains with now
    (tuned.json, `peftkit.bench.tune.cached_tunes`); None for a tuned strategy means there is none for the current tune
    settings (never run, deleted, or the settings changed): a run then searches again and re-runs the cell (`RETUNE`).

    Baseline rows re-train the suite's baseline strategy, so they compare against that one.
    """
    name = row["strategy"]
    if name in BASELINE_STRATEGIES and not suite.baselines:
        return None
    try:
        spec = suite.tuned_for(name)
    except SuiteError:
        return None  # no longer in the suite: never selected, so never re-run
    if spec.tune and row.get("status") == "ok":
        if row.get("tuned_params") in (None, ""):
            return "not tuned yet"
        if tuned is None:
            return f"{RETUNE}: no finished search for the current tune settings"
        had, params = json.loads(row["tuned_params"]), tuned.get("params") or {}
        if had != params:
            return f"tuned values {json.dumps(had, sort_keys=True)} -> {json.dumps(params, sort_keys=True)}"
        spec = spec.with_tuned(params)
    want_lr = spec.learning_rate()
    if want_lr is None:
        return None
    if row.get("lr") is not None and not math.isclose(float(row["lr"]), want_lr, rel_tol=1e-9):
        return f"lr {float(row['lr']):g} -> {want_lr:g}"
    want_options = spec.options_text()
    if row.get("options") is not None and row["options"] != want_options:
        return f"options {row['options']} -> {want_options}"
    want_train = spec.train_options_text()
    if row.get("train_options") not in (None, "") and row["train_options"] != want_train:
        return f"training options {row['train_options']} -> {want_train}"
    return None


def done_rows(suite: Suite, results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{cell id: row} of the rows in ``results`` (results.json) that belong to ``suite``."""
    return {CellKey.from_row(r).id(): r for r in results.get("rows", []) if r.get("suite") == suite.name}


def pending_cells(suite: Suite, cells: list[CellKey], done: dict[str, dict[str, Any]], retry_failed: bool = False,
                  tuned: dict[tuple[str, str], dict[str, Any]] | None = None) -> tuple[list[CellKey], dict[str, str]]:
    """The cells to run: not done yet, failed (with ``retry_failed``), or stale; and why each stale one is.
    ``tuned``: {(task, strategy): tuned.json} of the searches already finished. ``peftkit bench --list`` asks
    this too, so that it says what a run would do."""
    tuned = tuned or {}
    stale = {k.id(): why for k in cells
             if k.id() in done and (why := stale_reason(suite, done[k.id()], tuned.get((k.task, k.strategy))))}
    todo = [k for k in cells if k.id() not in done or k.id() in stale or (retry_failed and done[k.id()].get("error"))]
    return todo, stale


def run_suite(
    suite_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    tasks: list[str] | None = None,
    strategies: list[str] | None = None,
    retry_failed: bool = False,
    jobs: int = 1,
    cell_timeout: float | None = None,
    keep_checkpoints: str | os.PathLike | None = None,
    progress: bool = True,
    report: bool = True,
    command: str | None = None,
) -> Path:
    """Run every cell not yet in ``output_dir/results.json``; returns the output directory.

    ``jobs`` > 1 runs cells side by side (each still in its own process): memory stays
    per-process, but cells then compete for the cores, so times are not comparable.
    ``keep_checkpoints``: a directory where each cell's checkpoints and logs are kept.
    """
    from tqdm.auto import tqdm

    from .cell import versions

    suite = load_suite(suite_path)
    out = Path(output_dir) if output_dir else default_output_dir(suite)
    results = read_results(out)
    done = done_rows(suite, results)
    cells = select_cells(suite, tasks, strategies)
    from .tune import cached_tunes, ensure_tuned, tunes_for

    tuned = cached_tunes(suite, out, cells)
    todo, stale = pending_cells(suite, cells, done, retry_failed, tuned)
    skipped = len(cells) - len(todo)
    run = {"command": command or command_line(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": machine(), "versions": versions(), "cells_planned": len(todo), "cells_run": 0, "cells_skipped": skipped,
           "searches_run": 0, "jobs": jobs}
    results.update(suite=suite.name, suite_file=portable_path(suite.path), description=suite.description,
                   model=suite.model.hub_id or suite.model.path, budget=suite.budget)
    results.setdefault("runs", []).append(run)
    results["tasks"] = {t.name: {"task": t.task, "metric": t.metric, "hub_id": t.hub_id, "train": t.train, "test": t.test,
                                 "budget": suite.budget_for(t), "max_length": t.max_length, "test_size": t.test_size}
                        for t in suite.tasks}
    results["strategies"] = [s.name for s in suite.strategies]
    results["baselines"], results["targets"] = suite.baselines, suite.targets
    results["tune"] = {s.name: s.tune for s in suite.strategies if s.tune} or None
    if skipped and progress:
        print(f"peftkit bench: {skipped} cell(s) already in {out / RESULTS_JSON}, skipped.", file=sys.stderr)
    for cell_id, why in stale.items():
        what = why if why.startswith(RETUNE) else f"changed in the suite file ({why})"
        print(f"peftkit bench: {cell_id} {what}: running it again.", file=sys.stderr)
    if suite.model.gguf_file and todo:
        from .common import convert_gguf

        try:
            convert_gguf(suite, suite.tasks[0].task)
        except Exception as err:  # noqa: BLE001 - the cells then load the GGUF file and report the error
            print(f"peftkit bench: could not convert {suite.model.gguf_file} to a plain model folder: {err}", file=sys.stderr)
    keep = Path(keep_checkpoints) if keep_checkpoints else None
    order = {k.id(): i for i, k in enumerate(suite.cells())}

    def store(row: dict[str, Any] | None = None) -> None:
        """Write results.json: after each cell (``row``) and each search, so that a run stopped
        part-way records what it ran (``cells_run``, ``searches_run``), not what it planned."""
        if row is not None:
            row.setdefault("run_date", run["date"])  # which run measured it (a suite can be filled over several)
            done[CellKey.from_row(row).id()] = row
            run["cells_run"] += 1
        results["rows"] = sorted(done.values(), key=lambda r: order.get(CellKey.from_row(r).id(), len(order)))
        write_results(out, results)

    def tuned_for(key: CellKey) -> dict[str, Any] | None:
        """The search of the cell's (task, strategy), made now (or read from its cache) if it is not at hand."""
        if (key.task, key.strategy) not in tuned:
            tuned[(key.task, key.strategy)] = ensure_tuned(suite, key.task, key.strategy, out, progress)
            if tunes_for(suite, key.task, key.strategy) is not None:
                run["searches_run"] += 1
                store()
        return tuned.get((key.task, key.strategy))

    store()
    if jobs > 1:  # every search first, so that the cells then run side by side
        for key in todo:
            tuned_for(key)
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp:
        log_dir = Path(tmp)
        bar = tqdm(total=len(todo), desc=f"bench {suite.name}", unit="cell", disable=not progress or not todo)
        if jobs <= 1:
            for key in todo:
                # one at a time, each (task, strategy) is searched just before its first cell, so that a run
                # stopped part-way leaves whole strategies (all their seeds) rather than searches without cells
                chosen = tuned_for(key)
                bar.set_postfix_str(f"{key.task}/{key.strategy}" + (f"/n={key.train_size}" if key.train_size else ""))
                store(run_one(suite, key, log_dir, cell_timeout, keep, chosen))
                bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(run_one, suite, key, log_dir, cell_timeout, keep, tuned.get((key.task, key.strategy)))
                           for key in todo]
                for future in as_completed(futures):
                    store(future.result())
                    bar.update(1)
        bar.close()
    if report:
        from .report import build_report

        build_report(out)
    return out


def label_counter(suite: Suite):
    """``count(row)``: the number of labels a cell's training data has (None for tasks without labels),
    read once per task and training-set size."""
    from ..data import label_names
    from .common import load_task_data

    counts: dict[tuple[str, int | None, int], int | None] = {}

    def count(row: dict[str, Any]) -> int | None:
        key = (row["task"], row.get("train_size"), row.get("seed") or 0)
        if key not in counts:
            task = suite.task(row["task"])
            names = label_names(load_task_data(task, key[1], key[2]), task.task)
            counts[key] = len(names) if names else None
        return counts[key]

    return count


def repredict(output_dir: str | os.PathLike, suite_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Recompute the planner's prediction for every measured cell of ``output_dir/results.json``.

    A prediction reads only the cell's settings (model, task, strategy, quantization, batch size,
    longest training sequence, number of labels), never its measurement, so a planner improved
    after a suite ran can be scored on that suite's measurements without training again. A row from
    before ``next_seq_len`` was recorded gets it from its training data when the data is at hand
    (tokenized once per task, size and seed). The rows keep the old value as
    ``previous_predicted_peak_memory_mb``; results.json records when and with which planner the
    predictions were made. Returns the updated results.
    """
    from .cell import predicted_peak_mb
    from .common import model_source, resolve_device

    out = Path(output_dir)
    results = read_results(out)
    if not results.get("rows"):
        raise ValueError(f"{out / RESULTS_JSON} has no rows to predict.")
    suite = load_suite(suite_path or recorded_suite_file(results))
    model_path, extra = model_source(suite)
    device = resolve_device(suite)
    num_labels = label_counter(suite)
    lengths = _recorded_lengths(suite, model_path, extra)
    for row in results["rows"]:
        if row.get("status") != "ok" or not row.get("seq_len") or row["strategy"] not in {s.name for s in suite.strategies}:
            continue
        task = suite.task(row["task"])
        spec = suite.strategy(row["strategy"])
        if row.get("tuned_params"):  # the options the cell trained with (tuning may have chosen some)
            spec = spec.with_tuned(json.loads(row["tuned_params"]))
        predicted, note = predicted_peak_mb(model_path, task.task, spec, int(row["batch_size"]), int(row["seq_len"]), device,
                                            num_labels=num_labels(row), train_samples=row.get("train_samples"),
                                            max_steps=row.get("max_steps"), gguf_file=extra.get("gguf_file"),
                                            next_len=lengths(row))
        row.setdefault("previous_predicted_peak_memory_mb", row.get("predicted_peak_memory_mb"))
        row.update(predicted_peak_memory_mb=predicted, prediction_note=note or "re-predicted from the cell's settings")
    from .cell import versions

    results["predictions"] = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                              "command": command_line(), "peftkit": versions().get("peftkit")}
    write_results(out, results)
    return results


def _recorded_lengths(suite, model_path: str, extra: dict[str, Any]):
    """``row -> next_seq_len``: the row's own, else read from its training data (None where the data is missing)."""
    found: dict[tuple, int | None] = {}

    def lengths(row: dict[str, Any]) -> int | None:
        if row.get("next_seq_len"):
            return int(row["next_seq_len"])
        key = (row["task"], row.get("train_size"), row.get("seed") or 0)
        if key not in found:
            from transformers import AutoTokenizer

            from ..loading import _load_tokenizer
            from ..tasks import get_task
            from .cell import input_lengths
            from .common import load_task_data

            task = suite.task(row["task"])
            try:
                data = load_task_data(task, row.get("train_size"), int(key[2]))
            except FileNotFoundError:
                found[key] = None
            else:
                tokenizer = _load_tokenizer(AutoTokenizer, model_path, task.task, extra)
                found[key] = input_lengths(get_task(task.task), tokenizer, data["train"], task.max_length)[1]
        if found[key] is not None:
            row["next_seq_len"] = found[key]
        return found[key]

    return lengths


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies under it (a suite run from a checkout's root
    records ``benchmarks/suites/x.yaml``, which still names the file in another clone), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def recorded_suite_file(results: dict[str, Any]) -> str:
    """The suite file a results.json names; a path recorded absolute in another checkout (older results)
    is looked up again from its ``benchmarks/suites/...`` part under the working directory."""
    recorded = Path(results["suite_file"])
    if not recorded.exists() and "benchmarks" in recorded.parts:
        local = Path(*recorded.parts[recorded.parts.index("benchmarks"):])
        if local.exists():
            return str(local)
    return str(recorded)
