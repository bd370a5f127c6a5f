"""Tiny models saved to a directory with a tokenizer built locally, for load_model tests (no hub)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import tiny_config
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def word_tokenizer(pad: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``w0 .. w89``; like many decoders' it has no pad token unless asked."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = SPECIALS + [f"w{i}" for i in range(90)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", **extra)


def tiny_model_dir(tmp_path: Path, arch: str, task: str, pad_token: bool = False, seed: int = 0) -> Path:
    """Save a tiny randomly initialised ``arch`` model for ``task`` and its tokenizer; return the folder.

    With ``pad_token=False`` neither the tokenizer nor the config has a pad token (the usual
    state of a decoder checkpoint), which is what load_model must repair.
    """
    from peftkit.introspect import auto_class

    folder = tmp_path / f"{arch}-{task}"
    overrides = {} if pad_token else {"pad_token_id": None}
    if pad_token:
        overrides["pad_token_id"] = SPECIALS.index("<pad>")
    torch.manual_seed(seed)
    auto_class(task).from_config(tiny_config(arch, **overrides)).save_pretrained(folder)
    word_tokenizer(pad=pad_token).save_pretrained(folder)
    return folder
