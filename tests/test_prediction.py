"""`peftkit.prediction.predict_texts`: length-sorted batches give every text its own answer, in order."""

from __future__ import annotations

import pytest
import torch
from helpers_data import load_minilm_tokenizer
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

from peftkit.prediction import predict_texts

TEXTS = ["short", "a much longer sentence that pads the others in its batch quite a lot", "mid length text here",
         "x", "another fairly long sentence about a film that was fine", "ok then"]


@pytest.mark.parametrize(("cls", "task"), [(BertForSequenceClassification, "classification"),
                                           (BertForTokenClassification, "token-classification")])
def test_sorted_batches_keep_order_and_match_one_by_one(cls, task):
    tokenizer = load_minilm_tokenizer()
    torch.manual_seed(0)
    model = cls(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, num_labels=3, id2label={0: "O", 1: "B-X", 2: "I-X"})).eval()
    batched = predict_texts(model, tokenizer, task, TEXTS, batch_size=2)
    alone = [predict_texts(model, tokenizer, task, [t])[0] for t in TEXTS]
    assert len(batched) == len(TEXTS)
    for got, want in zip(batched, alone, strict=True):
        if task == "classification":
            assert got["label"] == want["label"]
            assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
        else:
            assert got["tokens"] == want["tokens"] and got["labels"] == want["labels"]
