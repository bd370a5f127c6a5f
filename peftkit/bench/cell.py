"""One benchmark cell, run in its own process so that its memory is measured clean.

    python -m peftkit.bench.cell --suite SUITE.yaml --task sst2 --strategy lora --seed 0 \\
        --train-size 4800 --result out.json [--work-dir DIR]

Steps: read the data → idle baseline (`measure.MemoryProbe`) → `peftkit.load_model` (quantized
for the quantized cells) → `peftkit.wrap` → `peftkit.train` with the suite's budget (timed) →
evaluate on the test split → `peftkit.save` the adapter (its size on disk) → peak memory →
the planner's prediction for the same cell. A task with ``perturb:`` is scored on a noisy copy of
its test set too (``perturbed_<metric>``); a strategy with ``teacher:`` distills the teacher
strategy's model of the same seed, trained once (`teacher_checkpoint`). The result row is written to ``--result`` as JSON,
also when the cell fails (its ``error`` then says why); the exit status is 0 on success, 1 on a
recorded failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .common import device_label, load_task_data, model_source, preload, resolve_device
from .measure import MemoryProbe, compile_seconds, compile_total, directory_mb
from .results import COLUMNS, EXTRA_COLUMNS
from .suite import BASELINE_STRATEGIES, UNTRAINED, CellKey, StrategySpec, Suite, TaskSpec, load_suite


def versions() -> dict[str, str]:
    """Library versions for a results file (`peftkit.runreport.library_versions`, read without importing)."""
    from ..runreport import library_versions

    return library_versions()


def empty_row(suite: Suite, key: CellKey, task: TaskSpec) -> dict[str, Any]:
    """A row with every column, filled with what is known before the cell runs."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS + EXTRA_COLUMNS)
    row.update(suite=key.suite, task=key.task, strategy=key.strategy, quantization=key.quantization,
               seed=key.seed, train_size=key.train_size, task_type=task.task, metric_name=task.metric,
               max_length=task.max_length, error="", status="failed")
    budget = suite.budget_for(task)
    row.update(batch_size=budget.get("batch_size", 16), max_steps=budget.get("max_steps"))
    return row


# --------------------------------------------------------------------------- evaluation


def evaluate_test(model, tokenizer, task_obj, test, task: TaskSpec, batch_size: int, device: str) -> dict[str, float]:
    """The task's test metrics, as the task scores a benchmark (`peftkit.tasks.Task.bench_score`)."""
    return task_obj.bench_score(model, tokenizer, test, max_length=task.max_length, batch_size=batch_size, device=device,
                                max_new_tokens=task.max_new_tokens)


def score_and_save(model, tokenizer, task_obj, test, task: TaskSpec, budget: dict[str, Any], device: str,
                   row: dict[str, Any], adapter_dir: Path | None) -> None:
    """Fill ``row`` with the test metrics (and their timing), then the checkpoint's size on disk
    when ``adapter_dir`` is given."""
    import peftkit

    start, cpu_start = time.perf_counter(), time.process_time()
    eval_batch = budget.get("eval_batch_size") or budget.get("batch_size", 16)
    metrics = evaluate_test(model, tokenizer, task_obj, test, task, eval_batch, device)
    row.update(eval_seconds=round(time.perf_counter() - start, 2), eval_cpu_seconds=round(time.process_time() - cpu_start, 2),
               metrics=json.dumps(metrics, sort_keys=True), metric_value=round(float(metrics[task.metric]), 6))
    if adapter_dir is not None:
        row["checkpoint_mb"] = directory_mb(peftkit.save(model, adapter_dir))


def input_lengths(task_obj, tokenizer, train, max_length: int) -> tuple[int, int]:
    """The padded lengths of the longest training batch (the longest tokenized example) and of the
    longest batch after it: at most the second-longest example, since peftkit's sampler trains the
    longest batch first (the planner's ``seq_len`` and ``next_len``)."""
    from datasets import DatasetDict

    prepared = task_obj.prepare(DatasetDict(train=train), tokenizer, max_length=max_length)["train"]
    lengths = sorted((len(x) for x in prepared["input_ids"]), reverse=True)
    return lengths[0], lengths[min(1, len(lengths) - 1)]


def score_perturbed(model, tokenizer, task_obj, test, task: TaskSpec, budget: dict[str, Any], device: str,
                    row: dict[str, Any]) -> None:
    """With the task's ``perturb:``, the metrics on the test set with seeded noise (`peftkit.noise`)
    too: ``perturbed_<metric>`` (and every metric in ``perturbed_metrics``)."""
    if not task.perturb:
        return
    from ..noise import perturb_dataset

    noisy = perturb_dataset(test, column="text", **task.perturb)
    eval_batch = budget.get("eval_batch_size") or budget.get("batch_size", 16)
    metrics = evaluate_test(model, tokenizer, task_obj, noisy, task, eval_batch, device)
    row.update({f"perturbed_{task.metric}": round(float(metrics[task.metric]), 6),
                "perturbed_metrics": json.dumps(metrics, sort_keys=True), "perturb": json.dumps(task.perturb, sort_keys=True)})


# --------------------------------------------------------------------------- distillation


_TEACHER_RUN = "PEFTKIT_BENCH_TEACHER_RUN"  # set for a teacher cell run by a student (teacher_checkpoint)


def teacher_cache_dir(suite: Suite, key: CellKey, teacher: StrategySpec) -> Path:
    """Where the teacher cell's work folder (its ``adapter/`` checkpoint) is kept for the students of
    ``key``'s seed: under $PEFTKIT_BENCH_CACHE (else ~/.cache/peftkit/bench)/teachers, named by a hash
    of everything that makes the teacher (model, task, data size, seed, strategy, budget)."""
    import hashlib

    from .common import gguf_cache_dir

    task = suite.task(key.task)
    made_of = json.dumps([suite.model.path, suite.model.gguf_file, task.train, task.max_length, suite.budget_for(task),
                          key.seed, key.train_size, teacher.strategy, teacher.options, teacher.lr, teacher.quantization,
                          teacher.train], sort_keys=True, default=str)
    digest = hashlib.sha256(made_of.encode()).hexdigest()[:12]
    return gguf_cache_dir(suite).parent / "teachers" / f"{suite.name}-{key.task}-{teacher.name}-{key.seed}-{digest}"


def _teacher_once(folder: Path, make) -> Path:
    """``folder/adapter``, made by ``make(tmp)`` into a temporary sibling renamed into place, once:
    a file lock keeps parallel cells (``--jobs``) from making it twice."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "adapter").is_dir():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            make(tmp)
            os.replace(tmp, folder)
    return folder / "adapter"


def teacher_checkpoint(suite: Suite, key: CellKey) -> Path:
    """The trained teacher of ``key``'s strategy: the teacher cell's checkpoint, trained once per seed.

    The teacher's own cell leaves its checkpoint in the cache (`keep_teacher`); a student that finds
    none runs the teacher cell (in a process of its own, so that this cell's memory stays its own).
    """
    import subprocess

    teacher = suite.strategy(suite.strategy(key.strategy).teacher)

    def train_teacher(work: Path) -> None:
        cmd = [sys.executable, "-m", "peftkit.bench.cell", "--suite", str(suite.path), "--task", key.task,
               "--strategy", teacher.name, "--seed", str(key.seed), "--result", str(work / "result.json"),
               "--work-dir", str(work)]
        if key.train_size is not None:
            cmd += ["--train-size", str(key.train_size)]
        env = {**os.environ, _TEACHER_RUN: "1"}  # that cell must not wait for this lock (keep_teacher)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not (work / "adapter").is_dir():
            raise RuntimeError(f"the teacher cell {teacher.name!r} (seed {key.seed}) failed: "
                               f"{(done.stdout + done.stderr).strip()[-600:]}")
        shutil.rmtree(work / "train", ignore_errors=True)

    return _teacher_once(teacher_cache_dir(suite, key, teacher), train_teacher)


def keep_teacher(suite: Suite, key: CellKey, adapter_dir: Path) -> None:
    """A teacher cell's checkpoint, copied into the teacher cache for its students (once)."""
    spec = suite.strategy(key.strategy)
    if os.environ.get(_TEACHER_RUN) or not any(s.teacher == spec.name for s in suite.strategies):
        return
    _teacher_once(teacher_cache_dir(suite, key, spec), lambda tmp: shutil.copytree(adapter_dir, tmp / "adapter"))


# --------------------------------------------------------------------------- the planner


# the TrainConfig options that change what a step holds, passed on to the planner under the same names
PLANNED_TRAIN_OPTIONS = ("gradient_checkpointing", "adversarial", "adv_steps")


def plan_cell(model_path: str, task: str, strategy: StrategySpec, batch_size: int, seq_len: int, device: str,
              num_labels: int | None = None, train_samples: int | None = None, max_steps: int | None = None,
              gguf_file: str | None = None, next_len: int | None = None):
    """The planner's `Plan` of one cell: its strategy, options, training options, data size and lengths.

    ``gguf_file``: the model is that GGUF file in ``model_path`` (its config is read from the file's header)."""
    from ..planner import plan

    model: Any = model_path
    if gguf_file:
        from transformers import AutoConfig

        model = AutoConfig.from_pretrained(model_path, gguf_file=gguf_file)
    options = {strategy.strategy: dict(strategy.options)} if strategy.options else {}
    train = {k: v for k, v in strategy.train.items() if k in PLANNED_TRAIN_OPTIONS and v is not None}
    return plan(model, task=task, batch_size=batch_size, seq_len=seq_len, strategies=[strategy.strategy],
                quantization=(strategy.quantization,), device=device, num_labels=num_labels,
                train_size=train_samples or None, max_steps=max_steps or None, next_len=next_len or None, **train,
                **options)


def predicted_peak_mb(model_path: str, task: str, strategy: StrategySpec, batch_size: int, seq_len: int,
                      device: str, num_labels: int | None = None, train_samples: int | None = None,
                      max_steps: int | None = None, gguf_file: str | None = None,
                      next_len: int | None = None) -> tuple[float | None, str]:
    """The planner's predicted peak (MiB) for one cell, and a note; (None, why) when unavailable.

    Kept in this one function so that a change in `peftkit.planner` is fixed here alone.
    """
    try:
        row = plan_cell(model_path, task, strategy, batch_size, seq_len, device, num_labels, train_samples,
                        max_steps, gguf_file, next_len).rows[0]
    except ImportError:
        return None, "planner not available (peftkit.planner)"
    except Exception as err:  # noqa: BLE001 - a planner bug must not fail the measured cell
        return None, f"planner failed: {type(err).__name__}: {err}"
    if getattr(row, "error", None):
        return None, f"planner refused: {row.error}"
    return round(row.predicted_peak / 2**20, 1), ""


def step_utilization(model, tokenizer, task_obj, train, config, result, steps: int, device: str) -> dict[str, Any]:
    """FLOPs/step, achieved FLOP/s and the fraction of the measured matmul peak (`peftkit.flops`) of the
    training ``result``; counted after the peak memory was read. Empty, with a note, where counting fails:
    the cell stays measured."""
    from ..flops import cell_columns

    try:
        return cell_columns(model, tokenizer, task_obj, train, config, result, steps, device)
    except Exception as err:  # noqa: BLE001 - a FLOP count must not fail the measured cell
        return {"flops_note": f"FLOPs not counted: {type(err).__name__}: {err}"}


# --------------------------------------------------------------------------- the cell


def run_cell(suite: Suite, key: CellKey, work_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Run one strategy cell, filling ``row`` as it goes (a failure leaves what was measured)."""
    import torch

    import peftkit

    from ..data import label_names
    from ..tasks import get_task

    task = suite.task(key.task)
    spec = suite.strategy(key.strategy)
    device = resolve_device(suite)
    budget = suite.budget_for(task)
    untrained = spec.strategy == UNTRAINED
    row.update(device=device_label(device), base_strategy=spec.strategy, options=spec.options_text(),
               lr=spec.learning_rate())
    torch.manual_seed(key.seed)
    data = load_task_data(task, key.train_size, key.seed)
    row.update(train_samples=len(data["train"]), eval_samples=len(data["test"]))
    labels = label_names(data, task.task)
    preload(spec.quantization)

    probe = MemoryProbe("cuda" if device == "cuda" else "cpu")
    probe.start()
    model_path, extra = model_source(suite)
    gguf_file = extra.get("gguf_file")
    model, tokenizer = peftkit.load_model(model_path, task=task.task, labels=labels, quantization=spec.quantization, **extra)
    task_obj = get_task(task.task)
    if untrained:  # the "before" row: the model as loaded, scored like every other cell
        model.requires_grad_(False)
        counts = peftkit.count_parameters(model)
        row.update(trainable_params=0, total_params=counts.total, trainable_percent=0.0, train_seconds=0.0,
                   max_steps=0, checkpoint_mb=0.0)
        score_and_save(model, tokenizer, task_obj, data["test"], task, budget, device, row, None)
        score_perturbed(model, tokenizer, task_obj, data["test"], task, budget, device, row)
        row.update(probe.stop(), status="ok", prediction_note="no training: nothing to predict")
        return row
    model = peftkit.wrap(model, spec.strategy, **spec.options)
    counts = peftkit.count_parameters(model)
    row.update(trainable_params=counts.trainable, total_params=counts.total, trainable_percent=round(counts.percent, 4))

    extra = dict(spec.train)
    if spec.teacher:
        extra["teacher"] = str(teacher_checkpoint(suite, key))
    row["train_options"] = spec.train_options_text()
    config = peftkit.TrainConfig(
        **{"log_every": 10, "save_total_limit": 1, **budget, **extra},
        output_dir=str(work_dir / "train"), seed=key.seed, lr=spec.lr, max_length=task.max_length,
        progress=False, device=device, cpu=device == "cpu",
        overwrite=True,  # a cell re-run (stale, --retry-failed) replaces its own earlier training folder
    )
    from datasets import DatasetDict

    start, cpu_start, compiled = time.perf_counter(), time.process_time(), compile_total()
    result = peftkit.train(model, tokenizer, DatasetDict(train=data["train"]), config, task=task_obj)
    seconds = time.perf_counter() - start
    row["train_cpu_seconds"] = round(time.process_time() - cpu_start, 2)
    if config.max_steps:
        steps, samples = config.max_steps, config.max_steps * config.batch_size * config.gradient_accumulation_steps
    else:
        steps = -(-len(data["train"]) // (config.batch_size * config.gradient_accumulation_steps)) * config.epochs
        samples = len(data["train"]) * config.epochs
    row.update(train_seconds=round(seconds, 2), samples_per_second=round(samples / seconds, 2), max_steps=steps)
    if config.compile:  # how much of the train time went to compiling (None: it fell back to eager at once)
        row["compile_seconds"] = compile_seconds(since=compiled)

    from ..precision import autocast

    with autocast(result.mixed_precision, device):
        # scored in the precision it trained in, as train()'s own test metrics are
        score_and_save(model, tokenizer, task_obj, data["test"], task, budget, device, row, work_dir / "adapter")
        score_perturbed(model, tokenizer, task_obj, data["test"], task, budget, device, row)
    keep_teacher(suite, key, work_dir / "adapter")
    row.update(probe.stop())
    row.update(step_utilization(model, tokenizer, task_obj, data["train"], config, result, steps, device))

    seq_len, next_len = input_lengths(task_obj, tokenizer, data["train"], task.max_length)
    predicted, note = predicted_peak_mb(model_path, task.task, spec, config.batch_size, seq_len, device,
                                        num_labels=len(labels) if labels else None,
                                        train_samples=len(data["train"]), max_steps=steps, gguf_file=gguf_file,
                                        next_len=next_len)
    row.update(seq_len=seq_len, next_seq_len=next_len, predicted_peak_memory_mb=predicted, prediction_note=note, status="ok")
    return row


def execute(suite: Suite, key: CellKey, work_dir: Path) -> dict[str, Any]:
    """Run the cell (or baseline) for ``key``; failures become the row's ``error``."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    task = suite.task(key.task)
    row = empty_row(suite, key, task)
    row.update({k: v for k, v in versions().items() if k in EXTRA_COLUMNS})
    begin, cpu_begin = time.perf_counter(), time.process_time()
    try:
        if key.strategy in BASELINE_STRATEGIES:
            from .baselines import run_baseline

            run_baseline(suite, key, work_dir, row)
        else:
            run_cell(suite, key, work_dir, row)
    except Exception as err:  # noqa: BLE001 - every failure is recorded, the suite goes on
        row["error"] = " ".join(f"{type(err).__name__}: {err}".split())
        row["traceback"] = traceback.format_exc()[-4000:]
        row["status"] = "failed"
    row["cell_seconds"] = round(time.perf_counter() - begin, 1)
    row["cell_cpu_seconds"] = round(time.process_time() - cpu_begin, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--result", required=True, help="write the result row here (JSON)")
    parser.add_argument("--work-dir", default=None, help="checkpoints and logs (default: a temporary directory, removed)")
    parser.add_argument("--tuned", default=None, help="tuned values (JSON) to train with (peftkit.bench.tune)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    suite = load_suite(args.suite)
    if args.tuned:
        suite = suite.with_tuned(args.task, args.strategy, json.loads(args.tuned))
    spec = None if args.strategy in BASELINE_STRATEGIES else suite.strategy(args.strategy)
    key = CellKey(suite.name, args.task, args.strategy, spec.quantization if spec else None, args.seed, args.train_size)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="peftkit-cell-"))
    try:
        row = execute(suite, key, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.result).write_text(json.dumps(row, indent=1, default=str) + "\n")
    return 0 if row["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
