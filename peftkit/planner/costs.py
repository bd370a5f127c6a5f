"""The cost model: bytes of weights, gradients, optimizer states and activations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .constants import (
    ADVERSARIAL_PASS_SHARE,
    CPU_GATED_TEMPORARIES_SCALE,
    CPU_RUNTIME_BYTES,
    CPU_SHAPE_BYTES,
    CPU_SHAPE_SHARE,
    CPU_TEMPORARIES_HIDDEN,
    DEFAULT_DISTINCT_BATCHES,
)
from .structure import _bnb_kind, _Structure

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


def distinct_batches(batch_size: int, seq_len: int, train_size: int | None = None, max_steps: int | None = None) -> int:
    """How many differently shaped batches a run sees (dynamic padding pads each to its longest).

    At most one per step, one per batch of the training set (peftkit's sampler keeps the same
    batches each epoch while the set fits one sorting chunk: 64 examples at batch 32 give two
    shapes however many steps run), and one per padded length (``seq_len`` values).
    ``DEFAULT_DISTINCT_BATCHES`` when neither the steps nor the training-set size are known.
    """
    bounds = [b for b in (max_steps, math.ceil(train_size / batch_size) if train_size else None) if b]
    count = min(bounds) if bounds else DEFAULT_DISTINCT_BATCHES
    return max(1, min(count, seq_len))


def cpu_overhead_bytes(batches: int, activations: int) -> int:
    """The CPU's overhead beyond the weights, gradients, optimizer states and activations: the runtime,
    plus what glibc's allocator keeps after ``batches`` differently shaped steps (constants.py)."""
    return int(CPU_RUNTIME_BYTES + math.log2(max(1, batches)) * (CPU_SHAPE_BYTES + CPU_SHAPE_SHARE * activations))


def adversarial_passes(adversarial: str | None, adv_steps: int = 2) -> int:
    """Forward/backward passes per training step: 1, 2 with fgm, ``adv_steps`` + 1 with pgd/freelb."""
    if not adversarial:
        return 1
    return 2 if adversarial == "fgm" else 1 + int(adv_steps)


def adversarial_bytes(passes: int, activations: int, device: str) -> int:
    """What the extra passes of adversarial training keep beyond one pass's activations (CPU only:
    the caching allocator on CUDA reuses the earlier pass's blocks)."""
    if device != "cpu" or passes <= 1:
        return 0
    return int((passes - 1) * ADVERSARIAL_PASS_SHARE * activations)
