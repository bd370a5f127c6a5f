"""peftkit against HF Trainer (issue 18): the Trainer baselines with TrainingArguments' defaults and with its
best flags, the suite's ``baselines: {run: [...]}``, the comparison suite kept equal to main's SST-2 LoRA cell,
and benchmarks/trainer_compare.py's schedule and summary. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict

import pytest
from helpers_bench import ROOT, write_quick_assets, write_suite

from peftkit.bench.suite import BASELINE_STRATEGIES, DEFAULT_BASELINES, SuiteError, load_suite

TRAINER_SUITE = """\
name: trainer
model: {{path: {root}/model}}
data_dir: {root}/data
budget: {{max_steps: 3, batch_size: 8, eval_batch_size: 16}}
tasks:
  - {{name: sentiment, task: classification, train: sentiment/train.csv, test: sentiment/test.csv, train_size: 48,
      max_length: 32}}
strategies:
  - {{name: lora, strategy: lora, options: {{r: 4, alpha: 8}}}}
  - {{name: lora-compile, strategy: lora, options: {{r: 4, alpha: 8}}, train: {{compile: true}}}}
baselines: {{task: sentiment, strategy: lora, run: [baseline-trainer-best, baseline-trainer-defaults]}}
"""


def _compare_script():
    spec = importlib.util.spec_from_file_location(
        "trainer_compare", ROOT / "benchmarks" / "trainer_compare.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def trainer_suite(tmp_path):
    root = write_quick_assets(tmp_path)
    return load_suite(write_suite(tmp_path / "trainer.yaml", TRAINER_SUITE.format(root=root)))


# --------------------------------------------------------------------------- suites


def test_baselines_run_picks_the_baselines_a_suite_runs(trainer_suite, tmp_path):
    assert DEFAULT_BASELINES == ("baseline-trainer", "baseline-accelerate")
    # listed in BASELINE_STRATEGIES' order whatever the file's order; only those cells, after the baseline cell
    assert trainer_suite.baselines["run"] == ["baseline-trainer-defaults", "baseline-trainer-best"]
    assert [k.strategy for k in trainer_suite.cells()] == ["lora", "baseline-trainer-defaults", "baseline-trainer-best",
                                                            "lora-compile"]  # fmt: skip
    plain = TRAINER_SUITE.replace(", run: [baseline-trainer-best, baseline-trainer-defaults]", "")
    suite = load_suite(write_suite(tmp_path / "plain.yaml", plain.format(root=tmp_path)))
    assert [k.strategy for k in suite.cells() if k.strategy in BASELINE_STRATEGIES] == list(DEFAULT_BASELINES)
    for bad in ("[]", "[baseline-trainer-fast]", "[baseline-trainer, baseline-trainer]"):
        text = TRAINER_SUITE.replace("[baseline-trainer-best, baseline-trainer-defaults]", bad)
        with pytest.raises(
            SuiteError, match=r"baselines.run: give one or more different baselines of baseline-trainer"
        ):
            load_suite(write_suite(tmp_path / "bad.yaml", text.format(root=tmp_path)))


def test_trainer_compare_suite_is_mains_sst2_lora_cell(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTKIT_DATA_DIR", str(tmp_path))
    main = load_suite(ROOT / "benchmarks" / "suites" / "main.yaml")
    compare = load_suite(ROOT / "benchmarks" / "suites" / "trainer_compare.yaml")
    assert compare.model == main.model and compare.budget == main.budget and compare.device == main.device
    assert asdict(compare.task("sst2")) == asdict(main.task("sst2"))
    assert compare.strategy("lora") == main.strategy("lora")
    compiled = compare.strategy("lora-compile")
    assert (compiled.options, compiled.lr, compiled.train) == (main.strategy("lora").options, main.strategy("lora").lr,
                                                               {"compile": True})  # fmt: skip
    assert compare.baselines == {"task": "sst2", "strategy": "lora",
                                 "run": ["baseline-trainer-defaults", "baseline-trainer-best"]}  # fmt: skip
    assert set(_compare_script().ARMS) == {"lora", "lora-compile", *compare.baselines["run"]}


# --------------------------------------------------------------------------- TrainingArguments


def test_trainer_arguments_defaults_and_best_flags(tmp_path):
    from transformers import TrainingArguments

    from peftkit.bench.baselines import trainer_arguments
    from peftkit.precision import bf16_pays

    settings = {"steps": 30, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.01, "warmup": 3, "scheduler": "linear",
                "max_grad_norm": 1.0, "seed": 0, "max_length": 64, "device": "cpu"}  # fmt: skip
    defaults, note = trainer_arguments("baseline-trainer-defaults", settings, tmp_path)
    assert note == ""
    args = TrainingArguments(**defaults)
    # the job as the cell defines it ...
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate, args.warmup_steps) == (
        30,
        32,
        2e-3,
        3,
    )
    assert (args.weight_decay, args.seed, args.use_cpu, args.save_strategy, args.report_to) == (
        0.01,
        0,
        True,
        "no",
        [],
    )
    # ... and everything else at TrainingArguments' defaults: random batches, float32, eager
    default = TrainingArguments(output_dir=str(tmp_path / "d"))
    for name in (
        "train_sampling_strategy",
        "torch_compile",
        "bf16",
        "optim",
        "dataloader_num_workers",
        "data_seed",
    ):
        assert getattr(args, name) == getattr(default, name), name
    assert (args.train_sampling_strategy, args.torch_compile, args.bf16) == ("random", False, False)

    best, note = trainer_arguments("baseline-trainer-best", settings, tmp_path)
    assert {k: v for k, v in best.items() if k not in defaults} == {
        "train_sampling_strategy": "group_by_length", "torch_compile": True, "bf16": bf16_pays(True)}  # fmt: skip
    assert (note == "") == bf16_pays(True) and (not note or "has no native bfloat16" in note)
    grouped, _ = trainer_arguments("baseline-trainer", settings, tmp_path)
    assert grouped["train_sampling_strategy"] == "group_by_length" and "torch_compile" not in grouped
    with pytest.raises(ValueError, match="not a Trainer baseline"):
        trainer_arguments("baseline-accelerate", settings, tmp_path)


@pytest.mark.slow
def test_trainer_baselines_train_and_record_their_flags(trainer_suite, tmp_path, monkeypatch):
    """Both new baselines and peftkit's compiled cell train the tiny model; rows say what each did. Compiling
    uses Dynamo's "eager" backend here (traced, not code-generated: seconds, not minutes, on a small CPU)."""
    import torch

    from peftkit.bench.cell import execute
    from peftkit.bench.suite import CellKey
    from peftkit.precision import bf16_pays

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: real_compile(model, **{**kw, "backend": "eager"})
    )
    monkeypatch.setenv(
        "ACCELERATE_DYNAMO_BACKEND", "NO"
    )  # TrainingArguments(torch_compile=True) sets it: undone after
    torch._dynamo.reset()
    rows = {}
    for name in ("lora", "baseline-trainer-defaults", "baseline-trainer-best", "lora-compile"):
        key = CellKey("trainer", "sentiment", name, None, 0, 48)
        rows[name] = execute(trainer_suite, key, tmp_path / name)
        assert rows[name]["status"] == "ok", rows[name]["error"]
        assert rows[name]["train_seconds"] > 0 and 0 <= rows[name]["metric_value"] <= 1
    assert len({r["trainable_params"] for r in rows.values()}) == 1  # the same LoRA parameters everywhere
    defaults = json.loads(rows["baseline-trainer-defaults"]["trainer_args"])
    best = json.loads(rows["baseline-trainer-best"]["trainer_args"])
    assert "train_sampling_strategy" not in defaults and "torch_compile" not in defaults
    assert (best["train_sampling_strategy"], best["torch_compile"], best["bf16"]) == ("group_by_length", True,
                                                                                     bf16_pays(True))  # fmt: skip
    assert rows["baseline-trainer-best"]["mixed_precision"] == ("bf16" if bf16_pays(True) else "no")
    assert (
        rows["baseline-trainer-defaults"]["compile_seconds"] is None
        and rows["lora"]["compile_seconds"] is None
    )
    # compiled: the seconds spent compiling are recorded (and are part of the train time)
    for name in ("baseline-trainer-best", "lora-compile"):
        assert 0 < rows[name]["compile_seconds"] <= rows[name]["train_seconds"], name
    assert rows["lora-compile"]["train_options"] == '{"compile": true}'


# --------------------------------------------------------------------------- benchmarks/trainer_compare.py


def test_compare_schedule_rotates_the_arms():
    script = _compare_script()
    order = script.schedule(["a", "b", "c"], 3)
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"), (2, "c"), (2, "a"), (2, "b")]


def test_compare_summary_ratios_and_verdicts():
    script = _compare_script()
    times = {
        "lora": [10, 12, 11],
        "baseline-trainer-defaults": [15, 16, 14],
        "baseline-trainer-best": [11, 9, 13],
    }
    runs = [
        {"round": n, "arm": arm, "row": {"status": "ok", "train_seconds": t, "metric_value": 0.84, "eval_samples": 872,
                                         "process_wall_seconds": t + 10, "mixed_precision": "no"}}
        for arm, ts in times.items() for n, t in enumerate(ts)
    ]  # fmt: skip
    runs.append({"round": 3, "arm": "lora", "row": {"status": "failed", "error": "boom"}})
    summary = script.summarize(runs, list(times))
    lora = summary["lora"]
    assert (
        lora["train_seconds"] == [10, 11, 12]
        and lora["median_train_seconds"] == 11
        and lora["failed"] == ["boom"]
    )
    assert lora["vs_trainer_defaults"] == pytest.approx(15 / 11)
    assert lora["vs_trainer_defaults_paired"] == pytest.approx(sorted([15 / 10, 16 / 12, 14 / 11])[1])
    assert lora["vs_trainer_best"] == pytest.approx(11 / 11)
    assert summary["baseline-trainer-defaults"]["vs_trainer_defaults"] == 1
    lines = script.verdicts(summary)
    assert "1.36x as fast (goal at least 1.3x): met" in lines[0] and "within 2 standard errors" in lines[0]
    assert "1.00x as fast (goal at least 1x): met" in lines[1]
    record = {"summary": summary, "arms": list(times), "overrides": {"max_steps": 4}, "date": "today",
              "environment": {"machine": {"cpu": "cpu", "cores": 2}, "versions": {"torch": "2"}, "torch_threads": 2},
              "command": "python benchmarks/trainer_compare.py", "rounds": 3, "commands": [["python", "-m", "x"]]}  # fmt: skip
    text = script.markdown(record)
    assert (
        "**Smoke run** (max_steps 4)" in text
        and "| peftkit, defaults (`lora`) | 10.00, 11.00, 12.00 (1 failed: boom) |" in text
    )


def test_compare_dry_run_prints_the_commands(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTKIT_DATA_DIR", str(tmp_path))
    assert _compare_script().main(["--dry-run", "--rounds", "2", "--train-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and all(
        "-m peftkit.bench.cell" in line and "--train-size 64" in line for line in lines
    )
    assert [line.split("--strategy ")[1].split()[0] for line in lines[:5]] == [
        "lora", "lora-compile", "baseline-trainer-defaults", "baseline-trainer-best", "lora-compile"]  # fmt: skip
