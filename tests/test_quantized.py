"""Quantized loading on the CPU (bitsandbytes 0.50): the packaged MiniLM in 4-bit and 8-bit (layers,
memory, training, checkpoints, merge) and tiny models of other architectures (which heads stay
unquantized, pre-quantized checkpoints)."""

from __future__ import annotations

import copy
import warnings

import bitsandbytes as bnb
import pytest
import torch
from conftest import perturb_trainable
from helpers_loading import tiny_model_dir
from torch import nn

import peftkit
import peftkit.loading
from peftkit.loading import dequantize_model, load_model

SENTENCES = ["a gripping, funny film", "dull and far too long", "i loved every minute", "a tedious mess",
             "warm and wise", "badly acted and boring", "a small triumph", "nothing works here"]
LABELS = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
LAYER_TYPES = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}


@pytest.fixture(scope="module")
def load(minilm_path):
    """Factory: a fresh (model, tokenizer) for a quantization. Quantizing takes seconds, so each
    model is loaded once and handed out as deep copies; ``fresh=True`` loads it anew."""
    loaded = {}

    def make(quantization, fresh=False):
        if fresh:
            return load_model(str(minilm_path), labels=["negative", "positive"], quantization=quantization)
        if quantization not in loaded:
            loaded[quantization] = make(quantization, fresh=True)
        model, tokenizer = loaded[quantization]
        return copy.deepcopy(model), tokenizer

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


@pytest.mark.parametrize("strategy", ["ia3", "prompt"])
def test_peft_methods_get_gradients_on_4bit_base(load, strategy):
    """IA3 and prompt tuning on the 4-bit base: one step reaches every trainable tensor."""
    model, tokenizer = load("4bit")
    model = peftkit.wrap(model, strategy)
    model.train()
    model(**batch_for(tokenizer), labels=LABELS).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and p.grad is not None for p in trainable)
    assert all(p.grad.abs().sum() > 0 for p in trainable)


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


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_dequantize_model_gives_plain_float32_linears(load, quantization):
    model, tokenizer = load(quantization)
    model.eval()
    batch = batch_for(tokenizer)
    with torch.no_grad():
        before = model(**batch).logits
    plain = dequantize_model(model)
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in plain.modules())
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert getattr(plain, "hf_quantizer", None) is None
    with torch.no_grad():
        after = plain(**batch).logits
    # The same quantized values, now multiplied in float32 (LLM.int8 also quantizes activations).
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4 if quantization == "4bit" else 2e-2)
    with pytest.raises(ValueError, match="nothing to dequantize"):
        dequantize_model(plain)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_trainable_biases_stay_float32_under_bfloat16_compute(load, monkeypatch, quantization):
    """bitsandbytes casts a quantized layer's bias in place to the dtype it computes in: bfloat16
    for 4-bit layers on GPUs, the input's dtype (bfloat16 under mixed precision) for 8-bit ones.
    BitFit's biases must stay the float32 tensors AdamW holds, and still train."""
    monkeypatch.setattr(peftkit.loading, "_compute_dtype", lambda: torch.bfloat16)  # 4-bit as on a GPU
    model, tokenizer = load(quantization, fresh=True)
    query = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, LAYER_TYPES[quantization])
    model = peftkit.wrap(model, "bitfit")
    params = [p for p in model.parameters() if p.requires_grad]
    start = query.bias.detach().clone()
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    model.train()
    batch = batch_for(tokenizer)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # 8-bit layers see bfloat16 inputs
            loss = model(**batch, labels=LABELS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.dtype == torch.float32 for p in params)
    assert query.bias.dtype == torch.float32 and not torch.equal(query.bias, start)


# (architecture, task, the head modules that must stay in full precision)
TINY_HEADS = [
    ("llama", "causal-lm", ["lm_head"]),
    ("llama", "classification", ["score"]),
    ("gpt2", "classification", ["score"]),
    ("distilbert", "classification", ["pre_classifier", "classifier"]),
    ("bart", "classification", ["classification_head"]),
]


@pytest.mark.parametrize("arch,task,heads", TINY_HEADS, ids=[f"{a}-{t}" for a, t, _ in TINY_HEADS])
def test_heads_read_off_the_model_stay_unquantized(tmp_path, arch, task, heads):
    model, _ = load_model(str(tiny_model_dir(tmp_path, arch, task, pad_token=arch == "bart")), task=task, quantization="4bit")
    quantized = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized, "the backbone should be quantized"
    for head in heads:
        module = model.get_submodule(head)
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in module.modules())
        assert all(p.dtype == torch.float32 for p in module.parameters())
    assert not any(n.split(".")[0] in heads for n in quantized)


@pytest.mark.parametrize("task", ["causal-lm", "classification"])
def test_tiny_llama_4bit_pad_token_and_save_pretrained_round_trip(tmp_path, task):
    """A decoder without a pad token, loaded in 4-bit, saved, and loaded back as a pre-quantized
    checkpoint: still 4-bit, same outputs, and (prepared again) trainable after an evaluation."""
    path = tiny_model_dir(tmp_path, "llama", task)
    model, tokenizer = load_model(str(path), task=task, quantization="4bit")
    assert tokenizer.pad_token == "</s>" and model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["w1 w2 w3", "w4"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")

    again, _ = load_model(str(tmp_path / "saved"), task=task)  # no quantization= : read from the config
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in again.modules()) == 14
    assert again.config.pad_token_id == tokenizer.pad_token_id
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, before)
    again = peftkit.wrap(again, "lora")
    again.train()
    labels = batch["input_ids"] if task == "causal-lm" else torch.tensor([0, 1])
    again(**batch, labels=labels).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in again.parameters() if p.requires_grad)
