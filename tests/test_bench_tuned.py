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
from helpers_training import ROOT, TOPICS, save_tiny_model, write_topic_csv

from peftkit.bench.report import (
    aggregate,
    markdown,
    noise_notes,
    plot_metric_vs_params,
    plot_sweep,
    target_notes,
)
from peftkit.bench.suite import SuiteError, load_suite
from peftkit.compare import SCORES_SOURCE

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

def test_readme_section_says_which_gaps_are_noise_and_keeps_goals_out():
    """The README's generated section names the best mean and what is within its noise; the suite's own
    targets are a link to results.md, never a verdict in the README (issue 12, part 4)."""
    from peftkit.bench.report import readme_section

    rows = (
        [_row("full", s, v) for s, v in enumerate((0.90, 0.91, 0.92))]
        + [_row("lora", s, v) for s, v in enumerate((0.905, 0.90, 0.91))]
        + [_row("bitfit", s, v) for s, v in enumerate((0.80, 0.81, 0.79))]
        + [_row("prompt", 0, 0.7)]
    )
    for r in rows:
        r["trainable_percent"] = 0.5
    targets = {"task": "sst2", "reference": "full", "max_gap": {"bitfit": 0.02}, "tried": "nothing"}
    text = readme_section(_results(rows, targets=targets), "benchmarks/results/s")
    assert "- sst2: best mean `full`; within noise: lora." in text
    # a single seed above every mean is not called the best mean: its noise is unknown
    single = readme_section(_results(rows + [{**_row("lora-4bit", 0, 0.95), "trainable_percent": 0.5}]), "r")
    assert "- sst2: best mean `full`; within noise: lora." in single
    assert "0.910 ± 0.010" in text
    assert "Target on" not in text and "missed" not in text and "goal" not in text
    assert "targets and whether they were met: [benchmarks/results/s/results.md]" in text
    # without lora, full is beyond noise of every strategy with seeds; prompt has one seed, so it is not counted
    text = readme_section(_results([r for r in rows if r["strategy"] != "lora"]), "r")
    assert "- sst2: best mean `full`; beyond noise of the others with several seeds." in text
    assert "targets" not in text



def test_sweep_table_over_seeds_shows_mean_and_std_per_size(tmp_path):
    """A data-size sweep with several seeds: each size's cell is the mean ± std of its seeds."""
    rows = [_row(name, s, v, train_size=size) for name, base in (("full", 0.80), ("lora", 0.70))
            for size in (64, 256) for s, v in enumerate((base, base + 0.02, base + 0.04))]
    rows.append(_row("lora", 3, None, error="RuntimeError: boom", train_size=256))
    md = markdown(_results(rows), [])
    assert "accuracy by number of training examples (mean ± std over seeds):" in md
    assert "| full | 0.820 ± 0.020 | 0.820 ± 0.020 |" in md
    assert "| lora | 0.720 ± 0.020 | 0.720 ± 0.020 |" in md  # the failed seed is left out
    # one seed a cell: the plain value, as before
    single = markdown(_results([r for r in rows if r["seed"] == 0]), [])
    assert "| full | 0.8000 | 0.8000 |" in single and "over seeds" not in single
    # the README section says, size by size, which differences are within noise
    from peftkit.bench.report import readme_section

    for r in rows:
        r["trainable_percent"] = 0.5
    text = readme_section(_results(rows), "r")
    assert "| full | 0.820 ± 0.020 | 0.820 ± 0.020 |" in text
    assert "- sst2, 64 examples: best mean `full`; beyond noise of the others." in text
    assert "- sst2, 256 examples: best mean `full`; beyond noise of the others." in text
    assert "best mean" not in readme_section(_results([r for r in rows if r["seed"] == 0]), "r")
    path = plot_sweep(_results(rows), tmp_path / "sweep.png")  # with error bars over seeds
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_strategy_whose_seeds_disagree_is_marked_and_never_recommended():
    """A diverged seed widens the interval until the strategy is "within noise" of the best: the notes show
    the seeds' range and `peftkit compare` does not recommend it, however cheap."""
    from peftkit.compare import pick, recommendation

    values = {"full": (0.826, 0.826, 0.824), "lora": (0.719, 0.741, 0.0), "adapter": (0.80, 0.82, 0.81)}
    memory = {"full": 1500.0, "lora": 900.0, "adapter": 1100.0}
    rows = [_row(n, s, v, peak_memory_mb=memory[n]) for n in values for s, v in enumerate(values[n])]
    agg = aggregate(rows)
    notes = noise_notes(agg)
    assert notes[("sst2", "full", 100)] == "best mean; within noise: lora (seeds 0.000 to 0.741), adapter"
    assert notes[("sst2", "lora", 100)] == "within noise of full (seeds 0.000 to 0.741)"
    assert notes[("sst2", "adapter", 100)] == "within noise of full"  # seeds within 5 points: no range
    best, close, cheap = pick(agg)
    assert best["strategy"] == "full" and {r["strategy"] for r in close} == {"full", "lora", "adapter"}
    assert cheap["strategy"] == "adapter"  # lora is cheaper, but one of its seeds diverged
    text = recommendation(_results(rows))
    assert "**Use `adapter`:" in text and "  - least peak memory: `adapter` (1,100 MiB)" in text
    assert "so not recommended: `lora` (0.0000 to 0.7410)" in text


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
        (("tune: {trials: 1,", "tune: {default_trial: yes please, trials: 1,"), "tune.default_trial: expected bool"),
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
    from peftkit.bench.tune import settings_key, tune_options

    task, lora = suite.task("sentiment"), suite.strategy("lora")
    assert tune_options(suite, task, lora)["default_trial"] is False  # searches cached before it stay valid
    opted = load_suite(write_suite(tmp_path / "t.yaml", TUNED_SUITE.format(root=quick_dir).replace(
        "tune: {trials: 1,", "tune: {default_trial: true, trials: 1,")))
    assert tune_options(opted, task, opted.strategy("lora"))["default_trial"] is True
    assert settings_key(opted, task, opted.strategy("lora")) != settings_key(suite, task, lora)  # a new search
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


@pytest.mark.subprocess
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


def _done_tuned_suite(tmp_path, quick_dir, tuned_lr=0.004):
    """TUNED_SUITE with every cell done (lora trained at ``tuned_lr``) and its lora search cached."""
    from peftkit.bench.results import write_results
    from peftkit.bench.tune import TUNED_JSON, tune_dir
    from peftkit.strategies import default_learning_rate

    path = write_suite(tmp_path / "s.yaml", TUNED_SUITE.format(root=quick_dir))
    suite, out = load_suite(path), tmp_path / "out"
    rows = []
    for key in suite.cells():
        spec = suite.strategy(key.strategy)
        tuned = spec.tune is not None
        rows.append(
            {
                **vars(key),
                "status": "ok",
                "error": "",
                "metric_value": 0.5,
                "lr": tuned_lr if tuned else spec.learning_rate(),
                "options": spec.options_text(),
                "train_options": spec.train_options_text(),
                "tuned_params": json.dumps({"lr": tuned_lr}) if tuned else "",
            }
        )
    write_results(out, {"suite": suite.name, "rows": rows})
    folder = tune_dir(out, suite, suite.task("sentiment"), suite.strategy("lora"))
    folder.mkdir(parents=True)
    (folder / TUNED_JSON).write_text(json.dumps({"params": {"lr": tuned_lr}, "trials": 1, "requested": 1}))
    assert default_learning_rate("lora") != tuned_lr
    return path, out, folder / TUNED_JSON


def _listed(capsys, suite, out) -> dict[str, str]:
    from peftkit.bench import main

    assert main([str(suite), "--output", str(out), "--list"]) == 0
    return {
        line.split()[1].split("/")[2] + "/" + line.split()[1].split("/")[4]: line
        for line in capsys.readouterr().out.splitlines()
    }


@pytest.mark.subprocess
def test_list_says_what_a_run_would_do_with_tuned_cells(tmp_path, quick_dir, capsys, monkeypatch):
    """--list reads the cached searches as a run does: a tuned cell whose search is missing (deleted, or the
    tune settings changed) is todo (re-tune), and a run then tunes it again and re-runs exactly those cells."""
    import peftkit.bench.runner as runner
    import peftkit.bench.tune as bench_tune

    suite, out, cache = _done_tuned_suite(tmp_path, quick_dir)
    listed = _listed(capsys, suite, out)
    assert all(line.startswith("done ") for line in listed.values()), listed

    cache.write_text(
        json.dumps({"params": {"lr": 0.005}, "trials": 1, "requested": 1})
    )  # searched again since
    listed = _listed(capsys, suite, out)
    assert listed["lora/0"].startswith("stale ") and '{"lr": 0.004} -> {"lr": 0.005}' in listed["lora/0"]

    cache.unlink()
    listed = _listed(capsys, suite, out)
    assert listed["lora/0"].startswith("todo ") and "(re-tune: no finished search" in listed["lora/0"]
    assert listed["lora/1"].startswith("todo ") and listed["bitfit/0"].startswith("done ")
    assert listed["untrained/0"].startswith("done ")

    changed = write_suite(
        tmp_path / "s.yaml", suite.read_text().replace("max_steps: 2, search", "max_steps: 3, search")
    )
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(
        json.dumps({"params": {"lr": 0.004}, "trials": 1, "requested": 1})
    )  # the old settings' folder
    listed = _listed(capsys, changed, out)
    assert listed["lora/0"].startswith("todo ") and "re-tune" in listed["lora/0"]

    # A run does the same: it searches lora again, then re-runs its two cells and nothing else.
    searched, ran = [], []

    def ensure_tuned(suite, task, strategy, out, progress=True):
        searched.append((task, strategy))
        return {"params": {"lr": 0.004}, "trials": 1, "requested": 1}

    def run_one(suite, key, log_dir, timeout=None, keep_dir=None, tuned=None):
        ran.append((key.strategy, key.seed))
        return {
            **vars(key),
            "status": "ok",
            "error": "",
            "metric_value": 0.5,
            "lr": tuned["params"]["lr"],
            "options": suite.strategy(key.strategy).options_text(),
            "train_options": "{}",
            "tuned_params": json.dumps(tuned["params"]),
        }

    monkeypatch.setattr(bench_tune, "ensure_tuned", ensure_tuned)
    monkeypatch.setattr(runner, "run_one", run_one)
    runner.run_suite(changed, out, progress=False, report=False)
    assert searched == [("sentiment", "lora")] and ran == [("lora", 0), ("lora", 1)]
    run = json.loads((out / "results.json").read_text())["runs"][-1]
    assert (run["cells_planned"], run["cells_run"], run["searches_run"]) == (2, 2, 1)


def test_one_at_a_time_each_strategy_is_searched_just_before_its_cells(tmp_path, quick_dir, monkeypatch):
    """A run stopped part-way leaves whole strategies (searched, all seeds trained); with --jobs > 1 every
    search comes first, so that the cells can then run side by side."""
    import peftkit.bench.runner as runner
    import peftkit.bench.tune as bench_tune

    path = write_suite(tmp_path / "s.yaml", TUNED_SUITE.format(root=quick_dir).replace(", tune: false", ""))
    events = []

    def ensure_tuned(suite, task, strategy, out, progress=True):
        events.append(f"search {strategy}")
        return {"params": {"lr": 0.004}, "trials": 1, "requested": 1}

    def run_one(suite, key, log_dir, timeout=None, keep_dir=None, tuned=None):
        events.append(f"cell {key.strategy}/{key.seed}")
        return {**vars(key), "status": "ok", "error": "", "metric_value": 0.5}

    monkeypatch.setattr(bench_tune, "ensure_tuned", ensure_tuned)
    monkeypatch.setattr(runner, "run_one", run_one)
    runner.run_suite(path, tmp_path / "serial", progress=False, report=False)
    assert events == ["search untrained", "cell untrained/0", "search lora", "cell lora/0", "cell lora/1",
                      "search bitfit", "cell bitfit/0"]
    run = json.loads((tmp_path / "serial" / "results.json").read_text())["runs"][-1]
    assert (run["cells_run"], run["searches_run"]) == (4, 2)  # untrained has nothing to search

    events.clear()
    runner.run_suite(path, tmp_path / "side-by-side", jobs=2, progress=False, report=False)
    assert events[:3] == ["search untrained", "search lora", "search bitfit"] and len(events) == 7


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


@pytest.mark.subprocess
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


@pytest.mark.subprocess
def test_compare_help_is_torch_free():
    code = (
        "import sys; from peftkit.cli import build_parser; print(build_parser()[1]['compare'].format_help()); "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "--tune-trials" in proc.stdout and proc.stdout.strip().endswith("False")


def test_recommendation_says_what_to_use_and_feeds_the_planner_the_scores_just_measured():
    import argparse

    from transformers import BertConfig

    from peftkit.compare import measured_scores, planner_plan, recommendation

    costs = {"full": (900.0, 100.0, 4_000_000), "lora": (600.0, 70.0, 20_000), "bitfit": (500.0, 50.0, 9_000)}
    values = {"full": (0.90, 0.91, 0.89), "lora": (0.885, 0.895, 0.89), "bitfit": (0.70, 0.71, 0.69)}
    rows = [
        _row(
            name,
            seed,
            value,
            peak_memory_mb=costs[name][0],
            train_seconds=costs[name][1],
            trainable_params=costs[name][2],
        )
        for name in costs
        for seed, value in enumerate(values[name])
    ]
    results = _results(rows, description="compare on headlines")
    scores = measured_scores(aggregate(rows))
    assert scores[("full", None)] == 1.0 and scores[("lora", None)] == pytest.approx(0.89 / 0.9)
    assert scores[("bitfit", None)] == pytest.approx(0.7 / 0.9)

    model = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    args = argparse.Namespace(
        model=model,
        task="classification",
        batch_size=8,
        max_length=32,
        strategies=list(costs),
        budget="2GiB",
        device="cpu",
    )
    plan = planner_plan(args, results)
    assert plan.scores == scores and plan.scores_source == SCORES_SOURCE
    text = recommendation(results, "2GiB", plan)
    # The plain answer first: lora is within noise of full's best mean and the cheapest of the two.
    assert (
        "**Use `lora`: its mean is within noise of the best (`full`) and it is the cheapest of those, by peak "
        "memory, then training time, then trainable parameters (600 MiB, 70.0 s, 20,000 trainable parameters "
        "against 900 MiB, 100.0 s, 4,000,000 trainable parameters)" in text
    )
    assert "the planner predicts it fits the budget" in text
    assert "**Best mean accuracy on test**: `full` 0.9000 ± 0.0100 (mean ± std of 3 seeds)" in text
    assert "- **Within noise of it** (95% intervals of the means overlap): `lora` 0.8900." in text
    assert (
        "  - least peak memory: `lora` (600 MiB)" in text
        and "  - least training time: `lora` (70.0 s)" in text
    )
    assert (
        "  - fewest trainable parameters (smallest checkpoint): `lora` (20,000 trainable parameters)" in text
    )
    assert "- Below the best beyond noise: `bitfit`." in text
    # The planner ranks by what this run measured, and says so; never by the shipped benchmark results.
    assert "## The planner for a budget of 2GiB" in text and f"ranked by {SCORES_SOURCE}" in text
    assert f"chosen as the best measured strategy in {SCORES_SOURCE} that fits" in text
    assert "shipped benchmark results" not in text
    assert recommendation(results, None, "The planner could not predict for this model: x").endswith(
        "## The planner\n\nThe planner could not predict for this model: x\n"
    )


@pytest.mark.subprocess
@pytest.mark.slow
def test_compare_end_to_end_on_data_it_never_saw(tmp_path):
    """Issue 12's "done when": compare on a new dataset (its own columns, three string labels)."""
    data = write_topic_csv(tmp_path / "headlines")
    model = save_tiny_model(tmp_path / "model", labels=sorted(TOPICS))
    out = tmp_path / "cmp"
    proc = _peftkit(
        "compare",
        "--model",
        str(model),
        *(f"--{split}={data / f'{split}.csv'}" for split in ("train", "validation", "test")),
        "--text-column",
        "headline",
        "--label-column",
        "topic",
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
    assert text.startswith("# Which strategy for this task") and "\n**Use `" in text
    assert "**Best mean accuracy on test**" in text and "mean ± std of 2 seeds" in text
    assert (
        "budget of 2GiB" in text and "2.0 GiB" in text and "Recommendation:" in text
    )  # the planner, for the budget
    assert f"ranked by {SCORES_SOURCE}" in text and "shipped benchmark results" not in text
    assert text in proc.stdout
    assert len(list((out / "tune" / "data").glob("*/tuned.json"))) == 2


def test_readme_section_names_the_whole_suites_command_and_its_sittings():
    """A suite run in parts (--tasks, --strategies, --retry-failed) is described by the command that runs or
    resumes all of it, and says how many sittings produced it."""
    from peftkit.bench.report import readme_section, whole_suite_command

    base = "HF_HUB_OFFLINE=1 peftkit bench benchmarks/suites/s.yaml"
    assert whole_suite_command(f"{base} --tasks sst2 conll2003 --jobs 2") == f"{base} --jobs 2"
    assert whole_suite_command(f"{base} --strategies=lora --retry-failed --cell-timeout 60") == f"{base} --cell-timeout 60"
    rows = [{**_row("full", s, v), "trainable_percent": 100.0} for s, v in enumerate((0.90, 0.91, 0.92))]
    runs = [{"command": base, "cells_run": 2}, {"command": f"{base} --tasks sst2", "cells_run": 1},
            {"command": f"{base} --tasks sst2", "cells_run": 0}]
    text = readme_section(_results(rows, runs=runs), "r")
    assert f"Measured with `{base}` in 2 sittings (each listed in results.md) on" in text
    assert "in 2 sittings" not in readme_section(_results(rows, runs=runs[:1]), "r")
    runs.append({"command": f"{base} --tasks sst2", "cells_run": 0, "searches_run": 3})  # stopped before its cells
    assert "in 3 sittings" in readme_section(_results(rows, runs=runs), "r")
    assert "Not run on every task yet" not in text


def test_readme_section_says_which_strategies_ran_on_part_of_the_tasks():
    from peftkit.bench.report import readme_section

    rows = [{**_row(name, 0, 0.9), "trainable_percent": 1.0} for name in ("full", "lora")]
    rows.append({**_row("full", 0, 0.8), "task": "cola", "trainable_percent": 100.0})
    results = _results(rows)
    results["tasks"]["cola"] = {"task": "classification", "metric": "accuracy", "budget": {"max_steps": 10}}
    text = readme_section(results, "r")
    assert "Not run on every task yet: lora; their means cover the tasks they ran" in text
