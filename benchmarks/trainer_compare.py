"""peftkit against HF Trainer + PEFT on the SST-2 LoRA cell, side by side (issue 18).

    HF_HUB_OFFLINE=1 python benchmarks/trainer_compare.py                    # 3 rounds, on an idle machine
    python benchmarks/trainer_compare.py --dry-run                           # print the commands, run nothing
    HF_HUB_OFFLINE=1 python benchmarks/trainer_compare.py --rounds 1 --steps 4 --train-size 128 \\
        --output /tmp/trainer-compare                                        # a smoke run (minutes)

The arms are cells of ``benchmarks/suites/trainer_compare.yaml``, which holds main's SST-2 LoRA cell
(the same model, data, budget, LoRA options and lr; a test keeps them equal):

- ``lora``: peftkit with its defaults;
- ``lora-compile``: peftkit with ``compile: true``;
- ``baseline-trainer-defaults``: HF Trainer + PEFT, ``TrainingArguments`` at their defaults except what
  defines the job (random batches, float32, no compiling);
- ``baseline-trainer-best``: HF Trainer + PEFT with ``group_by_length``, ``torch_compile=True`` and
  ``bf16=True`` where the CPU multiplies bfloat16 natively (`peftkit.bench.baselines`).

Each round runs every arm once, each in its own process (``python -m peftkit.bench.cell ...``, as
``benchmarks/results/main/trainer_repeats.md`` did), the order rotated by one arm per round so that no
arm always runs first; each compiles cold, in an empty TorchInductor cache of its own (``--warm-cache``:
the default, shared cache, which later runs reuse). The train time is the cell's timed region
(tokenizing, training with any compiling, saving the adapter). Per arm the report gives every run's train time (ascending), the median,
how many times faster than Trainer's defaults and than Trainer's best flags (ratio of medians, and the
median of the round-by-round ratios), the accuracy, and the seconds spent compiling. The goal: peftkit's
defaults at least 1.3x faster than Trainer's defaults and no slower than Trainer's best flags, at equal
accuracy. Writes ``OUTPUT/trainer_compare.md`` and ``OUTPUT/trainer_compare.json`` (default
benchmarks/results/main); ``--steps`` / ``--train-size`` make a smaller run, marked as a smoke run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "suites" / "trainer_compare.yaml"
OUTPUT = ROOT / "benchmarks" / "results" / "main"
ARMS = ("lora", "lora-compile", "baseline-trainer-defaults", "baseline-trainer-best")
DEFAULTS, BEST, OURS = "baseline-trainer-defaults", "baseline-trainer-best", "lora"
LABELS = {
    "lora": "peftkit, defaults (`lora`)",
    "lora-compile": "peftkit, `compile: true` (`lora-compile`)",
    "baseline-trainer": "HF Trainer + PEFT, grouped by length (`baseline-trainer`)",
    "baseline-trainer-defaults": "HF Trainer + PEFT, defaults",
    "baseline-trainer-best": "HF Trainer + PEFT, best flags",
}
GOALS = {DEFAULTS: 1.3, BEST: 1.0}  # peftkit defaults at least this many times faster than the arm
TASK, SEED, TRAIN_SIZE = "sst2", 0, 9600


def schedule(arms: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, arm) in run order: every arm once per round, the order rotated by one each round."""
    return [(r, arms[(r + i) % len(arms)]) for r in range(rounds) for i in range(len(arms))]


def cell_command(suite: Path, arm: str, train_size: int, result: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "peftkit.bench.cell",
        "--suite",
        str(suite),
        "--task",
        TASK,
        "--strategy",
        arm,
        "--seed",
        str(SEED),
        "--train-size",
        str(train_size),
        "--result",
        str(result),
    ]


def suite_with_steps(suite: Path, steps: int, folder: Path) -> Path:
    """A copy of ``suite`` whose budget trains ``steps`` steps (for a smoke run)."""
    import yaml

    raw = yaml.safe_load(suite.read_text())
    raw["budget"] = {**raw.get("budget", {}), "max_steps": steps}
    for task in raw.get("tasks", []):
        task.get("budget", {}).pop("max_steps", None)
    path = folder / f"{suite.stem}-{steps}steps.yaml"
    path.write_text(
        f"# {suite.name} with max_steps: {steps} (benchmarks/trainer_compare.py --steps)\n"
        + yaml.safe_dump(raw)
    )
    return path


def run_cell(cmd: list[str], result: Path, log: Path, compile_cache: Path | None = None) -> dict[str, Any]:
    """Run one cell process; its result row, with the process's wall and CPU seconds (its compile workers
    included). ``compile_cache``: a TorchInductor cache folder of its own, removed afterwards (a cold compile)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if compile_cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        row = json.loads(result.read_text())
    except (OSError, ValueError):
        tail = " | ".join(line for line in log.read_text(errors="replace").splitlines()[-3:] if line.strip())
        row = {
            "status": "failed",
            "error": f"the cell exited with status {done.returncode} without a result: {tail}",
        }
    row.pop("traceback", None)
    if compile_cache is not None:
        shutil.rmtree(compile_cache, ignore_errors=True)
    row.update(
        process_wall_seconds=round(wall, 1), process_cpu_seconds=round(cpu, 1), returncode=done.returncode
    )
    return row


# --------------------------------------------------------------------------- the summary


def _ok(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok" and isinstance(row.get("train_seconds"), (int, float))


def _median(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]], arms: list[str]) -> dict[str, dict[str, Any]]:
    """Per arm: train times, median, speed-up against Trainer's defaults and best flags, accuracy, compile time.

    ``runs``: {"round", "arm", "row"} records. A speed-up is the other arm's train time / this arm's
    (above 1: this arm is faster): of the medians, and the median of the ratios within each round."""
    rows = {arm: [r for r in runs if r["arm"] == arm] for arm in arms}
    by_round = {(r["arm"], r["round"]): r["row"] for r in runs if _ok(r["row"])}
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        ok = [r["row"] for r in rows[arm] if _ok(r["row"])]
        times = sorted(row["train_seconds"] for row in ok)
        out[arm] = {
            "runs": len(rows[arm]),
            "failed": [r["row"].get("error", "") for r in rows[arm] if not _ok(r["row"])],
            "train_seconds": times,
            "median_train_seconds": _median(times),
            "accuracy": [row.get("metric_value") for row in ok],
            "median_accuracy": _median([row.get("metric_value") for row in ok]),
            "eval_samples": next((row.get("eval_samples") for row in ok), None),
            "compile_seconds": _median([row.get("compile_seconds") for row in ok]),
            "median_process_wall_seconds": _median([row.get("process_wall_seconds") for row in ok]),
            "mixed_precision": sorted({str(row.get("mixed_precision")) for row in ok}),
            "trainer_args": next((row.get("trainer_args") for row in ok if row.get("trainer_args")), None),
            "trainer_note": next((row.get("trainer_note") for row in ok if row.get("trainer_note")), None),
            "train_options": next((row.get("train_options") for row in ok if row.get("train_options")), None),
        }
    for arm in arms:
        for ref, key in ((DEFAULTS, "vs_trainer_defaults"), (BEST, "vs_trainer_best")):
            mine, theirs = out[arm]["median_train_seconds"], out.get(ref, {}).get("median_train_seconds")
            out[arm][key] = theirs / mine if mine and theirs else None
            paired = [
                by_round[ref, n]["train_seconds"] / by_round[arm, n]["train_seconds"]
                for (a, n) in by_round
                if a == arm and (ref, n) in by_round
            ]
            out[arm][key + "_paired"] = _median(paired)
    return out


def verdicts(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The goal's lines: peftkit's defaults against Trainer's defaults and best flags, at equal accuracy."""
    ours = summary.get(OURS)
    lines = []
    for ref, goal in GOALS.items():
        if not ours or ref not in summary:
            continue
        key = "vs_trainer_defaults" if ref == DEFAULTS else "vs_trainer_best"
        speedup, theirs = ours[key], summary[ref]
        if speedup is None:
            lines.append(f"- against {LABELS[ref]}: not measured (a failed arm).")
            continue
        met = "met" if speedup >= goal else "**missed**"
        lines.append(
            f"- against {LABELS[ref]}: peftkit's defaults {speedup:.2f}x as fast (goal at least {goal:g}x): "
            f"{met}; accuracy {_acc(ours)} against {_acc(theirs)} ({accuracy_verdict(ours, theirs)})."
        )
    return lines


def _acc(arm: dict[str, Any]) -> str:
    return "n/a" if arm["median_accuracy"] is None else f"{arm['median_accuracy']:.4f}"


def accuracy_verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Whether two accuracies differ by less than twice the binomial standard error of the test set."""
    if a["median_accuracy"] is None or b["median_accuracy"] is None or not a["eval_samples"]:
        return "not comparable"
    p = (a["median_accuracy"] + b["median_accuracy"]) / 2
    se = math.sqrt(max(p * (1 - p), 1e-12) / a["eval_samples"])
    gap = a["median_accuracy"] - b["median_accuracy"]
    within = abs(gap) <= 2 * se
    return f"{100 * gap:+.1f} pt, {'within' if within else 'beyond'} 2 standard errors ({200 * se:.1f} pt)"


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def markdown(record: dict[str, Any]) -> str:
    summary, arms = record["summary"], record["arms"]
    env, smoke = record["environment"], record["overrides"]
    title = "# peftkit against HF Trainer + PEFT: the SST-2 LoRA cell, side by side"
    lines = [title, ""]
    if smoke:
        lines += [
            f"**Smoke run** ({', '.join(f'{k} {v}' for k, v in smoke.items())}): it checks the machinery; "
            "its times are not a measurement.",
            "",
        ]
    m = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines += [
        f"Measured {record['date']} on {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM"
        f"{', GPU ' + m['gpu'] if m.get('gpu') else ''} ({m.get('os')}); {env['torch_threads']} torch threads "
        f"(OMP_NUM_THREADS={env.get('OMP_NUM_THREADS') or 'unset'}); {versions}.",
        "",
        "```bash",
        record["command"],
        "```",
        "",
        f"{record['rounds']} rounds; each round runs every arm once, each as its own process, the order rotated "
        "by one arm per round:",
        "",
        "```bash",
        *(shlex.join(c) for c in record["commands"]),
        "```",
        "",
        "Train time: the cell's timed region (tokenizing, training, compiling where asked, saving the adapter). "
        f"TorchInductor's compile cache: {record.get('compile_cache', 'shared')} (TORCHINDUCTOR_CACHE_DIR). "
        "Speed-up = the other arm's median train time / this arm's (above 1: this arm is faster); in brackets "
        "the median of the ratios within each round.",
        "",
        "| trained by | train time of each run, ascending (s) | median (s) | speed-up vs Trainer defaults | "
        "speed-up vs Trainer best | accuracy | compile (s) | whole process, median wall (s) | precision |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arm in arms:
        s = summary[arm]
        times = ", ".join(f"{t:.2f}" for t in s["train_seconds"]) or "—"
        if s["failed"]:
            times += f" ({len(s['failed'])} failed: {s['failed'][0][:120]})"
        accs = sorted(set(s["accuracy"]))
        acc = (
            "—"
            if not accs
            else (f"{accs[0]:.4f}" if len(accs) == 1 else f"{_acc(s)} ({accs[0]:.4f}-{accs[-1]:.4f})")
        )
        lines.append(
            f"| {LABELS.get(arm, arm)} | {times} | {_fmt(s['median_train_seconds'])} | "
            f"{_fmt(s['vs_trainer_defaults'], suffix='x')} ({_fmt(s['vs_trainer_defaults_paired'], suffix='x')}) | "
            f"{_fmt(s['vs_trainer_best'], suffix='x')} ({_fmt(s['vs_trainer_best_paired'], suffix='x')}) | {acc} | "
            f"{_fmt(s['compile_seconds'], 1)} | {_fmt(s['median_process_wall_seconds'], 1)} | "
            f"{'/'.join(s['mixed_precision']) or '—'} |"
        )
    lines += [
        "",
        "Goal (issue 18): peftkit's defaults at least 1.3x as fast as Trainer's defaults and no slower than "
        "Trainer's best flags, at equal accuracy.",
        "",
        *verdicts(summary),
        "",
    ]
    lines += ["What each Trainer arm passed to `TrainingArguments` (besides `output_dir`):", ""]
    for arm in arms:
        s = summary[arm]
        if s["trainer_args"]:
            note = f" {s['trainer_note']}." if s["trainer_note"] else ""
            lines.append(f"- {LABELS.get(arm, arm)}: `{s['trainer_args']}`.{note}")
        elif s["train_options"] and s["train_options"] != "{}":
            lines.append(f"- {LABELS.get(arm, arm)}: peftkit training options `{s['train_options']}`.")
    lines += [
        "",
        "Every arm trains the same LoRA cell (model, data subset, LoRA options and target modules, lr, "
        "AdamW with weight decay off biases and LayerNorm weights, linear schedule and warmup, clipping, "
        "batch, steps, seed); accuracies differ where the batches are drawn by different random generators "
        "(and by compiled or bfloat16 arithmetic). Raw rows: trainer_compare.json.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def environment() -> dict[str, Any]:
    import torch

    from peftkit.bench.runner import machine
    from peftkit.runreport import library_versions

    return {
        "machine": machine(),
        "versions": library_versions(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def shown(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def command_text(argv: list[str]) -> str:
    env = [
        f"{k}={shlex.quote(os.environ[k])}"
        for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "PEFTKIT_DATA_DIR")
        if os.environ.get(k)
    ]
    return " ".join([*env, "python", "benchmarks/trainer_compare.py", *map(shlex.quote, argv)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite", type=Path, default=SUITE, help="the suite holding the arms (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per arm (default: %(default)s)")
    parser.add_argument(
        "--arms", nargs="+", default=list(ARMS), help="cells of the suite (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="override the budget's max_steps (a smoke run)"
    )
    parser.add_argument(
        "--train-size", type=int, default=TRAIN_SIZE, help="training sentences (default: %(default)s)"
    )
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help="where the .md and .json go (default: %(default)s)"
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="let the runs share TorchInductor's default cache (default: each run compiles cold, in an empty cache "
        "of its own, as a user's first run does; a shared cache lets later runs reuse earlier runs' compiled code)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands in run order and exit")
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.steps is not None and args.steps < 1) or args.train_size < 1:
        parser.error("--rounds, --steps and --train-size take positive numbers.")
    overrides = {"max_steps": args.steps} if args.steps else {}
    if args.train_size != TRAIN_SIZE:
        overrides["train_size"] = args.train_size

    from peftkit.bench.suite import BASELINE_STRATEGIES, SuiteError, load_suite

    try:
        loaded = load_suite(args.suite)
        for arm in args.arms:
            if arm not in BASELINE_STRATEGIES:
                loaded.strategy(arm)
            elif not loaded.baselines:
                raise SuiteError(f"{args.suite} has no baselines: section, so it cannot run {arm}.")
    except SuiteError as err:
        parser.error(str(err))
    # rows, logs and a --steps copy of the suite (a dry run without --steps creates nothing)
    work = (
        Path("WORK") if args.dry_run and not args.steps else Path(tempfile.mkdtemp(prefix="trainer-compare-"))
    )
    suite = suite_with_steps(args.suite, args.steps, work) if args.steps else args.suite
    order = schedule(args.arms, args.rounds)
    commands = {
        (n, arm): cell_command(suite, arm, args.train_size, work / f"{arm}-r{n}.json") for n, arm in order
    }
    if args.dry_run:
        for n, arm in order:
            cache = "" if args.warm_cache else f"TORCHINDUCTOR_CACHE_DIR={work / f'inductor-{arm}-r{n}'} "
            print(cache + shlex.join(commands[n, arm]))
        return 0

    record: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_text(argv),
        "suite": shown(args.suite),
        "arms": args.arms,
        "rounds": args.rounds,
        "overrides": overrides,
        "environment": environment(),
        "commands": [
            ["python", *cell_command(Path(shown(suite)), arm, args.train_size, Path(f"{arm}.json"))[1:]]
            for arm in args.arms
        ],
        "compile_cache": "shared (TorchInductor's default)"
        if args.warm_cache
        else "cold: an empty one per run",
        "runs": [],
    }
    started = time.perf_counter()
    for i, (n, arm) in enumerate(order, 1):
        cache = None if args.warm_cache else work / f"inductor-{arm}-r{n}"
        row = run_cell(commands[n, arm], work / f"{arm}-r{n}.json", work / f"{arm}-r{n}.log", cache)
        record["runs"].append({"round": n, "arm": arm, "row": row})
        status = (
            f"{row['train_seconds']:.2f} s train" if _ok(row) else f"FAILED: {row.get('error', '')[:200]}"
        )
        print(
            f"[{i}/{len(order)}] round {n + 1} {arm}: {status} ({row['process_wall_seconds']:.0f} s process)",
            flush=True,
        )
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    record["summary"] = summarize(record["runs"], args.arms)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "trainer_compare.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (args.output / "trainer_compare.md").write_text(markdown(record))
    print(
        f"wrote {args.output / 'trainer_compare.md'} ({record['wall_seconds']:.0f} s); logs and rows in {work}"
    )
    print("\n".join(verdicts(record["summary"])))
    return 0 if all(_ok(r["row"]) for r in record["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
