"""Prefix tuning of our own (Li & Liang 2021) for the models PEFT's cannot reach.

PEFT feeds its prefixes in as ``past_key_values``, which encoders and the classification heads
of transformers 5 do not take. Here the prefixes go in one level lower, through transformers'
attention interface (``AttentionInterface``): every model that routes attention through it
calls ``attention_interface(module, query, key, value, attention_mask, ...)``, so one function
registered there reaches every such architecture. The function prepends the module's learned
keys and values (``(kv_heads, n, head_dim)`` each, per self-attention layer) to ``key`` and
``value``, widens the mask (and T5's position bias) to let every query see them, and hands
over to the implementation the model had (SDPA, or the model's own eager function). Queries
and outputs keep the input's length, so token classification works unchanged.

Models whose attention is their own code (DeBERTa-v2, MPNet) get the same prefixes through hooks
on their attention modules instead (`own_attention`).

Which modules get prefixes, and their shapes, come from one probe forward pass with the
function in place: a module whose keys are as long as its queries is a self-attention (a
decoder's cross-attention sees the encoder's length instead). The probe's keys and values
also initialise the prefixes: activations of real tokens, which Li & Liang found trains
better than random vectors.

``projection=True`` adds the reparameterization: an embedding per virtual token through a
two-layer MLP gives every layer's keys and values. A checkpoint stores the prefixes it
computes (`saved_prefix_state`), not the MLP, and reloads without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from . import own_attention

PREFIX_ATTR = "peftkit_prefix"
ENCODER_ATTR = "peftkit_prefix_encoder"
_NAME = "peftkit_prefix_{}"
_BASES = ("sdpa", "eager")
_recording: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] | None = None


class LayerPrefix(nn.Module):
    """The learned keys and values one attention module sees before the input's own."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        super().__init__()
        self.key = nn.Parameter(key.detach().clone().float())
        self.value = nn.Parameter(value.detach().clone().float())

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key, self.value


class ProjectedPrefix(nn.Module):
    """One layer's slice of a shared `PrefixEncoder`'s output (the encoder is held, not owned)."""

    def __init__(self, encoder: PrefixEncoder, index: int):
        super().__init__()
        self.__dict__["encoder"] = encoder  # not a submodule: the model owns it once
        self.index = index

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder.layer(self.index)


class PrefixEncoder(nn.Module):
    """Li & Liang's reparameterization: ``MLP(embedding)`` gives every layer's keys and values."""

    def __init__(self, shapes: list[tuple[int, int, int]], num_tokens: int, width: int):
        super().__init__()
        self.shapes = shapes  # (kv_heads, key head_dim, value head_dim) per layer
        sizes = [h * (dk + dv) for h, dk, dv in shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.embedding = nn.Embedding(num_tokens, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, self.offsets[-1]))

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.mlp[1](self.mlp[0](self.embedding.weight))
        out = self.mlp[2]
        rows = slice(self.offsets[index], self.offsets[index + 1])
        flat = nn.functional.linear(hidden, out.weight[rows], out.bias[rows])  # only this layer's rows
        h, dk, dv = self.shapes[index]
        key, value = flat.split([h * dk, h * dv], dim=-1)
        n = flat.shape[0]
        return key.view(n, h, dk).transpose(0, 1), value.view(n, h, dv).transpose(0, 1)


def _inner(module: nn.Module, base: str) -> Callable:
    """The attention function the model used before: SDPA, or the eager one of its modeling file."""
    if base == "eager":
        own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if own is not None:
            return own
    return sdpa_attention_forward


def _widen_mask(mask, n: int, query: torch.Tensor, kv_length: int, causal: bool):
    """``mask`` with ``n`` visible key positions in front; an implied causal mask made explicit."""
    if mask is None:
        q = query.shape[2]
        if not causal or q == 1:
            return None  # every key visible, the prefix too
        rows = torch.arange(q, device=query.device)[:, None] + (kv_length - q)
        mask = (rows >= torch.arange(kv_length, device=query.device)[None, :]).view(1, 1, q, kv_length)
    pad = (
        mask.new_ones(*mask.shape[:-1], n)
        if mask.dtype == torch.bool
        else mask.new_zeros(*mask.shape[:-1], n)
    )
    return torch.cat([pad, mask], dim=-1)


def _prefixed_attention(base: str) -> Callable:
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        inner = _inner(module, base)
        prefix = getattr(module, PREFIX_ATTR, None)
        if _recording is not None and query.shape[2] == key.shape[2] and module not in _recording:
            _recording[module] = (key[0].detach(), value[0].detach())
        if prefix is None:
            return inner(module, query, key, value, attention_mask, *args, **kwargs)
        pk, pv = prefix.key_value()
        n, batch = pk.shape[1], key.shape[0]
        # Without a mask, SDPA's function reads a causal module as causal (an eager one as unmasked):
        # with keys in front of the queries that pattern must be spelt out.
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        implied = inner is sdpa_attention_forward and causal
        attention_mask = _widen_mask(attention_mask, n, query, key.shape[2], implied)
        if kwargs.get("position_bias") is not None:  # T5: relative position bias, none for the prefix
            bias = kwargs["position_bias"]
            kwargs["position_bias"] = torch.cat([bias.new_zeros(*bias.shape[:-1], n), bias], dim=-1)
        key = torch.cat([pk.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    return attention


def _register() -> None:
    for base in _BASES:
        name = _NAME.format(base)
        if name not in ALL_ATTENTION_FUNCTIONS:
            ALL_ATTENTION_FUNCTIONS.register(name, _prefixed_attention(base))
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])


def route_attention(model: nn.Module) -> None:
    """Switch ``model`` to the prefixed twin of its attention implementation (flash/flex: SDPA's); a
    model whose attention is its own code gets `own_attention`'s hooks instead."""
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if current.startswith("peftkit_prefix_"):
        return
    _register()
    wanted = _NAME.format(current if current in _BASES else "sdpa")
    if getattr(model, "_can_set_attn_implementation", lambda: False)():
        model.set_attn_implementation(wanted)
    if model.config._attn_implementation == wanted:
        return
    # DeBERTa-v2, MPNet: attention in their own code, reached by hooks (see `own_attention`)
    if not own_attention.install(model, PREFIX_ATTR, lambda: _recording):
        raise ValueError(
            f"{type(model).__name__} computes attention in its own code, not through transformers' "
            "AttentionInterface, and peftkit knows no way into it (PEFT's prefixes cannot go there either). "
            "Use 'prompt', 'lora' or 'adapter' on this architecture."
        )


@contextmanager
def _record():
    global _recording
    _recording = {}
    try:
        yield _recording
    finally:
        _recording = None


def self_attention_states(
    model: nn.Module, batch: dict[str, torch.Tensor], through: nn.Module | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values (``(kv_heads, length, head_dim)``, first example) of every self-attention
    module of ``model`` in one forward pass of ``batch`` through ``through`` (a part of ``model``,
    by default all of it), by module name, in the order they ran. `route_attention` must have put
    the recording function in place."""
    names = {m: n for n, m in model.named_modules()}
    run = through if through is not None else model
    was_training = run.training
    run.eval()
    with _record() as seen, torch.no_grad():
        run(**batch)
    run.train(was_training)
    return {names[m]: kv for m, kv in seen.items()}


def add_prefixes(
    model: nn.Module, states: dict[str, tuple[torch.Tensor, torch.Tensor]], n: int, projection: bool
) -> list[str]:
    """Attach ``n`` learned key/value positions to each module named in ``states`` (initialised from
    its probe keys and values); with ``projection``, make them the output of one shared MLP."""
    if not states:
        raise ValueError(
            f"No self-attention of {type(model).__name__} ran through transformers' AttentionInterface, "
            "so peftkit has nowhere to put prefixes. Use 'prompt', 'lora' or 'adapter' on this architecture."
        )
    if projection:
        shapes = [(k.shape[0], k.shape[-1], v.shape[-1]) for k, v in states.values()]
        width = model.get_input_embeddings().embedding_dim
        device = next(iter(states.values()))[0].device
        encoder = PrefixEncoder(shapes, n, width).to(device)
        model.add_module(ENCODER_ATTR, encoder)
    for index, (name, (key, value)) in enumerate(states.items()):
        module = model.get_submodule(name)
        if projection:
            module.add_module(PREFIX_ATTR, ProjectedPrefix(encoder, index))
        else:
            module.add_module(PREFIX_ATTR, LayerPrefix(_tile(key, n), _tile(value, n)))
    return list(states)


def _tile(states: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` positions of ``states`` (repeated when there are fewer)."""
    reps = -(-n // states.shape[1])
    return states.repeat(1, reps, 1)[:, :n]


def saved_prefix_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each layer's prefix keys and values as the tensors a projection-free prefix holds (``<module>.
    peftkit_prefix.key`` / ``.value``): what a checkpoint stores, with the MLP left behind."""
    state = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            prefix = getattr(module, PREFIX_ATTR, None)
            if isinstance(prefix, (LayerPrefix, ProjectedPrefix)):
                key, value = prefix.key_value()
                state[f"{name}.{PREFIX_ATTR}.key"] = key.detach().float().cpu().contiguous()
                state[f"{name}.{PREFIX_ATTR}.value"] = value.detach().float().cpu().contiguous()
    return state
