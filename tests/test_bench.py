"""The benchmark suite: the quick suite end to end (every strategy, tiny model, a few steps), re-runs,
the report, failures recorded, and suite validation. No timing is asserted."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_bench import QUICK_SUITE, ROOT, write_quick_assets, write_suite

from peftkit.bench import SuiteError, load_suite, run_bench, setup_bench_parser
from peftkit.bench.measure import MemoryProbe, directory_mb, reset_peak_rss
from peftkit.bench.results import COLUMNS
from peftkit.bench.runner import run_suite
from peftkit.bench.suite import BASELINE_STRATEGIES, DEFAULT_BASELINES


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    root = write_quick_assets(tmp_path_factory.mktemp("quick"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTKIT_BENCH_QUICK_DIR", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


@pytest.fixture(scope="module")
def quick_results(quick_dir):
    """The quick suite run once (two cells at a time): its output folder."""
    out = quick_dir / "results"
    run_suite(QUICK_SUITE, out, jobs=2, progress=False, command="pytest tests/test_bench.py")
    return out


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- the quick suite


@pytest.mark.slow
def test_quick_suite_columns_and_values(quick_dir, quick_results):
    suite = load_suite(QUICK_SUITE)
    with (quick_results / "results.csv").open() as f:
        header = next(csv.reader(f))
    assert header[: len(COLUMNS)] == list(COLUMNS)  # exactly the columns, in order, first
    rows = {r["strategy"]: r for r in _rows(quick_results)}
    assert set(rows) == {s.name for s in suite.strategies} | set(DEFAULT_BASELINES)  # the baselines quick runs
    for name, r in rows.items():
        assert r["suite"] == "quick" and r["task"] == "sentiment" and r["metric_name"] == "accuracy"
        assert r["device"] == "cpu"
        if name == "lora-r0":  # fails on purpose
            continue
        assert r["error"] == "", f"{name} failed: {r['error']}"
        if name == "untrained":  # the model as loaded: scored, nothing trained or saved
            assert int(r["trainable_params"]) == 0 and float(r["trainable_percent"]) == 0
            assert 0 <= float(r["metric_value"]) <= 1 and float(r["peak_memory_mb"]) > 0
            assert float(r["checkpoint_mb"]) == 0 and float(r["train_seconds"]) == 0
            continue
        assert 0 < float(r["trainable_percent"]) <= 100
        assert int(r["trainable_params"]) > 0 and int(r["total_params"]) >= int(r["trainable_params"])
        assert float(r["peak_memory_mb"]) > 0
        assert 0 <= float(r["metric_value"]) <= 1
        assert float(r["checkpoint_mb"]) > 0
        assert float(r["train_seconds"]) > 0 and float(r["samples_per_second"]) > 0
        assert r["torch"] and r["transformers"] and r["peft"]
    assert float(rows["full"]["trainable_percent"]) == 100
    assert float(rows["lora"]["trainable_percent"]) < 100
    for name in ("lora-4bit", "lora-8bit", "adapter-4bit", "bitfit-4bit"):
        assert rows[name]["quantization"] == name.split("-")[-1]
    # an adapter checkpoint is smaller than the whole model
    assert float(rows["lora"]["checkpoint_mb"]) < float(rows["full"]["checkpoint_mb"])
    # the baselines train the same LoRA parameters as peftkit's cell
    assert rows["baseline-trainer"]["trainable_params"] == rows["baseline-accelerate"]["trainable_params"] \
        == rows["lora"]["trainable_params"]
    assert rows["baseline-trainer"]["total_params"] == rows["lora"]["total_params"]


@pytest.mark.slow
def test_failed_cell_carries_its_error(quick_results):
    broken = {r["strategy"]: r for r in _rows(quick_results)}["lora-r0"]
    assert "ValueError" in broken["error"] and "lora option r=0" in broken["error"]
    assert broken["status"] == "failed" and broken["metric_value"] == ""
    data = json.loads((quick_results / "results.json").read_text())
    row = next(r for r in data["rows"] if r["strategy"] == "lora-r0")
    assert "Traceback" in row["traceback"]


@pytest.mark.slow
def test_planner_prediction_is_recorded(quick_results):
    pytest.importorskip("peftkit.memory")
    rows = [r for r in _rows(quick_results) if not r["error"] and r["strategy"] not in (*BASELINE_STRATEGIES, "untrained")]
    assert rows and all(float(r["predicted_peak_memory_mb"]) > 0 for r in rows), [r["prediction_note"] for r in rows]


@pytest.mark.subprocess
@pytest.mark.slow
def test_rerun_skips_done_cells(quick_results, monkeypatch):
    from peftkit.bench import runner

    before = json.loads((quick_results / "results.json").read_text())

    def no_run(*args, **kwargs):
        raise AssertionError("a done cell was run again")

    monkeypatch.setattr(runner, "run_one", no_run)
    run_suite(QUICK_SUITE, quick_results, progress=False, report=False)
    after = json.loads((quick_results / "results.json").read_text())
    assert after["rows"] == before["rows"]
    assert after["runs"][-1]["cells_run"] == 0 and after["runs"][-1]["cells_skipped"] == len(before["rows"])


def test_a_run_stopped_part_way_records_the_cells_it_ran_not_those_it_planned(tmp_path, monkeypatch):
    from peftkit.bench import runner

    ran = []

    def run_one(suite, key, log_dir, timeout=None, keep_dir=None, tuned=None):
        if ran:
            raise KeyboardInterrupt  # the user stops the run during its second cell
        ran.append(key)
        return {**vars(key), "status": "ok", "error": "", "metric_value": 0.5}

    monkeypatch.setattr(runner, "run_one", run_one)
    monkeypatch.setenv("PEFTKIT_BENCH_QUICK_DIR", str(tmp_path / "models"))  # never loaded: no cell trains
    with pytest.raises(KeyboardInterrupt):
        run_suite(QUICK_SUITE, tmp_path, progress=False, report=False)
    results = json.loads((tmp_path / "results.json").read_text())
    run = results["runs"][-1]
    assert run["cells_run"] == 1 and run["cells_planned"] == len(runner.select_cells(runner.load_suite(QUICK_SUITE))) > 1
    assert [r["strategy"] for r in results["rows"]] == [ran[0].strategy]

    from peftkit.bench.report import _run_counts

    assert _run_counts(run) == f"1 cell run of {run['cells_planned']} planned"
    assert _run_counts({"cells_run": 0, "cells_planned": 21, "searches_run": 3}) == "0 cells run of 21 planned, 3 searches"
    assert _run_counts({"cells_run": 21, "cells_planned": 21, "searches_run": 1}) == "21 cells run, 1 search"


@pytest.mark.slow
def test_rerun_runs_again_cells_whose_settings_changed(quick_results, tmp_path):
    """A cell whose lr or options changed in the suite file is stale: it (and the baselines that re-train
    the baseline strategy) run again; every other done cell is still skipped."""
    from peftkit.bench.runner import pending_cells, select_cells
    from peftkit.bench.suite import CellKey

    text = QUICK_SUITE.read_text()
    assert "{name: lora, strategy: lora, options: {r: 4, alpha: 8}}" in text
    text = text.replace("{name: lora, strategy: lora, options: {r: 4, alpha: 8}}",
                        "{name: lora, strategy: lora, options: {r: 4, alpha: 8}, lr: 0.0123}")
    text = text.replace("{name: bitfit, strategy: bitfit}", "{name: bitfit, strategy: bitfit, options: {}}")
    text = text.replace("{name: ia3, strategy: ia3}", "{name: ia3, strategy: ia3, options: {target_modules: [query]}}")
    changed = load_suite(write_suite(tmp_path / "quick.yaml", text))
    done = {CellKey.from_row(r).id(): r for r in json.loads((quick_results / "results.json").read_text())["rows"]}
    todo, stale = pending_cells(changed, select_cells(changed), done)
    assert {k.strategy for k in todo} == {"lora", "ia3", *DEFAULT_BASELINES}
    assert "0.0123" in stale["quick/sentiment/lora/none/0/48"] and "query" in stale["quick/sentiment/ia3/none/0/48"]
    same, none_stale = pending_cells(load_suite(QUICK_SUITE), select_cells(load_suite(QUICK_SUITE)), done)
    assert same == [] and none_stale == {}


@pytest.mark.subprocess
@pytest.mark.slow
def test_report_rebuilds_markdown_and_plots(quick_results):
    for name in ("results.md", "metric_vs_params.png", "peak_memory.png", "train_time.png"):
        (quick_results / name).unlink()
    proc = subprocess.run([sys.executable, "-m", "peftkit.bench", "--report", str(quick_results)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    md = (quick_results / "results.md").read_text()
    assert "## sentiment" in md and "pytest tests/test_bench.py" in md and "cores" in md and "torch " in md
    assert "| lora | none |" in md and "failed: ValueError" in md
    assert "HF Trainer + PEFT" in md and "hand-written Accelerate" in md
    for name in ("metric_vs_params.png", "peak_memory.png", "train_time.png"):
        data = (quick_results / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not (quick_results / "sweep.png").exists()  # one training size: no sweep plot


@pytest.mark.subprocess
@pytest.mark.slow
def test_timeout_is_recorded_and_suite_goes_on(quick_dir, tmp_path):
    out = tmp_path / "results"
    run_suite(QUICK_SUITE, out, strategies=["bitfit", "ia3"], cell_timeout=0.5, progress=False, report=False)
    rows = _rows(out)
    assert [r["strategy"] for r in rows] == ["bitfit", "ia3"]
    assert all(r["error"].startswith("Timeout") and "--cell-timeout" in r["error"] for r in rows)


# --------------------------------------------------------------------------- pieces


def test_memory_probe_sees_an_allocation():
    import numpy as np

    probe = MemoryProbe("cpu")
    probe.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    result = probe.stop()
    del block
    assert result["peak_memory_mb"] >= 60
    if reset_peak_rss():
        assert result["peak_reset"] is True


def test_directory_mb(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 2**20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"x" * 2**19)
    assert directory_mb(tmp_path) == 1.5


def test_shipped_suites_are_valid(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTKIT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PEFTKIT_BENCH_QUICK_DIR", str(tmp_path))
    suites = {p.stem: load_suite(p) for p in (ROOT / "benchmarks" / "suites").glob("*.yaml")}
    assert set(suites) >= {"main", "llm", "sweep", "quick"}
    main = suites["main"]
    assert [t.name for t in main.tasks] == ["sst2", "banking77", "banking77-pairs", "conll2003"]
    assert {s.name for s in main.strategies} == {
        "full", "lora", "lora-dora", "lora-plus", "adalora", "adapter-pfeiffer", "adapter-houlsby", "bitfit", "ia3",
        "prompt", "prefix", "lora-4bit", "lora-8bit", "adapter-4bit", "bitfit-4bit"}
    # every task but the generated banking77-pairs names its hub dataset
    assert len(main.cells()) == 4 * 15 + 2 and all(t.hub_id for t in main.tasks if t.name != "banking77-pairs")
    assert main.task("sst2").train == str(tmp_path / "sst2" / "train.tsv")
    llm = suites["llm"]
    assert llm.tasks[0].test_size == 500 and llm.tasks[0].metric == "exact_match"
    assert {s.strategy for s in llm.strategies} >= {"full", "lora", "ia3", "prompt", "prefix", "adapter", "bitfit"}
    # the tuned suite compares every unquantized strategy of main's (issue 12)
    assert {s.name for s in main.strategies if not s.quantization} <= {s.name for s in suites["main_tuned"].strategies}
    sweep = suites["sweep"]
    assert sweep.tasks[0].train_sizes == [64, 256, 1024, 4096] and len(sweep.cells()) == 20
    # cells are keyed by train size, so a sweep's cells are all distinct
    assert len({k.id() for k in sweep.cells()}) == 20


GOOD = """
name: t
model: {path: some/model}
data_dir: {data}
budget: {max_steps: 2, batch_size: 4}
tasks:
  - {name: a, task: classification, train: train.csv, test: test.csv}
strategies:
  - {name: lora, strategy: lora}
"""


@pytest.mark.parametrize("change, message", [
    (("budget: {max_steps: 2, batch_size: 4}", "budget: {batch_size: 4}"), "give max_steps or epochs"),
    (("budget: {max_steps: 2, batch_size: 4}", "budget: {max_steps: 2, batchsize: 4}"), "unknown key(s) batchsize"),
    (("strategy: lora}", "strategy: loraa}"), "unknown strategy 'loraa'. Valid strategies: full, lora"),
    (("strategy: lora}", "strategy: lora, options: {rank: 4}}"), "unknown option(s) rank for 'lora'"),
    (("strategy: lora}", "strategy: lora, quantization: 2bit}"), "'2bit' is not one of none, 8bit, 4bit"),
    (("test: test.csv}", "test: test.csv, metric: bleu}"), "'bleu' is not a metric of classification"),
    (("task: classification", "task: regression"), "unknown task 'regression'"),
    (("test: test.csv}", "test: test.csv, train_size: 0}"), "expected a positive integer, got 0"),
    (("test: test.csv}", "test: test.csv, train_size: 4, train_sizes: [4]}"), "not both"),
    (("name: t\n", "name: t\nmodels: {}\n"), "unknown key(s) models"),
    (("model: {path: some/model}", 'model: {path: "${PEFTKIT_TEST_UNSET_VARIABLE}"}'), "PEFTKIT_TEST_UNSET_VARIABLE is not set"),
    (("  - {name: lora, strategy: lora}", "  - {name: lora, strategy: lora}\n  - {name: lora, strategy: bitfit}"), "duplicate strategy name(s) lora"),
    (("  - {name: lora, strategy: lora}", "  - {name: baseline-trainer, strategy: lora}"), "reserved for the baselines"),
    (("name: t\n", "name: t\nbaselines: {task: a, strategy: nope}\n"), "no strategy named 'nope'"),
    (("name: t\n", "name: t\ntargets: {task: a, reference: lora, max_gap: {lora: 0.01}, tried: 3}\n"),
     "targets.tried: expected str"),
])
def test_suite_validation_errors(tmp_path, change, message):
    text = GOOD.replace("{data}", str(tmp_path))
    assert change[0] in text
    path = write_suite(tmp_path / "bad.yaml", text.replace(change[0], change[1]))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert message in str(info.value)
    assert str(path) in str(info.value) or "environment variable" in str(info.value)


def test_suite_file_errors(tmp_path):
    with pytest.raises(SuiteError, match="No suite file"):
        load_suite(tmp_path / "missing.yaml")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(write_suite(tmp_path / "broken.yaml", "name: [unclosed"))
    with pytest.raises(SuiteError, match="expected dict"):
        load_suite(write_suite(tmp_path / "list.yaml", "- a\n- b\n"))


def test_missing_data_dir_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("peftkit.data.default_data_dir", lambda: None)
    text = GOOD.replace("data_dir: {data}\n", "")
    with pytest.raises(SuiteError, match="Set PEFTKIT_DATA_DIR"):
        load_suite(write_suite(tmp_path / "s.yaml", text))


@pytest.mark.subprocess
def test_cli_handler_errors_and_listing(tmp_path, quick_dir, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    handler = setup_bench_parser(parser)
    assert handler is run_bench
    with pytest.raises(ValueError, match="Name a suite file"):
        run_bench(parser.parse_args([]))
    with pytest.raises(FileNotFoundError, match="No results.json"):
        run_bench(parser.parse_args(["--report", str(tmp_path)]))
    assert run_bench(parser.parse_args([str(QUICK_SUITE), "--list", "--output", str(tmp_path / "none")])) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 17 and all(line.startswith("todo") for line in listed)


@pytest.mark.slow
def test_metric_values_are_finite_in_results_json(quick_results):
    data = json.loads((quick_results / "results.json").read_text())
    assert data["rows"] and data["runs"][0]["machine"]["cores"] == os.cpu_count()
    for row in data["rows"]:
        if not row["error"]:
            assert math.isfinite(row["metric_value"])



def test_repredict_recomputes_from_settings_not_measurements(quick_results, tmp_path):
    """--repredict: the planner's value comes back from the cell's settings; the old one is kept."""
    import shutil

    from peftkit.bench.results import read_results
    from peftkit.bench.runner import repredict

    out = tmp_path / "results"
    shutil.copytree(quick_results, out)
    results = read_results(out)
    lora = next(r for r in results["rows"] if r["strategy"] == "lora")
    planned = lora["predicted_peak_memory_mb"]
    assert planned > 0
    lora["predicted_peak_memory_mb"], lora["peak_memory_mb"] = 1.0, 12345.0  # neither may leak into the prediction
    (out / "results.json").write_text(json.dumps(results))
    repredict(out)
    again = read_results(out)
    lora = next(r for r in again["rows"] if r["strategy"] == "lora")
    assert lora["predicted_peak_memory_mb"] == planned and lora["previous_predicted_peak_memory_mb"] == 1.0
    assert again["predictions"]["date"]
    untrained = next(r for r in again["rows"] if r["strategy"] == "untrained")
    assert untrained["predicted_peak_memory_mb"] is None  # nothing trains: nothing to predict


def test_readme_section_between_suite_markers(quick_results, tmp_path):
    from peftkit.bench.report import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:quick:start -->\nold\n<!-- bench:quick:end -->\ntail\n")
    update_readme(readme, quick_results)
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| lora |" in text and "results.md" in text
    # peftkit's time against each baseline travels with the table; the suite's goals stay in results.md
    assert re.search(r"train time against HF Trainer \+ PEFT: \d+\.\d\dx, accuracy", text)
    assert re.search(r"train time against hand-written Accelerate \+ PEFT loop: \d+\.\d\dx, accuracy", text)
    assert "goal" not in text and "Target on" not in text and "targets and whether they were met: [" in text
    other = tmp_path / "OTHER.md"
    other.write_text("no markers here\n")
    with pytest.raises(ValueError, match="bench:quick:start"):
        update_readme(other, quick_results)


@pytest.mark.parametrize("suite", ["main", "main_tuned", "llm", "sweep", "sweep_tuned", "bf16"])
def test_readme_benchmark_sections_are_current(suite):
    """README's "Choosing a strategy" tables are what the committed results generate now."""
    from peftkit.bench.report import readme_markers, readme_section
    from peftkit.bench.results import read_results

    folder = ROOT / "benchmarks" / "results" / suite
    if not (folder / "results.json").is_file():
        pytest.skip(f"no committed results for the {suite} suite")
    start, end = readme_markers(suite)
    text = (ROOT / "README.md").read_text()
    assert start in text and end in text, f"README.md lacks the {suite} markers"
    shown = text.split(start, 1)[1].split(end, 1)[0].strip()
    expected = readme_section(read_results(folder), f"benchmarks/results/{suite}").strip()
    assert shown == expected, f"run: peftkit bench --report benchmarks/results/{suite} --readme README.md"
