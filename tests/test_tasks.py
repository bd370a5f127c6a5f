"""peftkit.tasks: preprocessing, collation, eval steps and metrics for the three tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from helpers_data import char_tokenizer, load_minilm_tokenizer, smollm2_tokenizer, tiny_causal_lm

from peftkit.data import load_data
from peftkit.introspect import TASKS as TASK_NAMES
from peftkit.tasks import (
    IGNORE_INDEX,
    TASKS,
    CausalLMTask,
    TokenClassificationTask,
    exact_match_score,
    first_subtoken_labels,
    get_task,
    normalize_answer,
)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_minilm_tokenizer()


@pytest.fixture
def one_thread():
    """Tiny models train far faster on one thread, above all on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registry():
    assert tuple(TASKS)[: len(TASK_NAMES)] == TASK_NAMES  # one list: introspect's names are the registry's
    assert {"classification", "token-classification", "causal-lm", "seq2seq-lm"} <= set(TASKS)
    assert (get_task("classification").main_metric, get_task("classification").greater_is_better) == ("accuracy", True)
    assert (get_task("token-classification").main_metric, get_task("token-classification").greater_is_better) == ("f1", True)
    assert (get_task("causal-lm").main_metric, get_task("causal-lm").greater_is_better) == ("eval_loss", False)
    assert get_task("classification") is not get_task("classification")  # a fresh object per run
    task = get_task("causal-lm")
    assert get_task(task) is task
    with pytest.raises(ValueError, match="Unknown task 'regression'. Valid tasks: classification, token-classification"):
        get_task("regression")


# --------------------------------------------------------------------------- classification


def tiny_bert_classifier(vocab_size: int, num_labels: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def test_classification_prepare_and_collate(minilm_tokenizer):
    data = load_data("demo", "classification")
    task = get_task("classification")
    prepared = task.prepare(data, minilm_tokenizer, max_length=12)
    assert task.label_names == data["train"].features["label"].names
    assert list(prepared) == ["train", "validation", "test"]
    assert set(prepared["train"].column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    lengths = [len(x) for x in prepared["train"]["input_ids"]]
    assert max(lengths) == 12 and min(lengths) < 12  # truncated, not padded
    assert list(prepared["train"]["labels"]) == list(data["train"]["label"])
    rows = [prepared["train"][i] for i in range(4)]
    batch = task.collator(minilm_tokenizer)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (4, width) and batch["labels"].shape == (4,)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert (batch["input_ids"][i, n:] == minilm_tokenizer.pad_token_id).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)


def test_classification_eval_step_and_metrics(minilm_tokenizer):
    data = load_data("demo", "classification", max_eval_samples=16)
    task = get_task("classification")
    prepared = task.prepare(data, minilm_tokenizer, max_length=32)
    model = tiny_bert_classifier(minilm_tokenizer.vocab_size, len(task.label_names))
    batch = task.collator(minilm_tokenizer)([prepared["validation"][i] for i in range(16)])
    with torch.no_grad():
        out = task.eval_step(model, batch)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert set(out) == {"predictions", "labels", "loss"} and all(v.shape == (16,) for v in out.values())
    metrics = task.compute_metrics({k: v.numpy() for k, v in out.items()})
    expected_accuracy = (logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    assert metrics["eval_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, batch["labels"]).item(), rel=1e-5)
    assert 0.0 <= metrics["f1"] <= 1.0


def test_classification_metrics_by_hand():
    task = get_task("classification")
    metrics = task.compute_metrics({"predictions": np.array([0, 1, 1, 2]), "labels": np.array([0, 1, 0, 2])})
    # F1: class 0 -> 2/3, class 1 -> 2/3, class 2 -> 1
    assert metrics == {"accuracy": 0.75, "f1": pytest.approx((2 / 3 + 2 / 3 + 1) / 3)}
    with pytest.raises(ValueError, match="No evaluation examples"):
        task.compute_metrics({"predictions": np.array([]), "labels": np.array([])})


# --------------------------------------------------------------------------- token classification


def test_first_subtoken_labels():
    assert first_subtoken_labels([None, 0, 0, 1, 2, 2, 2, None], [5, 6, 7]) == [-100, 5, -100, 6, 7, -100, -100, -100]


def ner_data(names=("O", "B-PER", "I-PER", "B-LOC")):
    features = Features({"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=list(names)))})
    rows = {"tokens": [["Zyxquorvian", "visited", "Paris"], ["Ann", "Qwertzuiopkl", "left"]], "tags": [[1, 0, 3], [1, 2, 0]]}
    split = Dataset.from_dict(rows, features=features)
    return DatasetDict({"train": split, "validation": split})


def test_token_classification_labels_first_subtoken_of_each_word(minilm_tokenizer):
    data = ner_data()
    task = get_task("token-classification")
    prepared = task.prepare(data, minilm_tokenizer, max_length=64)
    assert task.label_names == ["O", "B-PER", "I-PER", "B-LOC"]
    assert set(prepared["train"].column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    for row, words, tags in zip(prepared["train"], data["train"]["tokens"], data["train"]["tags"], strict=True):
        pieces = [minilm_tokenizer.tokenize(w) for w in words]
        assert any(len(p) > 1 for p in pieces)  # the made-up words split into several sub-tokens
        expected = [IGNORE_INDEX]  # [CLS]
        for word_pieces, tag in zip(pieces, tags, strict=True):
            expected += [tag] + [IGNORE_INDEX] * (len(word_pieces) - 1)
        expected.append(IGNORE_INDEX)  # [SEP]
        assert row["labels"] == expected
        assert len(row["labels"]) == len(row["input_ids"])
    rows = [prepared["train"][0], prepared["train"][1]]
    batch = task.collator(minilm_tokenizer)(rows)
    short = min(range(2), key=lambda i: len(rows[i]["labels"]))
    n = len(rows[short]["labels"])
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()


def test_token_classification_eval_step_masks_unlabelled_positions(minilm_tokenizer):
    from transformers import BertConfig, BertForTokenClassification

    task = get_task("token-classification")
    prepared = task.prepare(ner_data(), minilm_tokenizer)
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=64, num_labels=4)).eval()
    batch = task.collator(minilm_tokenizer)([prepared["validation"][i] for i in range(2)])
    with torch.no_grad():
        out = task.eval_step(model, batch)
    assert out["predictions"].shape == batch["labels"].shape
    assert ((out["predictions"] == IGNORE_INDEX) == (batch["labels"] == IGNORE_INDEX)).all()
    metrics = task.compute_metrics({k: v.numpy() for k, v in out.items()})
    assert set(metrics) == {"precision", "recall", "f1", "accuracy"}


def test_token_classification_metrics_by_hand():
    task = TokenClassificationTask(label_names=["O", "B-PER", "I-PER", "B-LOC"])
    labels = np.array([[-100, 1, 2, 0, 3, -100], [-100, 3, -100, -100, -100, -100]])
    predictions = np.array([[-100, 1, 2, 0, 0, -100], [-100, 3, -100, -100, -100, -100]])
    # true entities: PER, LOC (sentence 1), LOC (sentence 2); predicted: PER, LOC (sentence 2), both right
    metrics = task.compute_metrics({"predictions": predictions, "labels": labels})
    assert metrics["precision"] == pytest.approx(1.0)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(0.8)
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="no label names"):
        TokenClassificationTask().compute_metrics({"predictions": predictions, "labels": labels})


# --------------------------------------------------------------------------- causal LM


def qa_data(pairs):
    split = Dataset.from_dict({"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})
    return DatasetDict({"train": split, "validation": split})


PAIRS = [("colour of grass?", "green"), ("colour of sky?", "blue"), ("colour of snow?", "white")]


def test_plain_layout_masks_the_prompt():
    tokenizer = char_tokenizer(chat=False)
    task = get_task("causal-lm")
    assert not task.uses_chat_template(tokenizer)
    ids, labels = task.encode(tokenizer, "2+2?", "4")
    prompt = tokenizer("2+2?\n")["input_ids"]
    assert ids == prompt + tokenizer("4", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]
    assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == "4</s>"
    assert task.prompt_ids(tokenizer, "2+2?") == prompt


def test_chat_template_layout_trains_only_the_assistant_content():
    tokenizer = char_tokenizer(chat=True)
    task = get_task("causal-lm")
    ids, labels = task.encode(tokenizer, "2+2?", "four")
    assert tokenizer.decode(ids) == "<|user|>2+2?<|end|><|assistant|>four<|end|>"
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "four<|end|>"
    first = labels.index(trained[0])
    assert all(t == IGNORE_INDEX for t in labels[:first]) and labels[first:] == ids[first:]
    assert ids[:first] == task.prompt_ids(tokenizer, "2+2?")  # generation starts where training's answer does
    assert tokenizer.convert_ids_to_tokens(task.stop_ids(tokenizer)) == ["</s>", "<|end|>"]
    assert not get_task("causal-lm", use_chat_template=False).uses_chat_template(tokenizer)


def test_real_chat_template_masks_up_to_the_assistant_content():
    tokenizer = smollm2_tokenizer()
    task = get_task("causal-lm")
    ids, labels = task.encode(tokenizer, "What is the capital of France?", "Paris")
    text = tokenizer.decode(ids)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == "Paris<|im_end|>\n"
    assert tokenizer.decode(task.prompt_ids(tokenizer, "What is the capital of France?")).endswith("<|im_start|>assistant\n")


def test_causal_lm_prepare_truncates_and_drops_answerless_examples():
    tokenizer = char_tokenizer()
    task = get_task("causal-lm")
    data = qa_data([("short?", "yes"), ("a prompt far longer than the limit allows", "no")])
    with pytest.warns(UserWarning, match="1 of 2 examples have no response token left within max_length=20"):
        prepared = task.prepare(data, tokenizer, max_length=20)
    assert len(prepared["train"]) == 1 and set(prepared["train"].column_names) == {"input_ids", "attention_mask", "labels"}
    assert all(len(x) <= 20 for x in prepared["train"]["input_ids"])
    with pytest.raises(ValueError, match="raise max_length"):
        task.prepare(qa_data([("a prompt far longer than the limit allows", "no")]), tokenizer, max_length=20)


def test_causal_lm_eval_loss_is_the_response_token_loss(one_thread):
    tokenizer = char_tokenizer()
    task = get_task("causal-lm")
    prepared = task.prepare(qa_data(PAIRS), tokenizer, max_length=64)
    batch = task.collator(tokenizer)([prepared["train"][i] for i in range(3)])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    model = tiny_causal_lm(len(tokenizer))
    with torch.no_grad():
        out = task.eval_step(model, batch)
        reference = model(**batch).loss.item()  # transformers' mean over the labelled tokens
    assert out["n_tokens"].tolist() == [len("green") + 1, len("blue") + 1, len("white") + 1]
    metrics = task.compute_metrics({k: v.numpy() for k, v in out.items()})
    assert metrics["eval_loss"] == pytest.approx(reference, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(np.exp(reference), rel=1e-5)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_causal_lm_learns_answers_and_exact_match_scores_them(chat, one_thread):
    """Overfit a tiny model on three pairs with the task's own batches: greedy generation from the
    task's prompt layout must then give back exactly the trained answers."""
    tokenizer = char_tokenizer(chat=chat)
    task = get_task("causal-lm")
    data = qa_data(PAIRS)
    model = tiny_causal_lm(len(tokenizer))
    assert task.exact_match(model, tokenizer, data["validation"], max_new_tokens=8) == 0.0
    batch = task.collator(tokenizer)(list(task.prepare(data, tokenizer, max_length=64)["train"]))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model.training
    assert task.generate(model, tokenizer, [p for p, _ in PAIRS], max_new_tokens=8, batch_size=2) == ["green", "blue", "white"]
    assert model.training  # generate restores the mode
    assert task.exact_match(model, tokenizer, data["validation"], max_new_tokens=8) == 1.0
    assert task.exact_match(model, tokenizer, data["validation"], max_new_tokens=8, max_samples=1) == 1.0


def test_generative_tasks_log_their_answers_to_the_first_prompts(one_thread):
    """`Task.log_samples` (what the training log shows after each evaluation): the answers of causal-lm
    and seq2seq-lm to the first validation prompts with their references; None for the other tasks."""
    tokenizer = char_tokenizer()
    model = tiny_causal_lm(len(tokenizer))
    split = qa_data(PAIRS)["validation"]
    task = get_task("causal-lm")
    rows = task.log_samples(model, tokenizer, split, 2)
    answers = task.generate(model, tokenizer, [p for p, _ in PAIRS[:2]], max_new_tokens=32)
    expected = [{"prompt": p, "generated": g, "reference": r} for (p, r), g in zip(PAIRS, answers, strict=False)]
    assert rows == expected
    seq2seq = get_task("seq2seq-lm")
    seq2seq.generate = lambda model, tokenizer, prompts, max_new_tokens: [p.upper() for p in prompts]
    assert seq2seq.log_samples(None, None, split, 9) == [
        {"prompt": p, "generated": p.upper(), "reference": r} for p, r in PAIRS
    ]
    assert task.log_samples(model, tokenizer, Dataset.from_dict({"text": ["no prompts"]}), 2) is None
    assert get_task("classification").log_samples(model, tokenizer, split, 2) is None


def test_exact_match_score_normalizes():
    assert normalize_answer("  Card_Arrival \n") == "card_arrival"
    assert normalize_answer("New   York") == "new york"
    assert exact_match_score([" Paris", "LONDON ", "rome"], ["paris", "london", "Madrid"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match_score(["a", "b"], ["a"])


def test_use_chat_template_without_one_is_an_error():
    with pytest.raises(ValueError, match="has no chat_template"):
        CausalLMTask(use_chat_template=True).encode(char_tokenizer(), "a", "b")
