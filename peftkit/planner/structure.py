"""What the planner reads off the wrapped model: blocks, tuners, bitsandbytes layers, trainable depth."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

from ..introspect import attention_modules, transformer_blocks
from ..tasks import task_class
from .constants import DORA_SAVED, DORA_TEMPORARIES, KBIT_BIAS_TEMPORARIES, KBIT_TEMPORARIES, LORA_TEMPORARIES

# --------------------------------------------------------------------------- reading the wrapped model

@dataclass
class _Structure:
    """What the activation estimate needs to know about a wrapped model (element counts per token)."""

    blocks: int = 0
    hidden: int = 0
    intermediate: int = 0
    heads: int = 1
    kv_dim: int = 0
    gated: bool = False
    vocab: int = 0
    num_labels: int = 2
    attn_dropout: bool = False
    hidden_dropout: bool = False
    eager: bool = False
    # per block, per token: what grad-flow, trained weights and strategy layers keep
    first_block: float = 0.0  # index of the first block with grads; fractional: only its FFN part
    input_grads: bool = False  # embeddings output requires grad (k-bit prep, prompt tuning, trained embeddings)
    trained_linear_inputs: float = 0.0  # elements per token per block kept for trained/8-bit linears
    strategy_extra: float = 0.0  # elements per token per block (LoRA, adapters, IA3)
    transient_extra: float = 0.0  # forward temporaries per token per block (LoRA outputs, 4-bit input copies)
    virtual_tokens: int = 0
    prefix_tokens: int = 0
    lm_head: bool = False  # the loss is over the vocabulary (causal / seq2seq LMs)
    quantized_values: int = 0  # weights held by bitsandbytes layers (values, not bytes)


def _int(config, *names, default=0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def _prob(config, *names) -> bool:
    return any(isinstance(getattr(config, n, None), (int, float)) and getattr(config, n) > 0 for n in names)


def _linear_io(module: nn.Module) -> tuple[int, int] | None:
    w = getattr(module, "weight", None)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and w is not None:
        return w.shape[0], w.shape[1]
    return None


def _is_tuner(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ..strategies import BottleneckAdapter

    return isinstance(module, (BaseTunerLayer, BottleneckAdapter))


def _bnb_kind(module: nn.Module) -> str | None:
    """"4bit" / "8bit" for a bitsandbytes layer (subclasses included), else None."""
    if _is_tuner(module):
        return None
    bnb = sys.modules.get("bitsandbytes")  # not imported: no layer can be one of its layers
    if bnb is None:
        return None
    if isinstance(module, bnb.nn.Linear4bit):
        return "4bit"
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "8bit"
    return None


def read_structure(model: nn.Module, config, task: str, quantization: str | None) -> _Structure:
    """Read the shapes and what trains where off a wrapped meta model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = transformer_blocks(base)
    s = _Structure(blocks=len(blocks), lm_head=task_class(task).generative)  # the loss is over the vocabulary
    s.hidden = _int(config, "hidden_size", "n_embd", "d_model", "dim")
    s.heads = _int(config, "num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads", default=1)
    s.vocab = _int(config, "vocab_size")
    s.num_labels = _int(config, "num_labels", default=2)
    s.attn_dropout = _prob(config, "attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", "dropout_rate",
                           "attention_dropout_prob", "attn_dropout")
    s.hidden_dropout = _prob(config, "hidden_dropout_prob", "hidden_dropout", "resid_pdrop", "dropout", "dropout_rate")
    s.eager = getattr(config, "_attn_implementation", None) == "eager"

    from peft.tuners.ia3 import IA3Layer
    from peft.tuners.lora import LoraLayer

    from ..strategies import BottleneckAdapter

    first = None
    trained_inputs = extra = transient = 0.0
    for index, (name, block) in enumerate(blocks):
        attn = attention_modules(block, name)
        attn_names = [a for a, _ in attn]
        ffn_out = []
        for sub_name, sub in block.named_modules(prefix=name):
            io = _linear_io(sub)
            if io is None or _is_tuner(sub) or any(p in sub_name for p in (".lora_", ".adapter", ".ia3_")):
                continue
            in_attn = any(sub_name.startswith(a + ".") for a in attn_names)
            if not in_attn:
                ffn_out.append(io[1])
        if index == 0:
            widths = [io[1] for _, m in block.named_modules() if (io := _linear_io(m)) and not _is_tuner(m)]
            s.intermediate = max([w for w in ffn_out if w > s.hidden] or widths or [s.hidden])
            s.gated = sum(1 for w in ffn_out if w == s.intermediate) >= 2
            kv = _int(config, "num_key_value_heads", "num_kv_heads", "multi_query_group_num", default=s.heads)
            if getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
                kv = 1
            s.kv_dim = s.hidden * kv // max(1, s.heads)
        # what trains in this block, and what each kind of layer keeps
        trains_attn = trains_ffn = False
        kept_attn, kept_ffn_inputs = 0, set()
        tuners = [n for n, m in block.named_modules(prefix=name) if _is_tuner(m)]
        for sub_name, sub in block.named_modules(prefix=name):
            in_attn = any(sub_name == a or sub_name.startswith(a + ".") for a in attn_names)
            if any(p.requires_grad for p in sub.parameters(recurse=False)):
                trains_attn |= in_attn
                trains_ffn |= not in_attn
            io = _linear_io(sub)
            inner = any(sub_name.startswith(t + ".") for t in tuners)
            if isinstance(sub, LoraLayer):
                r = max(sub.r.values()) if sub.r else 0
                dropout = any(not isinstance(d, nn.Identity) for d in sub.lora_dropout.values())
                extra += io[0] * (2 if dropout else 1) + 2 * r  # dropout mask + dropped input, A's output
                transient += LORA_TEMPORARIES * io[1]
                if any(getattr(sub, "use_dora", {}).values()):
                    # DoRA scales the base output and the LoRA output by the magnitude over the
                    # weight norm: both outputs are kept for the backward, plus their products
                    extra += DORA_SAVED * io[1]
                    transient += DORA_TEMPORARIES * io[1]
            elif isinstance(sub, IA3Layer):
                extra += io[0] if sub.is_feedforward else io[1]  # the scaled tensor
            elif isinstance(sub, BottleneckAdapter):
                extra += sub.down.in_features + sub.down.out_features  # its input and bottleneck
            if io is None or _is_tuner(sub) or (inner and not sub_name.endswith(".base_layer")):
                continue
            kind = _bnb_kind(sub)
            if kind:
                transient += KBIT_TEMPORARIES * io[0]
            if kind == "4bit" and getattr(sub, "bias", None) is not None:
                transient += KBIT_BIAS_TEMPORARIES * io[1]  # load_model adds 4-bit biases in float32, out of place
            weight = getattr(sub, "weight", None)
            # a Linear keeps its input when its weight trains; bitsandbytes 8-bit always does
            if (weight is not None and weight.requires_grad) or kind == "8bit":
                if in_attn:
                    kept_attn += 1
                else:
                    kept_ffn_inputs.add(io[0])
        # q/k/v share one input, the output projection takes the context: at most two per attention
        block_inputs = {"attn": min(kept_attn, 2) * s.hidden, "ffn": sum(kept_ffn_inputs)}
        trained_inputs += sum(block_inputs.values())
        if first is None and (trains_attn or trains_ffn):
            first = index + (0.5 if trains_ffn and not trains_attn else 0.0)
    s.quantized_values = sum(io[0] * io[1] for _, m in base.named_modules() if _bnb_kind(m) and (io := _linear_io(m)))
    s.trained_linear_inputs = trained_inputs / max(1, s.blocks)
    s.strategy_extra = extra / max(1, s.blocks)
    s.transient_extra = transient / max(1, s.blocks)

    peft_config = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
    peft_type = str(getattr(getattr(peft_config, "peft_type", None), "value", "")).upper()
    if peft_type == "PROMPT_TUNING":
        s.virtual_tokens = peft_config.num_virtual_tokens
    elif peft_type == "PREFIX_TUNING":
        s.prefix_tokens = peft_config.num_virtual_tokens
        first = 0.0  # prefixes enter the attention of every block
    block_names = [n for n, _ in blocks]
    outside = [n for n, p in base.named_parameters()
               if p.requires_grad and not any(n.startswith(b + ".") for b in block_names)]
    embeds = base.get_input_embeddings()
    embed_trains = embeds is not None and any(p.requires_grad for p in embeds.parameters())
    s.input_grads = (
        bool(quantization)  # prepare_for_kbit_training: enable_input_require_grads
        or peft_type == "PROMPT_TUNING"
        or embed_trains
        or any("embed" in n for n in outside)
    )
    s.first_block = 0.0 if s.input_grads else (first if first is not None else float(s.blocks))
    return s
