"""The planner: predicted training memory per strategy x quantization, before loading anything.

``plan(model, task, batch_size, seq_len, ...)`` reads only the model's config, builds the model
on the meta device (no weights in memory), applies the real `peftkit.wrap` for every strategy,
and adds up, per row:

- **weights**: every parameter and buffer at its storage size. fp32 on the CPU (what
  `load_model` uses there), the checkpoint's dtype on CUDA. bitsandbytes quantizes only Linear
  layers, and peftkit keeps task heads and output embeddings out of it: 8-bit is one byte per
  value plus a float32 scale per output row; 4-bit (NF4) is half a byte per value plus one
  absmax constant per 64-value block, itself quantized to one byte per block with double
  quantization (plus a float32 constant per 256 blocks).
- **gradients**: one per trainable value, in the parameter's dtype.
- **optimizer states**: AdamW keeps two float32 states per trainable value; ``adamw8bit``
  (bitsandbytes) two one-byte states plus block constants; ``sgd`` none.
- **activations**: what autograd saves in the forward pass for the backward pass, from the
  config (layers, hidden, intermediate, heads, kv heads, vocabulary) and the module tree of
  the wrapped model. Autograd only saves what is needed to reach a trainable parameter: blocks
  below the first trainable one save nothing; a frozen Linear does not keep its input (its
  weight needs no gradient) but its input still needs a gradient above the first trainable
  block, so norms, activations functions, attention scores and dropout masks are kept there.
  A trained Linear (full fine-tuning), a LoRA layer (its dropout mask and low-rank input), an
  adapter, an IA3 scale and a bitsandbytes 8-bit layer (which keeps its input regardless) add
  their own. Attention scores (batch x heads x seq x seq) are kept where attention runs the
  "math" path: on the CPU with attention dropout in training, or with eager attention.
  Gradient checkpointing keeps one hidden state per block plus one block recomputed at a time.
  Activations also hold the temporaries beside the saved tensors: on the CPU, the memory of
  the forward pass's freed temporaries that glibc's allocator keeps resident (measured per
  token and block, `CPU_TEMPORARIES_HIDDEN` and friends); on CUDA, the backward's largest
  gradients. Language-model heads add float32 log-probabilities over the vocabulary.
- **overhead**: what a real training run holds beyond those, fitted per device: on the CPU the
  allocator's retained blocks after hundreds of steps over batches of varying length, the
  tokenized data, the runtime (`CPU_OVERHEAD_BYTES`), plus, for a quantized base, part of the
  float weights read while loading it (`KBIT_RETAINED`).

The per-token CPU temporaries were measured on fixed-length batches of the packaged MiniLM;
the overhead terms were fitted on the `calibration` benchmark suite (real data, 200 steps,
`benchmarks/calibrate_memory.py --fit`), and the other suites' cells (other tasks, batch
sizes, lengths, another model) are the held-out check: `benchmarks/results/*/results.md`,
section "Planner". The CUDA constants are estimates until a GPU suite is committed.

``predicted_peak = weights + gradients + optimizer_states + activations + overhead``.

Strategies a model refuses keep their row with the refusal from `wrap` itself in ``error``.
Refusals that `wrap` raises only when a forward pass fails (prompt/prefix tuning) are found by
wrapping a miniature copy of the architecture with real weights (a few MB) as well.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .introspect import attention_modules, auto_class, check_task, full_precision_modules, transformer_blocks
from .loading import QUANTIZATIONS

OPTIMIZERS = ("adamw", "adamw8bit", "sgd")
DEVICES = ("cpu", "cuda")

# Framework overhead per device, in bytes. CPU: what a real training run (hundreds of steps over
# batches of varying length, then evaluation and saving: a benchmark cell) holds resident beyond
# weights + gradients + optimizer states + activations: the allocator's retained blocks, the
# tokenized data, the runtime. Fitted as the median residual of the unquantized cells of the
# `calibration` suite (benchmarks/suites/calibration.yaml, run with `peftkit bench`), by
# `python benchmarks/calibrate_memory.py --fit benchmarks/results/calibration`.
# CUDA: the benchmark suite records torch.cuda.max_memory_allocated, which excludes the CUDA
# context; what remains is cuBLAS workspaces and allocator rounding, an estimate until a GPU
# calibration is committed.
CPU_OVERHEAD_BYTES = 128_448_580  # 122.5 MiB
CUDA_OVERHEAD_BYTES = 64 * 2**20
# A quantized base on the CPU keeps more resident than its packed weights: bitsandbytes' CPU
# kernels and buffers, and part of the float weights read while loading (the allocator keeps what
# was freed). Per quantization: (bytes, share of the float32 bytes of the quantized layers),
# fitted on the quantized cells of the calibration suites (two model sizes).
KBIT_RETAINED = {"8bit": (16_400_941, 0.886), "4bit": (80_337_682, 1.099)}
# Gated-MLP (Llama-style) blocks: the share of the per-token temporaries below that stays resident
# in a real run, fitted on the Llama-style calibration cells (calibration_llm suite).
CPU_GATED_TEMPORARIES_SCALE = 0.45
OVERHEAD_BYTES = {"cpu": CPU_OVERHEAD_BYTES, "cuda": CUDA_OVERHEAD_BYTES}

# Allocator behaviour measured on the CPU (benchmarks/calibrate_memory.py), per token and block:
# hidden-sized forward temporaries that stay resident, and what each LoRA layer (B's output, its
# scaled copy and the sum, partly reused: ~2.5 outputs), each bitsandbytes layer (input copies:
# ~0.5 inputs) and each 4-bit layer with a bias (peftkit adds it in float32: ~0.5 outputs) add.
CPU_TEMPORARIES_HIDDEN = 8
LORA_TEMPORARIES = 2.5
KBIT_TEMPORARIES = 0.5
KBIT_BIAS_TEMPORARIES = 0.5
# DoRA (PEFT's DoraLinearLayer): per adapted layer and token, the base output and the LoRA output
# are saved for the backward (both are multiplied by the trainable magnitude), and their scaled
# copies and sum are forward temporaries.
DORA_SAVED = 2
DORA_TEMPORARIES = 1

# Order used to recommend a strategy when no benchmark results are shipped: LoRA matches full
# fine-tuning at a fraction of the memory (Hu et al. 2021), adapters and IA3 come next, BitFit
# and the soft-prompt methods trail on most tasks. Unquantized rows are preferred over 8-bit,
# 8-bit over 4-bit (quantization costs a little quality).
DEFAULT_ORDER = ("lora", "full", "adapter", "ia3", "bitfit", "prompt", "prefix")
QUANTIZATION_ORDER = QUANTIZATIONS

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


# --------------------------------------------------------------------------- budgets and units

def parse_budget(budget: str | int | float | None) -> int | None:
    """A memory budget in bytes: ``"16GiB"``, ``"24GB"``, ``"8000MB"``, ``"1.5 GiB"`` or a number of bytes.

    GB/MB are powers of ten, GiB/MiB powers of two; a bare number is bytes. None stays None.
    """
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise ValueError(f"Cannot read the memory budget {budget!r}: give bytes or a string like \"16GiB\", \"24GB\", \"8000MB\".")
    if isinstance(budget, (int, float)):
        if budget <= 0 or not math.isfinite(budget):
            raise ValueError(f"The memory budget must be positive, got {budget!r}. Examples: \"16GiB\", \"24GB\", \"8000MB\".")
        return int(budget)
    match = _BUDGET.match(str(budget))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(
            f"Cannot read the memory budget {budget!r}. Give a number with a unit, for example "
            "\"16GiB\", \"24GB\", \"8000MB\" (GB/MB: powers of 10, GiB/MiB: powers of 2), or an int of bytes."
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"The memory budget must be positive, got {budget!r}. Examples: \"16GiB\", \"24GB\", \"8000MB\".")
    return int(value)


def format_bytes(n: int | float | None) -> str:
    """Human units with powers of two: ``1.5 GiB``, ``300.0 MiB``."""
    if n is None:
        return "-"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- building the model

def _config_error(model: str, err: Exception) -> OSError:
    return OSError(
        f"peftkit plan could not read the config of {model!r}: {err}\n\nThe planner needs only the model's "
        "config.json. Offline (HF_HUB_OFFLINE=1) or without access to the hub, pass a local path instead: a "
        "directory holding config.json (one written by save_pretrained, or a downloaded snapshot), e.g. "
        "peftkit plan ./my-model --task classification."
    )


def load_config(model: Any, task: str, num_labels: int | None = None, **config_kwargs: Any):
    """The model's config from a hub id, a local directory, or a config / model object."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        config = copy.deepcopy(model)
    elif isinstance(model, nn.Module) and hasattr(model, "config"):
        config = copy.deepcopy(model.config)
    else:
        name = str(model)
        try:
            config = AutoConfig.from_pretrained(name, **config_kwargs)
        except (OSError, ValueError) as err:
            raise _config_error(name, err) from err
    if num_labels is not None and task in ("classification", "token-classification"):
        config.num_labels = num_labels
    return config


@contextlib.contextmanager
def _quiet():
    """Silence transformers' and PEFT's warnings while building skeletons."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def build_skeleton(config, task: str, quantization: str | None = None) -> nn.Module:
    """The model for ``task`` on the meta device, quantized like `load_model` would (no weights).

    Quantization replaces Linear layers by bitsandbytes layers the way transformers does at load
    time, keeping the task head and output embeddings in full precision like `load_model`, and
    prepares the model for k-bit training (frozen base, input gradients) with the same helper.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(), _quiet():
        model = auto_class(task).from_config(config)
    with _quiet():
        model.tie_weights()  # not tied inside init_empty_weights; a loaded model shares these tensors
    if quantization:
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear

        from .loading import prepare_for_kbit_training, quantization_config

        keep = full_precision_modules(model) + list(getattr(model, "_keep_in_fp32_modules", None) or [])
        with _quiet():
            model = replace_with_bnb_linear(model, modules_to_not_convert=keep,
                                            quantization_config=quantization_config(quantization, sorted(set(keep))))
        setattr(model, "is_loaded_in_4bit" if quantization == "4bit" else "is_loaded_in_8bit", True)
        _pack_meta_weights(model)
        prepare_for_kbit_training(model)
    return model.train()


def _pack_meta_weights(model: nn.Module) -> None:
    """Give meta bitsandbytes weights the storage they have once loaded, so counts match.

    A loaded 4-bit weight is a ``[(out*in + 1) // 2, 1]`` uint8 tensor (two values per byte),
    an 8-bit one an ``[out, in]`` int8 tensor; `count_parameters` reads them that way.
    """
    for module in model.modules():
        kind = _bnb_kind(module)
        if kind == "4bit":
            n = module.in_features * module.out_features
            module.weight.data = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device="meta")
        elif kind == "8bit":
            module.weight.data = torch.empty((module.out_features, module.in_features), dtype=torch.int8, device="meta")


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
               "num_decoder_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "embedding_size")
_FFN_KEYS = ("intermediate_size", "ffn_dim", "d_ff", "hidden_dim", "n_inner", "encoder_ffn_dim", "decoder_ffn_dim")
_HEAD_DIM = 16


def miniature_config(config):
    """The same architecture at toy size: 1 layer, head dim 16, kept head counts, small FFN.

    Used only to run `wrap`'s forward-time checks on real (random) weights of a few MB.
    """
    cfg = copy.deepcopy(config)
    values = cfg.to_dict()
    heads = next((values[k] for k in ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads")
                  if isinstance(values.get(k), int)), 4)
    hidden = heads * _HEAD_DIM
    for key in _LAYER_KEYS:
        if isinstance(values.get(key), int):
            setattr(cfg, key, 1)
    for key in _HIDDEN_KEYS:
        if isinstance(values.get(key), int):
            setattr(cfg, key, hidden)
    for key in _FFN_KEYS:
        if isinstance(values.get(key), int):
            setattr(cfg, key, 2 * hidden)
    for key in ("head_dim", "d_kv"):
        if isinstance(values.get(key), int):
            setattr(cfg, key, _HEAD_DIM)
    if isinstance(values.get("layer_types"), list):
        cfg.layer_types = values["layer_types"][:1]
    return cfg


def _probe_twin(config, task: str):
    """A factory for real miniature models, or None when the architecture cannot be shrunk."""
    try:
        twin = miniature_config(config)
        with _quiet():
            model = auto_class(task).from_config(twin).eval()
        token = next((t for t in (twin.eos_token_id, twin.bos_token_id, 1) if isinstance(t, int)), 1)
        ids = torch.full((1, 2), token, dtype=torch.long)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if task == "seq2seq-lm":
            kwargs["labels"] = ids
        with torch.no_grad(), _quiet():
            model(**kwargs)
    except Exception:  # noqa: BLE001 - any failure means: no miniature, skip forward-time checks
        return None

    def make():
        torch.manual_seed(0)
        with _quiet():
            return auto_class(task).from_config(twin).eval()

    return make


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

    from .strategies import BottleneckAdapter

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
    s = _Structure(blocks=len(blocks), lm_head=task in ("causal-lm", "seq2seq-lm"))
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

    from .strategies import BottleneckAdapter

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


# --------------------------------------------------------------------------- the arithmetic

def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def weight_bytes(model: nn.Module, dtype: torch.dtype = torch.float32, trainable_dtype: torch.dtype = torch.float32) -> int:
    """Bytes the model's parameters and buffers occupy once loaded.

    Frozen float tensors take ``dtype``, trainable ones ``trainable_dtype`` (PEFT keeps adapter
    weights in float32; full fine-tuning trains the model's own dtype); bitsandbytes layers
    take their packed size plus quantization constants.
    """
    total = 0
    quantized_ids = set()
    code_counted = False
    for module in model.modules():
        kind = _bnb_kind(module)
        weight = getattr(module, "weight", None)
        if kind == "4bit" and weight is not None:
            n = module.in_features * module.out_features
            block = getattr(weight, "blocksize", 64) or 64
            nested = bool(getattr(weight, "compress_statistics", True))
            total += (n + 1) // 2
            blocks = math.ceil(n / block)
            if nested:
                total += blocks + 4 * math.ceil(blocks / 256) + 4 + 16 * 4  # uint8 absmax, fp32 2nd level, offset, nf4 code
                if not code_counted:
                    total += 256 * 4  # the shared 8-bit dynamic code of the second level
                    code_counted = True
            else:
                total += 4 * blocks + 16 * 4
            quantized_ids.add(id(weight))
        elif kind == "8bit" and weight is not None:
            total += module.in_features * module.out_features + 4 * module.out_features  # int8 + fp32 row scales
            quantized_ids.add(id(weight))
    size = _dtype_bytes(dtype)
    seen = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in quantized_ids or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if not tensor.is_floating_point():
            per = tensor.element_size()
        elif isinstance(tensor, nn.Parameter) and tensor.requires_grad:
            per = _dtype_bytes(trainable_dtype)
        else:
            per = size
        total += tensor.numel() * per
    return total


def optimizer_bytes(trainable_tensors: Sequence[tuple[int, int]], optimizer: str) -> int:
    """State bytes for trainable tensors given as (values, bytes per value)."""
    if optimizer == "sgd":
        return 0
    if optimizer == "adamw":  # exp_avg and exp_avg_sq in the parameter's dtype, plus a step counter
        return sum(2 * n * size + 4 for n, size in trainable_tensors)
    # bitsandbytes 8-bit AdamW: two uint8 states + a float32 absmax per 256 values; tensors under
    # 4096 values keep 32-bit states
    return sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n for n, _ in trainable_tensors)


def activation_bytes(s: _Structure, batch: int, seq: int, device: str, act_size: int,
                     gradient_checkpointing: bool = False) -> tuple[int, int]:
    """(saved activations, temporaries) in bytes for one training step.

    Saved: what autograd keeps from the forward for the backward. Temporaries: memory that is
    live or stays resident beside them (on the CPU, the allocator's retained forward temporaries).
    """
    seq_q = seq + s.virtual_tokens
    seq_k = seq_q + s.prefix_tokens
    tokens = batch * seq_q
    h, i, kv = s.hidden, s.intermediate, s.kv_dim or s.hidden
    math_attention = s.eager or (device == "cpu" and s.attn_dropout)
    noise = act_size if device == "cpu" else 1  # dropout masks: float noise on the CPU, bool on CUDA
    hdrop = 1 if s.hidden_dropout else 0
    scores = batch * s.heads * seq_q * seq_k
    # a block that gradients pass through: q, k, v for the score products, the norms' inputs,
    # dropout masks, the activation function's input (gated MLPs: gate, activation, up)
    attn = tokens * (h + 2 * kv + h) * act_size + tokens * h * hdrop * noise
    if math_attention:  # softmax output; with dropout also its mask and the dropped copy
        attn += scores * act_size + (scores * (noise + act_size) if s.attn_dropout else 0)
    else:
        attn += tokens * h * act_size + batch * s.heads * seq_q * 4  # output + logsumexp
    ffn = tokens * i * (3 if s.gated else 1) * act_size + tokens * h * (act_size + hdrop * noise)
    through = attn + ffn
    per_block = through + tokens * (s.trained_linear_inputs + s.strategy_extra) * act_size
    n = s.blocks
    first = min(max(s.first_block, 0.0), float(n))
    whole = n - math.ceil(first)
    partial = 1 if first != int(first) else 0
    if gradient_checkpointing:
        active = whole + partial
        saved = active * tokens * h * act_size + (per_block if active else 0)
    else:
        saved = whole * per_block + partial * (ffn + tokens * (s.trained_linear_inputs + s.strategy_extra) * act_size / 2)
    if s.input_grads:
        saved += tokens * h * (act_size + hdrop * noise)  # embedding norm input and dropout
    if device == "cpu":
        # Forward temporaries (linear outputs, residual sums, norm outputs, LoRA branches) are
        # freed at once, but glibc's allocator keeps the memory resident: measured, about
        # CPU_TEMPORARIES_HIDDEN hidden-sized + one (gated: two) intermediate-sized values per
        # token and block, plus the strategy's own (LoRA outputs, 4-bit input copies).
        per_token = CPU_TEMPORARIES_HIDDEN * h + (2 if s.gated else 1) * i + s.transient_extra
        temporaries = tokens * n * per_token * act_size * (CPU_GATED_TEMPORARIES_SCALE if s.gated else 1.0)
    else:  # the caching allocator reuses blocks: the backward's largest gradients, twice
        temporaries = 2 * max(scores * act_size if math_attention else 0, tokens * i * act_size, tokens * h * act_size)
    if s.lm_head and s.vocab:  # language models keep float32 log-probabilities over the vocabulary
        logits = batch * seq_q * s.vocab * 4
        saved += logits
        temporaries += 2 * logits  # the logits and their gradient
    else:
        saved += batch * s.num_labels * 4 + batch * h * act_size * 2
    return int(saved), int(temporaries)


# --------------------------------------------------------------------------- plan rows

@dataclass
class Row:
    """One strategy x quantization: parameter counts and predicted bytes."""

    strategy: str
    quantization: str | None
    trainable: int = 0
    total: int = 0
    weights: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    activations: int = 0
    overhead: int = 0
    predicted_peak: int = 0
    fits: bool | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.strategy + (f"-{self.quantization}" if self.quantization else "")

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Recommendation:
    """The row to pick (None when nothing fits) and why."""

    row: Row | None
    reason: str
    suggestions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.row.strategy if self.row else None,
                "quantization": self.row.quantization if self.row else None,
                "predicted_peak": self.row.predicted_peak if self.row else None,
                "reason": self.reason, "suggestions": self.suggestions}

    def __str__(self) -> str:
        lines = [self.reason] + [f"  - {s}" for s in self.suggestions]
        return "\n".join(lines)


@dataclass
class _Profile:
    """What a row's numbers are computed from; kept so a plan can be re-priced cheaply."""

    row: Row
    structure: _Structure | None
    weights: int = 0
    trainable_tensors: list[tuple[int, int]] = field(default_factory=list)  # (values, bytes per value)


@dataclass
class Plan:
    """Rows per strategy x quantization, with the settings they were computed for."""

    model: str
    task: str
    batch_size: int
    seq_len: int
    device: str
    optimizer: str
    gradient_checkpointing: bool
    budget: int | None
    rows: list[Row]
    results_used: str | None = None
    scores: dict[tuple[str, str | None], float] | None = None
    _profiles: list[_Profile] = field(default_factory=list, repr=False)
    _dtype: torch.dtype = field(default=torch.float32, repr=False)
    _recommendation: Recommendation | None = field(default=None, repr=False)

    @property
    def recommend(self) -> Recommendation:
        if self._recommendation is None:
            self._recommendation = recommend(self)
        return self._recommendation

    def row(self, strategy: str, quantization: str | None = None) -> Row:
        for r in self.rows:
            if r.strategy == strategy and r.quantization == quantization:
                return r
        raise KeyError(f"No row for {strategy!r} with quantization {quantization!r} in this plan.")

    def reprice(self, batch_size: int | None = None, seq_len: int | None = None,
                gradient_checkpointing: bool | None = None) -> Plan:
        """The same plan at another batch size, sequence length or checkpointing setting."""
        other = Plan(self.model, self.task, batch_size or self.batch_size, seq_len or self.seq_len, self.device,
                     self.optimizer, self.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing,
                     self.budget, [], self.results_used, self.scores, _dtype=self._dtype)
        for p in self._profiles:
            row = copy.deepcopy(p.row)
            other._profiles.append(_Profile(row, p.structure, p.weights, p.trainable_tensors))
            other.rows.append(row)
            _price(other, other._profiles[-1])
        return other

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "task": self.task, "batch_size": self.batch_size, "seq_len": self.seq_len,
            "device": self.device, "optimizer": self.optimizer, "gradient_checkpointing": self.gradient_checkpointing,
            "budget": self.budget, "rows": [r.to_dict() for r in self.rows],
            "recommendation": self.recommend.to_dict(), "results_used": self.results_used,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        """A fixed-width table in human units, then the recommendation."""
        head = ("strategy", "quant", "trainable", "trainable %", "weights", "grads", "optimizer", "activations",
                "overhead", "peak", "fits")
        lines = []
        for r in self.rows:
            if r.error:
                lines.append((r.strategy, r.quantization or "-", "refused: " + _short(r.error)))
                continue
            pct = 100 * r.trainable / r.total if r.total else 0.0
            fits = "-" if r.fits is None else ("yes" if r.fits else "no")
            lines.append((r.strategy, r.quantization or "-", f"{r.trainable:,}", f"{pct:.3f}", format_bytes(r.weights),
                          format_bytes(r.gradients), format_bytes(r.optimizer_states), format_bytes(r.activations),
                          format_bytes(r.overhead), format_bytes(r.predicted_peak), fits))
        widths = [max(len(head[c]), *(len(x[c]) for x in lines if len(x) == len(head))) for c in range(len(head))]
        right = {2, 3, 4, 5, 6, 7, 8, 9}

        def fmt(cells):
            if len(cells) != len(head):
                return "  ".join((cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2]))
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        budget = f", budget {format_bytes(self.budget)}" if self.budget else ""
        title = (f"peftkit plan: {self.model} ({self.task}), batch {self.batch_size} x seq {self.seq_len}, "
                 f"{self.optimizer}, {self.device}{', gradient checkpointing' if self.gradient_checkpointing else ''}{budget}")
        out = [title, "", fmt(head), "  ".join("-" * w for w in widths)] + [fmt(x) for x in lines]
        out += ["", "Recommendation: " + str(self.recommend)]
        return "\n".join(line.rstrip() for line in out)

    def __str__(self) -> str:
        return self.to_table()


def _short(error: str) -> str:
    first = error.split(". ")[0].split("\n")[0]
    return first if len(first) <= 150 else first[:147] + "..."


def _price(plan: Plan, profile: _Profile) -> None:
    row = profile.row
    if row.error:
        return
    # hidden states run in the model's dtype; k-bit preparation keeps norms and embeddings in float32
    act_size = 4 if row.quantization else _dtype_bytes(plan._dtype)
    row.weights = profile.weights
    row.gradients = sum(n * size for n, size in profile.trainable_tensors)
    row.optimizer_states = optimizer_bytes(profile.trainable_tensors, plan.optimizer)
    saved, temporaries = activation_bytes(profile.structure, plan.batch_size, plan.seq_len, plan.device, act_size,
                                          plan.gradient_checkpointing)
    row.activations = saved + temporaries
    row.overhead = OVERHEAD_BYTES[plan.device]
    if plan.device == "cpu" and row.quantization:
        constant, share = KBIT_RETAINED[row.quantization]
        row.overhead += int(constant + share * 4 * profile.structure.quantized_values)
    row.predicted_peak = row.weights + row.gradients + row.optimizer_states + row.activations + row.overhead
    row.fits = None if plan.budget is None else row.predicted_peak <= plan.budget


# --------------------------------------------------------------------------- plan()

def _check_choice(name: str, value: Any, valid: Iterable[Any]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"Unknown {name} {value!r}. Valid values: {', '.join(map(repr, valid))}.")


def _compute_dtype(config, device: str) -> torch.dtype:
    """fp32 on the CPU (what load_model uses); the checkpoint's dtype on CUDA."""
    if device == "cpu":
        return torch.float32
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def plan(
    model: Any,
    task: str = "classification",
    batch_size: int = 32,
    seq_len: int = 128,
    strategies: Sequence[str] | None = None,
    quantization: Sequence[str | None] | str | None = QUANTIZATIONS,
    gradient_checkpointing: bool = False,
    optimizer: str = "adamw",
    budget: str | int | None = None,
    device: str = "cpu",
    num_labels: int | None = None,
    scores: Mapping[tuple[str, str | None], float] | None = None,
    results_dir: str | os.PathLike | None = None,
    **strategy_options: dict[str, Any],
) -> Plan:
    """Predict the peak training memory of every strategy x quantization for ``model``.

    ``model``: a hub id, a local directory with config.json, or a transformers config. Nothing
    but the config is read. ``seq_len`` is the padded length of the longest batch (the
    ``max_length`` you tokenize with, when batches reach it). ``quantization``: any of None,
    "8bit", "4bit" (one value or a sequence). ``budget``: bytes or a string like "16GiB";
    rows get ``fits`` and ``plan.recommend`` picks among those that fit. ``device``: "cpu" or
    "cuda" (sets dtypes, attention kernels and the overhead constant). ``strategy_options``:
    per-strategy options for `wrap`, e.g. ``lora={"r": 16}``. ``scores``: measured quality to
    rank strategies by, ``{(strategy, quantization): score}`` with higher better (what
    `benchmark_scores` returns); ``results_dir``: a folder of benchmark results to read them from
    instead. With neither, the recommendation follows `DEFAULT_ORDER` (no file is read).
    """
    from .parameters import count_parameters
    from .strategies import STRATEGIES, wrap

    check_task(task)
    device = str(device).split(":")[0]  # "cuda:0" plans like "cuda"
    _check_choice("device", device, DEVICES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    quants = [quantization] if quantization is None or isinstance(quantization, str) else list(quantization)
    quants = [None if q in (None, "none", "None", "") else q for q in quants]
    for q in quants:
        _check_choice("quantization", q, QUANTIZATIONS)
    names = list(strategies) if strategies else list(STRATEGIES)
    for name in names:
        _check_choice("strategy", name, STRATEGIES)
    unknown = set(strategy_options) - set(names)
    if unknown:
        raise ValueError(f"Options given for strategies not planned: {sorted(unknown)}. Planned: {names}.")
    budget_bytes = parse_budget(budget)
    used = None
    if results_dir is not None:
        if scores is not None:
            raise ValueError("Pass scores= or results_dir= (a folder to read the scores from), not both.")
        scores, files = benchmark_scores(task, results_dir)
        used = ", ".join(files) if scores else None
    config = load_config(model, task, num_labels)
    label = str(model) if not hasattr(model, "to_dict") else getattr(config, "_name_or_path", "") or config.model_type
    result = Plan(label, task, batch_size, seq_len, device, optimizer, gradient_checkpointing, budget_bytes, [],
                  results_used=used, scores=dict(scores) if scores else None, _dtype=_compute_dtype(config, device))
    twin = None
    twin_checked = False
    for q in quants:
        if q:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                for name in names:
                    row = Row(name, q, error='quantization needs bitsandbytes: pip install "bitsandbytes>=0.50"')
                    result.rows.append(row)
                    result._profiles.append(_Profile(row, None))
                continue
        for name in names:
            row = Row(name, q)
            profile = _Profile(row, None)
            options = dict(strategy_options.get(name, {}))
            try:
                skeleton = build_skeleton(config, task, q)
                with _quiet():
                    wrapped = wrap(skeleton, name, task=task, **options)
            except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
                row.error = str(err)
            else:
                if not twin_checked:
                    twin, twin_checked = _probe_twin(config, task), True
                if twin is not None:
                    try:
                        with _quiet():
                            wrap(twin(), name, task=task, **options)
                    except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
                        row.error = str(err)
                elif name in ("prefix", "prompt"):
                    row.notes.append("forward-time checks skipped: no miniature of this architecture could be built")
            if row.error is None:
                counts = count_parameters(wrapped)
                row.trainable, row.total = counts.trainable, counts.total
                frozen_dtype = torch.float32 if q else result._dtype
                trained_dtype = frozen_dtype if name == "full" else torch.float32
                profile.weights = weight_bytes(wrapped, frozen_dtype, trained_dtype)
                size = _dtype_bytes(trained_dtype)
                profile.trainable_tensors = [(p.numel(), size) for p in wrapped.parameters() if p.requires_grad]
                profile.structure = read_structure(wrapped, config, task, q)
            result.rows.append(row)
            result._profiles.append(profile)
            _price(result, profile)
    return result


# --------------------------------------------------------------------------- recommendation

def _result_rows(data: Any) -> list[dict]:
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if isinstance(data, dict):
        for key in ("rows", "cells", "results"):
            if isinstance(data.get(key), list):
                return [r for r in data[key] if isinstance(r, dict)]
    return []


def benchmark_scores(task: str, results_dir: str | os.PathLike) -> tuple[dict[tuple[str, str | None], float], list[str]]:
    """Per (strategy, quantization): the mean over benchmark groups of its metric / the group's best.

    Reads every ``results.json`` under ``results_dir`` (the benchmark suite's format: a list of
    rows, or ``{"rows": [...]}``) with fields ``task``, ``strategy`` (``base_strategy`` when the
    suite names variants such as "lora-dora"), ``quantization`` and ``metric_value`` (higher is
    better: accuracy, F1, exact match). A group is one suite, task and training-set size; a
    strategy's variants count by their best. Rows with an error, baselines, untrained rows, the
    planner's calibration suites (``calibration*``: scored on their training data) and rows of
    other task types (``task_type``) are left out, unless no row matches ``task``.
    """
    root = Path(results_dir)
    files = sorted(root.glob("**/results.json")) if root.is_dir() else []
    rows = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for r in _result_rows(data):
            value, name = r.get("metric_value"), r.get("base_strategy") or r.get("strategy")
            if r.get("error") or not isinstance(value, (int, float)) or not math.isfinite(value) or not name:
                continue
            if str(name).startswith("baseline") or name == "none" or str(r.get("suite", "")).startswith("calibration"):
                continue  # baselines, untrained rows and the planner's calibration cells rank nothing
            quant = r.get("quantization") or None
            rows.append({**r, "_name": name, "_quant": None if quant in ("none", "None") else quant, "_file": str(path)})
    typed = [r for r in rows if (r.get("task_type") or r.get("task")) == task]
    rows = typed or rows
    groups: dict[tuple, dict[tuple[str, str | None], float]] = {}
    for r in rows:
        group = groups.setdefault((r["_file"], r.get("suite"), r.get("task"), r.get("train_size")), {})
        key = (r["_name"], r["_quant"])
        group[key] = max(group.get(key, -math.inf), float(r["metric_value"]))
    scores: dict[tuple[str, str | None], list[float]] = {}
    for group in groups.values():
        best = max(group.values())
        for key, value in group.items():
            scores.setdefault(key, []).append(value / best if best > 0 else 0.0)
    used = sorted({r["_file"] for r in rows})
    return {k: sum(v) / len(v) for k, v in scores.items()}, used


def _rank_key(row: Row, scores: dict) -> tuple:
    order = DEFAULT_ORDER.index(row.strategy) if row.strategy in DEFAULT_ORDER else len(DEFAULT_ORDER)
    q_order = QUANTIZATION_ORDER.index(row.quantization)
    measured = scores.get((row.strategy, row.quantization))
    if measured is None and (row.strategy, None) in scores:
        measured = scores[(row.strategy, None)] - 0.001 * (q_order + 1)  # unmeasured quantized: just below
    return (0 if measured is not None else 1, -(measured or 0.0), order, q_order, row.predicted_peak)


def recommend(plan: Plan) -> Recommendation:
    """The best row under the plan's budget: best measured first, else `DEFAULT_ORDER`."""
    usable = [r for r in plan.rows if r.ok]
    if not usable:
        return Recommendation(None, "Every strategy was refused for this model and task; see the errors in the table.")
    scores = plan.scores or {}
    basis = ("best measured strategy in the shipped benchmark results" if scores
             else f"first in peftkit's default order ({', '.join(DEFAULT_ORDER)}; unquantized first)")
    fitting = [r for r in usable if r.fits is not False]
    if fitting:
        best = min(fitting, key=lambda r: _rank_key(r, scores))
        measured = scores.get((best.strategy, best.quantization))
        why = f"{best.name}: predicted peak {format_bytes(best.predicted_peak)}"
        why += f" within the budget of {format_bytes(plan.budget)}" if plan.budget else " (no budget given)"
        why += f"; chosen as the {basis} that fits"
        if measured is not None:
            why += f" (score {measured:.3f} of the best metric per task)"
        return Recommendation(best, why + ".")
    smallest = min(usable, key=lambda r: r.predicted_peak)
    reason = (f"Nothing fits in {format_bytes(plan.budget)}: the smallest is {smallest.name} at "
              f"{format_bytes(smallest.predicted_peak)}.")
    return Recommendation(None, reason, _suggestions(plan, smallest))


def _suggestions(plan: Plan, smallest: Row) -> list[str]:
    """What to change so that something fits: a smaller batch, checkpointing, 4-bit."""
    out = []
    batch = plan.batch_size
    while batch > 1:
        batch //= 2
        cheaper = plan.reprice(batch_size=batch)
        fit = [r for r in cheaper.rows if r.ok and r.fits]
        if fit:
            best = min(fit, key=lambda r: r.predicted_peak)
            out.append(f"a smaller batch: batch_size={batch} ({best.name} predicted {format_bytes(best.predicted_peak)}; "
                       f"keep the effective batch with gradient_accumulation_steps={plan.batch_size // batch})")
            break
    else:
        out.append("a smaller batch alone is not enough (even batch_size=1 does not fit)")
    if not plan.gradient_checkpointing:
        ckpt = plan.reprice(gradient_checkpointing=True)
        best = min((r for r in ckpt.rows if r.ok), key=lambda r: r.predicted_peak)
        verdict = "fits" if best.fits else "still does not fit"
        out.append(f"gradient checkpointing (--gradient-checkpointing): {best.name} predicted "
                   f"{format_bytes(best.predicted_peak)}, {verdict}")
    if "4bit" not in {r.quantization for r in plan.rows}:
        out.append("4-bit quantization (--quantization 4bit, QLoRA): stores the frozen Linear weights at about "
                   "half a byte per value")
    else:
        q4 = [r for r in plan.rows if r.ok and r.quantization == "4bit"]
        if q4:
            best = min(q4, key=lambda r: r.predicted_peak)
            out.append(f"4-bit is already in the plan ({best.name}: {format_bytes(best.predicted_peak)}); "
                       "combine it with a smaller batch or checkpointing, a shorter seq_len, or more memory")
    return out


# --------------------------------------------------------------------------- command line

def setup_plan_parser(p: argparse.ArgumentParser):
    """Add the `peftkit plan` arguments to ``p``; returns the handler (`run_plan`)."""
    from .cli import setup_plan_arguments

    setup_plan_arguments(p)
    return run_plan


def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``plan`` on an argparse subparsers object (``handler`` default set to `run_plan`)."""
    help_text = "predict training memory per strategy x quantization and recommend one"
    p = subparsers.add_parser("plan", help=help_text, description=help_text)
    p.set_defaults(handler=setup_plan_parser(p))
    return p


def run_plan(args: argparse.Namespace) -> int:
    """`peftkit plan`: print the table (or JSON) and the recommendation; 1 with the error on bad input."""
    import sys

    from .cli import plan_scores_dir

    try:
        result = plan(args.model, task=args.task, batch_size=args.batch_size, seq_len=args.seq_len,
                      strategies=args.strategies, quantization=[None if q == "none" else q for q in args.quantization],
                      gradient_checkpointing=args.gradient_checkpointing, optimizer=args.optimizer,
                      budget=args.budget, device=args.device, num_labels=args.num_labels,
                      results_dir=plan_scores_dir(getattr(args, "scores", None)))
    except (OSError, ValueError) as err:
        print(f"peftkit plan: error: {err}", file=sys.stderr)
        return 1
    print(result.to_json() if args.json else result.to_table())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peftkit.memory MODEL ...`` (the same as ``peftkit plan``)."""
    parser = argparse.ArgumentParser(prog="peftkit plan", description="Predict training memory per strategy.")
    setup_plan_parser(parser)
    return run_plan(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
