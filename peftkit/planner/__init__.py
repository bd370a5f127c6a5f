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
  runtime plus the blocks glibc's allocator keeps after differently padded batches, which grows
  with the log of how many distinct batch shapes the run sees (``train_size``, ``max_steps``,
  ``seq_len`` bound them: `distinct_batches`) and with the step's activations; plus, for a
  quantized base, part of the float weights read while loading it (`KBIT_RETAINED`). Adversarial
  training (``adversarial``, ``adv_steps``) adds to the CPU activations a share of one pass's
  activations per extra pass (`ADVERSARIAL_PASS_SHARE`). peftkit's sampler trains the longest batch
  first, before AdamW has made its states: given ``next_len`` (the longest batch after it, which a
  benchmark cell reads from its data), the CPU peak is the larger of that first step (runtime
  only beside it) and the later steps at ``next_len`` with all of the above.
- **cuda peak** (every row, whatever ``device``): the same run on one CUDA GPU as
  ``torch.cuda.max_memory_allocated`` counts it, with the weights in the checkpoint's dtype; the
  CUDA context (~400 MiB, `CUDA_CONTEXT_BYTES`) is not in it.

The per-token CPU temporaries were measured on fixed-length batches of the packaged MiniLM;
the overhead terms were fitted on the `calibration`, `calibration_llm` and `sweep` benchmark
suites (`benchmarks/calibrate_memory.py --fit`), and the other suites' cells are the held-out
check (`python benchmarks/planner_check.py` writes benchmarks/results/planner_check.md). The CUDA
constants are estimates checked against PEFT's published Llama-3.2-3B runs (same file).

``predicted_peak = weights + gradients + optimizer_states + activations + overhead``.

Strategies a model refuses keep their row with the refusal from `wrap` itself in ``error``.
Refusals that `wrap` raises only when a forward pass fails (prompt/prefix tuning) are found by
wrapping a miniature copy of the architecture with real weights (a few MB) as well.

Modules: `units` (budgets, human sizes), `constants` (choices and the fitted constants),
`skeleton` (the model on the meta device), `structure` (what is read off the wrapped model),
`costs` (the byte arithmetic), `planning` (`plan`, `Plan`, `Row`), `recommendation` (ranking by
the benchmark scores passed in, else `DEFAULT_ORDER`), `cli` (``peftkit plan``).
`peftkit.memory` is this package under its former name.
"""

from ..loading import QUANTIZATIONS
from .cli import add_plan_parser, main, run_plan, setup_plan_parser
from .constants import (
    CPU_GATED_TEMPORARIES_SCALE,
    CPU_OVERHEAD_BYTES,
    CPU_TEMPORARIES_HIDDEN,
    CUDA_OVERHEAD_BYTES,
    DEVICES,
    DORA_SAVED,
    DORA_TEMPORARIES,
    KBIT_BIAS_TEMPORARIES,
    KBIT_RETAINED,
    KBIT_TEMPORARIES,
    LORA_TEMPORARIES,
    OPTIMIZERS,
    OVERHEAD_BYTES,
)
from .costs import activation_bytes, optimizer_bytes, weight_bytes
from .planning import Plan, Row, plan
from .recommendation import DEFAULT_ORDER, QUANTIZATION_ORDER, Recommendation, benchmark_scores, recommend
from .skeleton import build_skeleton, load_config, miniature_config
from .structure import read_structure
from .units import format_bytes, parse_budget

__all__ = [
    "CPU_GATED_TEMPORARIES_SCALE", "CPU_OVERHEAD_BYTES", "CPU_TEMPORARIES_HIDDEN", "CUDA_OVERHEAD_BYTES",
    "DEFAULT_ORDER", "DEVICES", "DORA_SAVED", "DORA_TEMPORARIES", "KBIT_BIAS_TEMPORARIES",
    "KBIT_RETAINED", "KBIT_TEMPORARIES", "LORA_TEMPORARIES", "OPTIMIZERS", "OVERHEAD_BYTES", "Plan",
    "QUANTIZATIONS", "QUANTIZATION_ORDER", "Recommendation", "Row", "activation_bytes", "add_plan_parser",
    "benchmark_scores", "build_skeleton", "format_bytes", "load_config", "main", "miniature_config",
    "optimizer_bytes", "parse_budget", "plan", "read_structure", "recommend", "run_plan",
    "setup_plan_parser", "weight_bytes",
]
