"""Suites that tune each strategy before its cells and run several seeds; the report's mean ± std and
noise marking; `peftkit compare` (issue 12, parts 3-5)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from helpers_bench import write_quick_assets, write_suite
from helpers_training import ROOT, save_tiny_model

from peftkit.bench.report import aggregate, markdown, noise_notes, plot_metric_vs_params, target_notes
from peftkit.bench.suite import SuiteError, load_suite

TUNED_SUITE = """\
name: tuned
model: {{path: {root}/model}}
data_dir: {root}/data
seeds: [0, 1]
budget: {{max_steps: 2, batch_size: 8, eval_batch_size: 16, log_every: 1}}
tune: {{trials: 1, max_steps: 2, search: {{lr: "1e-4:1e-2:log"}}}}
tasks:
  - {{name: sentiment, task: classification, train: sentiment/train.csv, test: sentiment/test.csv, train_size: 40,
      max_length: 32}}
strategies:
  - {{name: untrained, strategy: none}}
  - {{name: lora, strategy: lora, options: {{r: 4, alpha: 8}}}}
  - {{name: bitfit, strategy: bitfit, seeds: [0], tune: false}}
"""


def _row(strategy: str, seed: int, value: float, **extra) -> dict:
    return {
        "suite": "s",
        "task": "sst2",
        "strategy": strategy,
        "quantization": None,
        "seed": seed,
        "train_size": 100,
        "metric_name": "accuracy",
        "metric_value": value,
        "error": "",
        "trainable_params": 1000,
        "peak_memory_mb": 100.0,
        "train_seconds": 10.0,
        "checkpoint_mb": 1.0,
        "base_strategy": strategy,
        "lr": 1e-3,
        **extra,
    }


def _results(rows: list[dict], **extra) -> dict:
    return {
        "suite": "s",
        "strategies": sorted({r["strategy"] for r in rows}, key=[r["strategy"] for r in rows].index),
        "tasks": {"sst2": {"task": "classification", "metric": "accuracy", "budget": {"max_steps": 10}}},
        "rows": rows,
        "runs": [],
        **extra,
    }


# --------------------------------------------------------------------------- the report over seeds


def test_seed_aggregation_mean_std_and_noise():
    rows = (
        [_row("full", s, v) for s, v in enumerate((0.90, 0.91, 0.92))]
        + [_row("lora", s, v) for s, v in enumerate((0.905, 0.90, 0.91))]
        + [_row("bitfit", s, v) for s, v in enumerate((0.80, 0.81, 0.79))]
        + [_row("prompt", 0, 0.7)]
    )
    rows.append(_row("lora", 3, None, error="RuntimeError: boom"))
    agg = {r["strategy"]: r for r in aggregate(rows)}
    assert agg["full"]["metric_value"] == pytest.approx(0.91) and agg["full"]["metric_std"] == pytest.approx(
        0.01
    )
    assert agg["full"]["seeds"] == 3 and agg["full"]["metric_ci95"] == pytest.approx(
        4.303 * 0.01 / 3**0.5, rel=1e-3
    )
    assert (
        agg["lora"]["seeds"] == 3 and "1 of 4 seeds failed: RuntimeError: boom" in agg["lora"]["seed_errors"]
    )
    assert agg["prompt"]["metric_std"] is None and agg["prompt"]["metric_ci95"] is None
    notes = noise_notes(list(agg.values()))
    assert notes[("sst2", "full", 100)].startswith("best mean; within noise: lora")
    assert notes[("sst2", "lora", 100)] == "within noise of full"
    assert notes[("sst2", "bitfit", 100)] == "below full (beyond noise)"
    assert notes[("sst2", "prompt", 100)].startswith("one seed: noise unknown")
    md = markdown(_results(rows), [])
    assert "| full | 3 |" in md and "0.9100 ± 0.0100" in md and "accuracy (mean ± std)" in md
    assert md.count("| lora |") == 1  # one row per strategy, not per seed


def test_targets_compare_means_and_say_when_within_noise():
    rows = (
        [_row("full", s, v) for s, v in enumerate((0.90, 0.91, 0.92))]
        + [_row("lora", s, v) for s, v in enumerate((0.89, 0.90, 0.91))]
        + [_row("bitfit", s, v) for s, v in enumerate((0.80, 0.81, 0.79))]
    )
    targets = {"task": "sst2", "reference": "full", "max_gap": {"lora": 0.005, "bitfit": 0.02}}
    notes = target_notes(_results(rows, targets=targets))
    assert (
        "**missed**" in notes[("sst2", "lora")]
        and "within noise: 95% intervals overlap" in notes[("sst2", "lora")]
    )
    assert "(-1.0 pt)" in notes[("sst2", "lora")]
    assert "**missed**" in notes[("sst2", "bitfit")] and "beyond noise" in notes[("sst2", "bitfit")]


def test_metric_vs_params_with_many_series(tmp_path):
    names = [f"s{i}" for i in range(14)]
    rows = [
        _row(n, s, 0.6 + 0.02 * i + 0.005 * s, trainable_params=10 ** (2 + i % 6))
        for i, n in enumerate(names)
        for s in range(3)
    ]
    path = plot_metric_vs_params(_results(rows), tmp_path / "m.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- suite files


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    return write_quick_assets(tmp_path_factory.mktemp("tuned"))


@pytest.mark.parametrize(
    "change, message",
    [
        (("tune: {trials: 1,", "tune: {trails: 1,"), "unknown key(s) trails"),
        (("tune: {trials: 1,", "tune: {trials: 0,"), "tune.trials: expected a positive integer"),
        (
            ('search: {lr: "1e-4:1e-2:log"}', 'search: {r: "4,8"}'),
            "strategy bitfit",
        ),  # bitfit has no r... once tuned
        (('search: {lr: "1e-4:1e-2:log"}', 'search: {lr: "1e-2:1e-4"}'), "low must be below high"),
        (("seeds: [0, 1]", "seeds: []"), "give one or more different seeds"),
        (("seeds: [0, 1]", "seeds: [0, 0]"), "give one or more different seeds"),
    ],
)
def test_tune_and_seed_settings_are_checked(tmp_path, quick_dir, change, message):
    text = TUNED_SUITE.format(root=quick_dir).replace(*change)
    if "strategy bitfit" in message:
        text = text.replace("seeds: [0], tune: false", "seeds: [0]")
        message = "strategy bitfit on task sentiment: --search r: strategy 'bitfit' has no option 'r'"
    with pytest.raises(SuiteError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_suite(write_suite(tmp_path / "s.yaml", text))


def test_tuned_suite_cells_and_holdout(tmp_path, quick_dir):
    from peftkit.bench.common import load_task_data

    suite = load_suite(write_suite(tmp_path / "s.yaml", TUNED_SUITE.format(root=quick_dir)))
    assert [(k.strategy, k.seed) for k in suite.cells()] == [
        ("untrained", 0),
        ("lora", 0),
        ("lora", 1),
        ("bitfit", 0),
    ]
    assert suite.strategy("lora").tune == {"trials": 1, "max_steps": 2, "search": {"lr": "1e-4:1e-2:log"}}
    assert suite.strategy("bitfit").tune is None and suite.task("sentiment").holdout
    # No validation file: tuning's seeded carve-out of train is kept out of every cell's training set.
    from peftkit.data import load_data

    carved = load_data(None, "classification", train=str(quick_dir / "data/sentiment/train.csv"), seed=0)[
        "validation"
    ]
    held = set(carved["text"])
    for seed in (0, 1):
        train = load_task_data(suite.task("sentiment"), 40, seed)["train"]
        assert len(train) == 40 and not held & set(train["text"])
    tuned = suite.with_tuned("sentiment", "lora", {"lr": 0.004, "r": 8, "warmup_ratio": 0.05})
    assert tuned.strategy("lora").lr == 0.004 and tuned.strategy("lora").options == {"r": 8, "alpha": 4 * 2}
    assert (
        tuned.budget_for(tuned.task("sentiment"))["warmup_ratio"] == 0.05
        and suite.strategy("lora").lr is None
    )


@pytest.mark.slow
def test_tuned_suite_end_to_end_and_cached(tmp_path, quick_dir, capsys):
    from peftkit.bench.runner import run_suite

    suite = write_suite(tmp_path / "s.yaml", TUNED_SUITE.format(root=quick_dir))
    out = run_suite(suite, tmp_path / "out", progress=True)
    assert "tuning sentiment/lora" in capsys.readouterr().err
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"seed", "tuned_params", "tune_trials"} <= set(rows[0])
    lora = [r for r in rows if r["strategy"] == "lora"]
    assert [r["seed"] for r in lora] == ["0", "1"] and all(not r["error"] for r in lora)
    params = json.loads(lora[0]["tuned_params"])
    assert lora[0]["tune_trials"] == "1" and float(lora[0]["lr"]) == pytest.approx(params["lr"])
    assert {r["tuned_params"] for r in rows if r["strategy"] != "lora"} == {""}
    (cache,) = (out / "tune" / "sentiment").glob("lora-*/tuned.json")
    assert json.loads(cache.read_text())["params"] == params
    md = (out / "results.md").read_text()
    assert "## Tuned settings" in md and "| sentiment | lora | 1 |" in md
    before = (out / "results.json").read_text()
    run_suite(suite, tmp_path / "out", progress=True)  # resumed: nothing tuned, nothing re-run
    err = capsys.readouterr().err
    assert "tuning" not in err and "4 cell(s) already in" in err
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(before)["rows"]


# --------------------------------------------------------------------------- peftkit compare


def _peftkit(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "peftkit.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


DEMO = ROOT / "peftkit" / "demo_data"
DEMO_FILES = (
    "--train",
    str(DEMO / "train.csv"),
    "--validation",
    str(DEMO / "validation.csv"),
    "--test",
    str(DEMO / "test.csv"),
)


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--strategies", "lora", "loraa"), "--strategies: unknown strategy 'loraa'. Valid: full, "),
        (("--seeds", "0"), "--seeds 0: give at least 1."),
        (("--tune-trials", "-1"), "--tune-trials -1: give at least 0."),
        (("--strategies", "lora", "lora"), "names a strategy twice"),
    ],
)
def test_compare_refuses_bad_input(tmp_path, flags, message):
    proc = _peftkit(
        "compare", "--model", "m", *DEMO_FILES, "--output", str(tmp_path / "o"), *flags, timeout=120
    )
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_compare_help_is_torch_free():
    code = (
        "import sys; from peftkit.cli import build_parser; print(build_parser()[1]['compare'].format_help()); "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "--tune-trials" in proc.stdout and proc.stdout.strip().endswith("False")


@pytest.mark.slow
def test_compare_end_to_end_on_demo_data(tmp_path):
    labels = sorted({r["label"] for r in csv.DictReader((DEMO / "train.csv").open())})
    model = save_tiny_model(tmp_path / "model", labels=labels)
    out = tmp_path / "cmp"
    proc = _peftkit(
        "compare",
        "--model",
        str(model),
        *DEMO_FILES,
        "--strategies",
        "lora",
        "bitfit",
        "--tune-trials",
        "1",
        "--seeds",
        "2",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--train-size",
        "48",
        "--budget",
        "2GiB",
        "--output",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in (
        "results.md",
        "results.csv",
        "results.json",
        "recommendation.md",
        "suite.yaml",
        "metric_vs_params.png",
    ):
        assert (out / name).is_file(), name
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted((r["strategy"], r["seed"]) for r in rows) == [
        ("bitfit", 0),
        ("bitfit", 1),
        ("lora", 0),
        ("lora", 1),
    ]
    assert all(not r["error"] and r["tune_trials"] == 1 for r in rows)
    text = (out / "recommendation.md").read_text()
    assert (
        "**Best accuracy on test**" in text and "mean ± std of 2 seeds" in text and "budget of 2GiB" in text
    )
    assert "2.0 GiB" in text and "Recommendation:" in text  # the planner's table and pick for the budget
    assert text in proc.stdout
    assert len(list((out / "tune" / "data").glob("*/tuned.json"))) == 2
