"""Which modules a strategy adapts, found from the model itself.

``attention_targets`` gives the projections inside every attention module (including fused
ones such as GPT-2's ``c_attn`` or BLOOM/Falcon's ``query_key_value``); ``sublayer_outputs``
gives, per block, the attention-output and feed-forward-output projections that bottleneck
adapters follow. Both read module classes and layer shapes, not a per-model-type table, so fused
projections (Phi-3's ``qkv_proj`` and ``gate_up_proj``), output layers under any name and parallel
attention/feed-forward blocks (GPT-J, CodeGen, Falcon) need nothing listed. ``ia3_targets`` takes
PEFT's own per-model-type defaults where PEFT has them and falls back to the structure.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft.utils import constants as peft_tables
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


def _relative(block: str, name: str) -> str:
    """``name`` within ``block``: the suffix PEFT matches, the same in every block."""
    return name[len(block) + 1 :]


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
                targets[_relative(block_name, name)] = None
    if not targets:
        raise _unreadable(model, "attention projections")
    return list(targets)


def residual_width(model: nn.Module) -> int | None:
    """Width of the residual stream (the hidden size), read from the config, else the input embeddings."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    width = getattr(config, "hidden_size", None)
    if isinstance(width, int) and width > 0:
        return width
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(embeddings, "embedding_dim", None)


def _output_projection(linears: list[tuple[str, nn.Module]], width: int | None) -> tuple[str, nn.Module]:
    """The output projection of one attention module: the last registered Linear-like layer that writes
    the residual width. Registration order alone is not enough: Phi-3 and CodeGen register ``o_proj`` /
    ``out_proj`` before their fused ``qkv_proj``, whose output (q, k and v together) is wider."""
    writes_residual = [(n, m) for n, m in linears if linear_dims(m)[1] == width]
    return (writes_residual or linears)[-1]


def _feed_forward_modules(
    block: nn.Module, block_name: str, attentions: list[str], min_dim: int = 2
) -> list[str]:
    """The block's children outside attention holding weights of ``min_dim`` dimensions or more.

    With ``min_dim=3``: a mixture of experts, whose experts' weights transformers 5 keeps as one 3-D
    tensor (Mixtral's and Qwen2-MoE's ``mlp``); its output, not a shared expert's ``down_proj``, is the
    feed-forward output. With 2: a feed-forward module whose output is no Linear layer. Norms hold
    vectors only and are never taken.
    """
    return [
        f"{block_name}.{name}"
        for name, child in block.named_children()
        if f"{block_name}.{name}" not in attentions and any(p.dim() >= min_dim for p in _weights(child))
    ]


def _weights(module: nn.Module):
    """The parameters of a module but those of convolutions (whose kernels are 3-D too, not experts)."""
    for sub in module.modules():
        if not isinstance(sub, nn.modules.conv._ConvNd):
            yield from sub.parameters(recurse=False)


def sublayer_outputs(model: nn.Module) -> list[SublayerOutputs]:
    """Per block: the output projection of each attention module and of the feed-forward part.

    The attention output is found by `_output_projection` (``o_proj``, ``out_proj``, ``dense``,
    ``attention.output.dense``, MPNet's ``o``, GPT-2's ``attn.c_proj``). The feed-forward output is the
    last Linear-like layer outside attention that writes the residual width (``down_proj`` after a fused
    ``gate_up_proj``, ``fc2``, ``fc_out``, ``output.dense``, ``mlp.c_proj``); a mixture of experts, or
    a feed-forward part without such a layer, is taken whole (`_feed_forward_modules`). Blocks that
    run attention and feed-forward in parallel (GPT-J, CodeGen, Falcon, Phi) have both, side by side.
    """
    width = residual_width(model)
    found: list[SublayerOutputs] = []
    for block_name, block in _blocks(model):
        attn_outputs = []
        inside: set[str] = set()
        attns = attention_modules(block, block_name)
        for attn_name, attn in attns:
            linears = list(named_linears(attn, attn_name))
            inside.update(n for n, _ in linears)
            attn_outputs.append(_output_projection(linears, width))
        if not attn_outputs:
            continue
        out = width or linear_dims(attn_outputs[-1][1])[1]
        experts = _feed_forward_modules(block, block_name, [a for a, _ in attns], min_dim=3)
        ffn = experts or [
            n for n, m in named_linears(block, block_name) if n not in inside and linear_dims(m)[1] == out
        ]
        ffn = ffn or _feed_forward_modules(block, block_name, [a for a, _ in attns])
        found.append(SublayerOutputs(block_name, tuple(n for n, _ in attn_outputs), ffn[-1] if ffn else None))
    if not found or all(s.feed_forward is None for s in found):
        raise _unreadable(model, "attention and feed-forward output projections")
    return found


def ffn_output_targets(model: nn.Module) -> list[str]:
    """The feed-forward output projection of each block, as names within a block (Linear-like ones only:
    PEFT cannot target a mixture of experts' 3-D weights)."""
    found = [s for s in sublayer_outputs(model) if s.feed_forward]
    linear = [s for s in found if linear_dims(model.get_submodule(s.feed_forward))]
    return list({_relative(s.block, s.feed_forward): None for s in linear})


# Separate key and value projections as architectures spell them once "_proj"/"_lin" is dropped and the
# name lowercased (k_proj, key_proj, k_lin, CTRL's Wk, T5's k), for models PEFT's IA3 table does not list.
_KEY_VALUE = ("k", "v", "key", "value", "wk", "wv")


def _is_key_or_value(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower().removesuffix("_proj").removesuffix("_lin") in _KEY_VALUE


def key_value_targets(model: nn.Module) -> list[str]:
    """Attention key/value projections as names within a block, read off the model's structure.

    The input projections of an attention module are its Linear-like layers other than the output
    projection. A single input projection is a fused q/k/v (``qkv_proj``, ``c_attn``,
    ``query_key_value``, ``Wqkv``) and is taken whole; separate ones are taken when named as keys or
    values, and all input projections are taken when none is.
    """
    width = residual_width(model)
    found: dict[str, None] = {}
    for block_name, block in _blocks(model):
        for attn_name, attn in attention_modules(block, block_name):
            linears = list(named_linears(attn, attn_name))
            output = _output_projection(linears, width)[0]
            inputs = [n for n, _ in linears if n != output] or [output]
            kv = [n for n in inputs if _is_key_or_value(n)] if len(inputs) > 1 else inputs
            found.update((_relative(block_name, n), None) for n in kv or inputs)
    if not found:
        raise _unreadable(model, "attention projections")
    return list(found)


def _peft_table(model: nn.Module, table: dict) -> list[str] | None:
    """``table[model_type]`` from one of PEFT's per-architecture tables, when every name in it is a
    module of this model (transformers renames modules now and then); None otherwise."""
    names = table.get(getattr(getattr(model, "config", None), "model_type", None))
    if not isinstance(names, list) or not names:
        return None
    modules = [n for n, _ in model.named_modules()]
    if all(any(m == t or m.endswith(f".{t}") for m in modules) for t in names):
        return list(names)
    return None


def ia3_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """(target modules, feed-forward modules) for IA3: PEFT's own defaults for the model type where it
    has them (what ``IA3Config`` without ``target_modules`` picks), else `key_value_targets` and
    `ffn_output_targets` read off the structure."""
    targets, ffn = (
        _peft_table(model, peft_tables.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING),
        _peft_table(model, peft_tables.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING),
    )
    if targets is not None and ffn is not None:
        return targets, ffn
    ffn = ffn_output_targets(model)
    return key_value_targets(model) + ffn, ffn
