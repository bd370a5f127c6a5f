"""Causal-LM data formats besides prompt/response columns: chat ``messages``, Alpaca and ShareGPT,
detected from a file's columns, with the loss on the assistant's turns only (multi-turn too)."""

from __future__ import annotations

import pytest
import torch
from helpers_data import char_tokenizer, smollm2_tokenizer, write_jsonl

from peftkit.data import DataError, load_data
from peftkit.tasks import IGNORE_INDEX, get_task
from peftkit.tasks.sft_formats import detect_format

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "four"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "six"},
]
SHAREGPT = [
    {"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
    for m in CHAT
]


def trained_text(tokenizer, ids, labels) -> list[str]:
    """The decoded runs of labelled tokens (one string per run), checking labels equal ids there."""
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return [tokenizer.decode(run) for run in [*runs, current] if run]


def load(tmp_path, rows, **kwargs):
    return load_data(
        None,
        "causal-lm",
        train=str(write_jsonl(tmp_path / "train.jsonl", rows)),
        validation_fraction=0.25,
        **kwargs,
    )


# --------------------------------------------------------------------------- detection


def test_formats_are_detected_from_the_columns():
    assert detect_format(["prompt", "response", "id"]) == "prompt/response"
    assert (
        detect_format(["question", "answer"], prompt_column="question", response_column="answer")
        == "prompt/response"
    )
    assert detect_format(["messages"]) == "chat messages"
    assert detect_format(["instruction", "input", "output"]) == "Alpaca"
    assert detect_format(["instruction", "output"]) == "Alpaca"  # input is optional
    assert detect_format(["conversations", "id"]) == "ShareGPT"
    assert detect_format(["text"]) is None


def test_every_format_loads_as_messages(tmp_path):
    chat = load(tmp_path / "chat", [{"messages": CHAT, "id": i} for i in range(8)])
    assert chat["train"].column_names == ["messages"] and chat["train"][0]["messages"] == CHAT
    sharegpt = load(tmp_path / "sharegpt", [{"conversations": SHAREGPT}] * 8)
    assert sharegpt["train"][0]["messages"] == CHAT
    alpaca = load(
        tmp_path / "alpaca",
        [{"instruction": "Add.", "input": "2+2" if i % 2 else "", "output": "4"} for i in range(8)],
    )
    rows = {
        tuple((m["role"], m["content"]) for m in row)
        for split in alpaca.values()
        for row in split["messages"]
    }
    assert rows == {
        (("user", "Add."), ("assistant", "4")),
        (("user", "Add.\n\n2+2"), ("assistant", "4")),
    }  # input optional
    plain = load(tmp_path / "plain", [{"prompt": "a", "response": "b"}] * 8)
    assert plain["train"].column_names == ["prompt", "response"]  # unchanged


def test_a_file_matching_no_format_names_them_all(tmp_path):
    with pytest.raises(DataError) as err:
        load(tmp_path, [{"question": "a", "reply": "b"}] * 4)
    message = str(err.value)
    for part in (
        "train.jsonl",
        "question, reply",
        "prompt/response: 'prompt', 'response'",
        "chat messages: 'messages'",
        "Alpaca: 'instruction', 'output'",
        "ShareGPT: 'conversations'",
        "prompt_column=",
    ):
        assert part in message


def test_bad_conversations_are_refused_or_dropped(tmp_path):
    with pytest.raises(DataError, match="unknown speaker 'bot'.*human, user, gpt, assistant, system"):
        load(
            tmp_path / "a",
            [{"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}] * 4,
        )
    with pytest.raises(DataError, match="text 'role' and 'content'"):
        load(tmp_path / "b", [{"messages": [{"role": "user", "text": "hi"}]}] * 4)
    rows = [{"messages": CHAT}] * 7 + [{"messages": CHAT[:2]}]
    with pytest.warns(UserWarning, match="1 of 8 conversations have no assistant turn"):
        data = load(tmp_path / "c", rows)
    assert len(data["train"]) + len(data["validation"]) == 7


# --------------------------------------------------------------------------- masking


def test_chat_template_trains_every_assistant_turn_and_nothing_else():
    tokenizer = char_tokenizer(chat=True)
    ids, labels = get_task("causal-lm").encode_messages(tokenizer, CHAT)
    assert (
        tokenizer.decode(ids)
        == "<|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|>four<|end|><|user|>and 3+3?<|end|><|assistant|>six<|end|>"
    )
    assert trained_text(tokenizer, ids, labels) == ["four<|end|>", "six<|end|>"]


def test_plain_fallback_layout_without_a_chat_template():
    tokenizer = char_tokenizer(chat=False)
    task = get_task("causal-lm")
    ids, labels = task.encode_messages(tokenizer, CHAT)
    assert tokenizer.decode(ids, skip_special_tokens=False) == "Be brief.\n2+2?\nfour</s>and 3+3?\nsix</s>"
    assert trained_text(tokenizer, ids, labels) == ["four</s>", "six</s>"]
    single = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "four"}]
    assert task.encode_messages(tokenizer, single) == task.encode(
        tokenizer, "2+2?", "four"
    )  # the prompt/response layout


def test_smollm2_chat_template_masks_all_but_the_assistant_turns():
    tokenizer = smollm2_tokenizer()
    ids, labels = get_task("causal-lm").encode_messages(tokenizer, CHAT)
    text = tokenizer.decode(ids)
    assert (
        "<|im_start|>system\nBe brief.<|im_end|>" in text and "<|im_start|>user\nand 3+3?<|im_end|>" in text
    )
    assert trained_text(tokenizer, ids, labels) == ["four<|im_end|>\n", "six<|im_end|>\n"]


# --------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sharegpt_file_trains_a_tiny_decoder(tmp_path, arch):
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM

    import peftkit
    from peftkit.training import TrainConfig, train

    tokenizer = char_tokenizer(chat=True)
    torch.manual_seed(0)
    config = tiny_config(
        arch,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        max_position_embeddings=256,
    )
    model = peftkit.wrap(AutoModelForCausalLM.from_config(config), "lora", target_modules="all-linear")
    data = load(tmp_path, [{"conversations": SHAREGPT}] * 12)
    task = get_task("causal-lm")
    result = train(
        model,
        tokenizer,
        data,
        TrainConfig(
            output_dir=str(tmp_path / "out"), max_steps=3, batch_size=4, progress=False, max_length=256
        ),
        task=task,
    )
    assert result.metrics["eval_loss"] > 0 and "perplexity" in result.metrics
    prepared = task.prepare(data, tokenizer, max_length=256)["validation"][0]
    assert trained_text(tokenizer, prepared["input_ids"], prepared["labels"]) == ["four<|end|>", "six<|end|>"]
