"""Native prefixes for self-attention modules that compute attention in their own code.

DeBERTa-v2 (disentangled relative attention) and MPNet (relative position bias) never call
transformers' ``AttentionInterface``, so `native_prefix`'s attention function cannot reach them.
Here hooks do the same from outside, without copying their attention code:

- a pre-hook puts ``n`` placeholder positions (zeros) in front of the hidden states, and widens
  the masks (the prefix visible to every query) and additive position terms (zero for the
  prefix) that the module takes as arguments;
- hooks on the key and value projections replace those placeholders' keys and values with the
  learned prefix, so scores and weighted sum run over ``prefix + input`` in the module's own code;
- a method that computes position terms from the layers (DeBERTa's
  ``disentangled_attention_bias``) runs on the input's positions only; the prefix gets zero;
- a forward hook drops the placeholders' rows from the output (and from the attention weights,
  which keep the prefix's key columns): the input's length is kept.

Prefix positions have no position: no relative bias, no content-to-position or
position-to-content term, as in Li & Liang's prefixes (and T5's through the interface). The
placeholder queries cost ``n`` extra rows of attention per layer, whose outputs are discarded.

Only the class names in `OWN_ATTENTION` are hooked (their copies elsewhere in transformers, such
as SEW-D's of DeBERTa-v2, share name and layout); the module's forward signature is read, so
arguments may come positionally or by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

_CALL = "_peftkit_prefix_call"  # per-call state on the module while its forward runs
_HOOKED = "_peftkit_prefix_hooked"


@dataclass(frozen=True)
class OwnAttention:
    """Where one attention class keeps what the hooks need (all names of its attributes/arguments)."""

    key: str  # key projection (a Linear over the hidden states)
    value: str  # value projection
    masks: tuple[str, ...] = ("attention_mask",)  # forward arguments: boolean/0-1 or additive masks
    biases: tuple[str, ...] = ()  # forward arguments: additive position terms
    bias_method: str | None = None  # method(query, key, ...) -> position terms of those layers
    states: tuple[str, ...] = ("hidden_states", "query_states")  # forward arguments: token sequences
    heads: str = "num_attention_heads"


OWN_ATTENTION = {
    "DisentangledSelfAttention": OwnAttention(
        "key_proj", "value_proj", bias_method="disentangled_attention_bias"
    ),
    "MPNetSelfAttention": OwnAttention("k", "v", biases=("position_bias",)),
}


def install(model: nn.Module, prefix_attr: str, recording: Callable[[], dict | None]) -> bool:
    """Hook every own-code self-attention of ``model``; whether there was any. ``prefix_attr`` names
    the module's prefix (``key_value()`` gives ``(heads, n, head_dim)`` each); ``recording()`` gives
    the dict the probe fills with each module's ``(key, value)``, or None outside the probe."""
    found = False
    for module in model.modules():
        spec = OWN_ATTENTION.get(type(module).__name__)
        if spec is None or not all(hasattr(module, a) for a in (spec.key, spec.value, spec.heads)):
            continue
        found = True
        if not getattr(module, _HOOKED, False):
            _hook(module, spec, prefix_attr, recording)
    return found


def _hook(module: nn.Module, spec: OwnAttention, prefix_attr: str, recording: Callable) -> None:
    setattr(module, _HOOKED, True)
    signature = inspect.signature(module.forward)

    def before(mod, args, kwargs):
        prefix = getattr(mod, prefix_attr, None)
        if prefix is None and recording() is None:
            return None
        bound = signature.bind(*args, **kwargs)
        given = bound.arguments
        call = {"n": 0, "prefix": prefix}
        if prefix is not None:
            n = prefix.key_value()[0].shape[1]
            length = given[spec.states[0]].shape[1]
            call["n"] = n
            for name in spec.states:
                if given.get(name) is not None:
                    given[name] = _pad(given[name], n, 1, 0.0)
            for name in spec.masks + spec.biases:
                if given.get(name) is not None:
                    given[name] = _widen(given[name], n, length, name in spec.masks)
        call["hidden"] = given[spec.states[0]]
        mod.__dict__[_CALL] = call
        return bound.args, bound.kwargs

    def projection(which: str):
        def hook(proj, inputs, out):
            call = module.__dict__.get(_CALL)
            if call is None or inputs[0] is not call["hidden"]:
                return None  # another use of the projection (DeBERTa's on position embeddings)
            if call["prefix"] is None:
                call[which] = out[0].detach()
                return None
            n = call["n"]
            learned = call["prefix"].key_value()[0 if which == "key" else 1]  # (heads, n, head_dim)
            learned = learned.transpose(0, 1).reshape(n, -1).to(out.dtype)
            return torch.cat([learned.expand(out.shape[0], -1, -1), out[:, n:]], dim=1)

        return hook

    def after(mod, args, kwargs, output):
        call = mod.__dict__.pop(_CALL, None)
        if call is None:
            return None
        seen = recording()
        if call["prefix"] is None:
            if seen is not None and mod not in seen and "key" in call and "value" in call:
                heads = getattr(mod, spec.heads)
                seen[mod] = tuple(_by_head(call[w], heads) for w in ("key", "value"))
            return None
        n = call["n"]
        if not isinstance(output, tuple):
            return output[:, n:]
        # attention weights, where returned: the placeholders' query rows go too (the prefix's keys stay)
        rest = [w[..., n:, :] if isinstance(w, torch.Tensor) and w.dim() == 4 else w for w in output[1:]]
        return (output[0][:, n:], *rest)

    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after, with_kwargs=True)
    getattr(module, spec.key).register_forward_hook(projection("key"))
    getattr(module, spec.value).register_forward_hook(projection("value"))
    if spec.bias_method:
        original = getattr(module, spec.bias_method)

        def input_positions_only(query, key, *args, **kwargs):
            call = module.__dict__.get(_CALL)
            n = call["n"] if call else 0
            if not n:
                return original(query, key, *args, **kwargs)
            bias = original(query[..., n:, :], key[..., n:, :], *args, **kwargs)
            return nn.functional.pad(bias, (n, 0, n, 0))  # no position term for the prefix

        setattr(module, spec.bias_method, input_positions_only)


def _by_head(states: torch.Tensor, heads: int) -> torch.Tensor:
    """``(length, heads * head_dim)`` -> ``(heads, length, head_dim)``."""
    return states.view(states.shape[0], heads, -1).transpose(0, 1)


def _pad(tensor: torch.Tensor, n: int, dim: int, value) -> torch.Tensor:
    shape = list(tensor.shape)
    shape[dim] = n
    return torch.cat([tensor.new_full(shape, value), tensor], dim=dim)


def _widen(tensor: torch.Tensor, n: int, length: int, mask: bool) -> torch.Tensor:
    """A mask or position term over ``length`` queries and keys, widened for ``n`` prefix positions in
    front: visible (a 0/1 or boolean mask's 1, an additive one's 0) with no position term (0). The
    query dimension, where it is there, grows too (the placeholders' rows, dropped afterwards)."""
    visible = 1 if mask and not tensor.is_floating_point() else 0
    tensor = _pad(tensor, n, -1, visible)
    if tensor.dim() >= 3 and tensor.shape[-2] == length:
        tensor = _pad(tensor, n, tensor.dim() - 2, visible)
    return tensor
