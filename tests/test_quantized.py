"""The packaged MiniLM in 4-bit and 8-bit on the CPU (bitsandbytes 0.50): layers, memory, training."""

from __future__ import annotations

import warnings

import bitsandbytes as bnb
import pytest
import torch
from conftest import perturb_trainable
from torch import nn

import peftkit
from peftkit.loading import load_model

SENTENCES = ["a gripping, funny film", "dull and far too long", "i loved every minute", "a tedious mess",
             "warm and wise", "badly acted and boring", "a small triumph", "nothing works here"]
LABELS = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
LAYER_TYPES = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}


@pytest.fixture(scope="module")
def load(minilm_path):
    def make(quantization):
        return load_model(str(minilm_path), labels=["negative", "positive"], quantization=quantization)

    return make


def batch_for(tokenizer):
    return tokenizer(SENTENCES, return_tensors="pt", padding=True)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_backbone_quantized_head_full_precision(load, quantization):
    model, _ = load(quantization)
    linears = [m for n, m in model.bert.named_modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, LAYER_TYPES[quantization]) for m in linears)
    assert type(model.classifier) is nn.Linear and model.classifier.weight.dtype == torch.float32
    assert peftkit.count_parameters(model).trainable == 0  # the base is frozen, ready for k-bit training


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
@pytest.mark.parametrize("strategy", ["lora", "adapter", "bitfit"])
def test_strategies_train_on_quantized_base(load, quantization, strategy):
    model, tokenizer = load(quantization)
    model = peftkit.wrap(model, strategy)
    batch = batch_for(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    torch.manual_seed(0)
    model.train()
    losses = []
    for _ in range(10):
        loss = model(**batch, labels=LABELS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_training_after_evaluation_on_4bit(load):
    """An eval forward pass must not leave 4-bit layers in an inference-only layout."""
    model, tokenizer = load("4bit")
    model = peftkit.wrap(model, "lora")
    batch = batch_for(tokenizer)
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train()
    model(**batch, labels=LABELS).loss.backward()
    first = model.base_model.model.bert.encoder.layer[0].attention.self.query.lora_B["default"].weight
    assert first.grad is not None and first.grad.abs().sum() > 0  # gradients reach the first layer


def test_4bit_memory(load):
    full, _ = load(None)
    quant, _ = load("4bit")
    fp32_bytes = sum(m.weight.numel() * 4 for m in full.bert.modules() if isinstance(m, nn.Linear))
    q_linears = [m for m in quant.bert.modules() if isinstance(m, bnb.nn.Linear4bit)]
    q_bytes = sum(m.weight.numel() * m.weight.element_size() for m in q_linears)
    q_bytes += sum(m.weight.quant_state.absmax.numel() * m.weight.quant_state.absmax.element_size() for m in q_linears)
    assert q_bytes <= 0.3 * fp32_bytes
    assert quant.get_memory_footprint() <= 0.65 * full.get_memory_footprint()
    # A 4-bit model counts the values it holds, not its packed bytes.
    assert peftkit.count_parameters(quant).total == peftkit.count_parameters(full).total


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_full_fine_tuning_refuses_quantized_model(load, quantization):
    model, _ = load(quantization)
    with pytest.raises(ValueError, match="Full fine-tuning needs an unquantized model"):
        peftkit.wrap(model, "full")


def test_quantized_lora_checkpoint_and_merge(load, tmp_path):
    model, tokenizer = load("4bit")
    model = peftkit.wrap(model, "lora")
    perturb_trainable(model)
    model.eval()
    batch = batch_for(tokenizer)
    with torch.no_grad():
        expected = model(**batch).logits
    path = peftkit.save(model, tmp_path / "qlora")
    reloaded = peftkit.load(path).eval()  # the base is reloaded in 4-bit, as it was trained
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in reloaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-5)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = peftkit.merge(model)
    assert any("not the quantized model you trained" in str(w.message) for w in caught)
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in merged.modules())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    with torch.no_grad():
        got = merged(**batch).logits
    # The merged update is re-quantized once: close to, not equal to, the adapter's logits.
    assert (got - expected).abs().max() < 0.1 * expected.abs().max() + 0.05
