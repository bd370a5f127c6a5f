"""Benchmark suites with robustness: a task's ``perturb:``, a strategy's ``train:`` and ``teacher:``,
and the shipped robust.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_bench import write_quick_assets, write_suite

from peftkit.bench.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
name: r
model: {path: MODEL}
data_dir: DATA
device: cpu
budget: {max_steps: 2, batch_size: 8, eval_batch_size: 16}
tasks:
  - {name: s, task: classification, train: sentiment/train.csv, test: sentiment/test.csv, train_size: 32, max_length: 32,
     perturb: {kind: char+word, rate: 0.2, seed: 1}}
strategies:
  - {name: teacher, strategy: full, train: {max_steps: 3}}
  - {name: lora-fgm, strategy: lora, options: {r: 4}, train: {adversarial: fgm}}
  - {name: lora-kd, strategy: lora, options: {r: 4}, teacher: teacher, train: {distill_alpha: 0.7}}
"""


def _suite(tmp_path: Path, text: str = SUITE, root: Path | None = None) -> Path:
    root = root or tmp_path
    return write_suite(
        tmp_path / "r.yaml", text.replace("MODEL", str(root / "model")).replace("DATA", str(root / "data"))
    )


def test_suite_reads_perturb_train_and_teacher(tmp_path):
    suite = load_suite(_suite(tmp_path))
    assert suite.task("s").perturb == {"kind": "char+word", "rate": 0.2, "seed": 1}
    assert suite.strategy("lora-fgm").train == {"adversarial": "fgm"}
    assert suite.strategy("lora-kd").teacher == "teacher"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("perturb: {kind: char+word, rate: 0.2, seed: 1}", "perturb: {kind: emoji}", "noise kind 'emoji'"),
        ("perturb: {kind: char+word, rate: 0.2, seed: 1}", "perturb: {rate: 3}", "noise rate 3"),
        ("perturb: {kind: char+word, rate: 0.2, seed: 1}", "perturb: {level: 1}", "unknown key(s) level"),
        ("train: {adversarial: fgm}", "train: {adversary: fgm}", "unknown key(s) adversary"),
        ("teacher: teacher,", "teacher: nobody,", "no strategy named 'nobody'"),
        ("teacher: teacher,", "teacher: lora-kd,", "cannot teach 'lora-kd'"),
    ],
)
def test_suite_validation(tmp_path, old, new, message):
    with pytest.raises(SuiteError) as info:
        load_suite(_suite(tmp_path, SUITE.replace(old, new)))
    assert message in str(info.value)


def test_changed_training_options_or_teacher_make_a_row_stale(tmp_path):
    from peftkit.bench.runner import stale_reason

    suite = load_suite(_suite(tmp_path))
    row = {"strategy": "lora-fgm", "status": "ok", "lr": suite.strategy("lora-fgm").learning_rate(),
           "options": suite.strategy("lora-fgm").options_text(), "train_options": '{"adversarial": "fgm"}'}
    assert stale_reason(suite, row) is None
    changed = load_suite(_suite(tmp_path, SUITE.replace("train: {adversarial: fgm}", "train: {adversarial: fgm, adv_epsilon: 0.5}")))
    assert "training options" in stale_reason(changed, row)
    kd = {**row, "strategy": "lora-kd", "train_options": '{"distill_alpha": 0.7}'}
    assert "teacher" in stale_reason(suite, kd)  # recorded before the teacher was named


def test_robust_suite_is_valid(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTKIT_DATA_DIR", str(tmp_path))
    suite = load_suite(ROOT / "benchmarks" / "suites" / "robust.yaml")
    assert suite.seeds == [0, 1, 2] and suite.task("sst2").perturb["rate"] == 0.1
    names = [s.name for s in suite.strategies]
    assert names[0] == "teacher-full" and len(suite.cells()) == 3 * 9
    assert {suite.strategy(n).train.get("adversarial") for n in names} == {None, "fgm", "pgd"}
    assert {s.teacher for s in suite.strategies if s.teacher} == {"teacher-full"}


@pytest.mark.slow
@pytest.mark.subprocess
def test_student_cell_trains_its_teacher_once_and_scores_the_noisy_test_set(tmp_path, monkeypatch):
    from peftkit.bench.cell import main

    root = write_quick_assets(tmp_path / "assets")
    monkeypatch.setenv("PEFTKIT_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _suite(tmp_path, root=root)
    result = tmp_path / "kd.json"
    args = ["--suite", str(path), "--task", "s", "--seed", "0", "--train-size", "32", "--result", str(result)]
    assert main([*args, "--strategy", "lora-kd"]) == 0
    row = json.loads(result.read_text())
    assert row["status"] == "ok" and 0 <= row["perturbed_accuracy"] <= 1
    assert json.loads(row["train_options"]) == {"distill_alpha": 0.7, "teacher": "teacher"}
    teachers = [p for p in (tmp_path / "cache" / "teachers").iterdir() if p.is_dir()]
    assert len(teachers) == 1 and (teachers[0] / "adapter" / "peftkit_config.json").is_file()
    stamp = (teachers[0] / "adapter" / "peftkit_config.json").stat().st_mtime
    assert main([*args, "--strategy", "lora-kd"]) == 0  # the teacher is not trained again
    assert (teachers[0] / "adapter" / "peftkit_config.json").stat().st_mtime == stamp
    assert main([*args, "--strategy", "lora-fgm"]) == 0
    fgm = json.loads(result.read_text())
    assert fgm["status"] == "ok" and json.loads(fgm["train_options"]) == {"adversarial": "fgm"}
    assert "perturbed_accuracy" in fgm


def test_report_shows_clean_perturbed_time_ratio_and_gap_closed():
    from peftkit.bench.report import robustness_section

    def row(strategy, seed, clean, noisy, seconds, base="lora", train_options="{}"):
        return {"task": "s", "strategy": strategy, "seed": seed, "status": "ok", "metric_name": "accuracy",
                "metric_value": clean, "perturbed_accuracy": noisy, "train_seconds": seconds, "base_strategy": base,
                "options": "{}", "quantization": None, "train_options": train_options}

    rows = [row("teacher", s, 0.90, 0.80, 100, base="full") for s in (0, 1)]
    rows += [row("lora", 0, 0.80, 0.70, 10), row("lora", 1, 0.82, 0.72, 10)]
    rows += [row("lora-fgm", s, 0.81, 0.75, 20, train_options='{"adversarial": "fgm"}') for s in (0, 1)]
    rows += [row("lora-kd", s, 0.86, 0.76, 15, train_options='{"teacher": "teacher"}') for s in (0, 1)]
    text = "\n".join(robustness_section({"rows": rows}))
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "0.810 ± 0.014 | 0.710 ± 0.014 | 0.100" in lines["lora"]
    assert "| 2.00x |" in lines["lora-fgm"] and "| 1.50x |" in lines["lora-kd"]
    assert lines["lora-kd"].endswith("| 56% |")  # (0.86 - 0.81) / (0.90 - 0.81)
    assert robustness_section({"rows": [{**r, "perturbed_accuracy": None} for r in rows]}) == []
