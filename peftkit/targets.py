"""Which modules a strategy adapts, found from the model itself.

``attention_targets`` gives the projections inside every attention module (including fused
ones such as GPT-2's ``c_attn`` or BLOOM/Falcon's ``query_key_value``); ``sublayer_outputs``
gives, per block, the attention-output and feed-forward-output projections that bottleneck
adapters follow. Both read module classes and layer shapes, not a per-model-type table.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .introspect import (
    attention_modules,
    backbone,
    linear_dims,
    named_linears,
    transformer_blocks,
)


@dataclass(frozen=True)
class SublayerOutputs:
    """Qualified names of the output projections of one transformer block."""

    block: str
    attention: tuple[str, ...]  # one per attention module (self, cross)
    feed_forward: str | None


def _unreadable(model: nn.Module, what: str) -> ValueError:
    names = sorted({n.rsplit(".", 1)[-1] for n, _ in named_linears(model)})
    shown = ", ".join(names[:30]) or "none"
    return ValueError(
        f"Could not find {what} in {type(model).__name__} automatically. Linear-like modules "
        f"found (last name part): {shown}. Pass them explicitly, e.g. "
        f"wrap(model, 'lora', target_modules=[{', '.join(repr(n) for n in names[:2])}])."
    )


def _backbone_prefix(model: nn.Module) -> str:
    inner = backbone(model)
    if inner is model:
        return ""
    for name, sub in model.named_children():
        if sub is inner:
            return name
    return ""


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    prefix = _backbone_prefix(model)
    inner = backbone(model)
    blocks = transformer_blocks(inner)
    return [(f"{prefix}.{n}" if prefix else n, b) for n, b in blocks]


def attention_targets(model: nn.Module) -> list[str]:
    """Every Linear-like projection inside the attention modules, as names within a block.

    Names are relative to the block (``attention.self.query``, ``self_attn.q_proj``), which
    PEFT matches as suffixes of the full module names: short, readable, and still precise.
    """
    targets: dict[str, None] = {}
    for block_name, block in _blocks(model):
        for attn_name, attn in attention_modules(block, block_name):
            for name, _ in named_linears(attn, attn_name):
                targets[name[len(block_name) + 1 :]] = None
    if not targets:
        raise _unreadable(model, "attention projections")
    return list(targets)


def sublayer_outputs(model: nn.Module) -> list[SublayerOutputs]:
    """Per block: the last projection of each attention module and of the feed-forward part.

    The attention output is the last Linear-like layer registered in an attention module
    (``o_proj``, ``out_proj``, ``attention.output.dense``, GPT-2's ``attn.c_proj``). The
    feed-forward output is the last Linear-like layer outside attention whose output width
    equals the attention output's (``down_proj``, ``fc2``, ``output.dense``, ``mlp.c_proj``).
    """
    found: list[SublayerOutputs] = []
    for block_name, block in _blocks(model):
        attns = attention_modules(block, block_name)
        attn_outputs = []
        inside: set[str] = set()
        for attn_name, attn in attns:
            linears = list(named_linears(attn, attn_name))
            inside.update(n for n, _ in linears)
            attn_outputs.append(linears[-1])
        if not attn_outputs:
            continue
        width = linear_dims(attn_outputs[-1][1])[1]
        ffn = [n for n, m in named_linears(block, block_name) if n not in inside and linear_dims(m)[1] == width]
        found.append(SublayerOutputs(block_name, tuple(n for n, _ in attn_outputs), ffn[-1] if ffn else None))
    if not found or all(s.feed_forward is None for s in found):
        raise _unreadable(model, "attention and feed-forward output projections")
    return found


def ffn_output_targets(model: nn.Module) -> list[str]:
    """The feed-forward output projection of each block, as names within a block."""
    names = {s.feed_forward[len(s.block) + 1 :]: None for s in sublayer_outputs(model) if s.feed_forward}
    return list(names)


# Names of key and value projections (separate or fused) as architectures spell them.
_KEY_VALUE = ("k", "v", "key", "value", "k_proj", "v_proj", "k_lin", "v_lin", "c_attn",
              "query_key_value", "qkv_proj", "Wqkv", "qkv", "in_proj")


def key_value_targets(model: nn.Module) -> list[str]:
    """Attention key/value projections (fused ones included); all projections if unnamed."""
    every = attention_targets(model)
    kv = [n for n in every if n.rsplit(".", 1)[-1] in _KEY_VALUE]
    return kv or every
