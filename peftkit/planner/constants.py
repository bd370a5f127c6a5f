"""The planner's choices and fitted constants: framework overheads and allocator behaviour, fitted by
``python benchmarks/calibrate_memory.py --fit`` on the calibration benchmark suites."""

OPTIMIZERS = ("adamw", "adamw8bit", "sgd")
DEVICES = ("cpu", "cuda")

# Framework overhead per device, in bytes. CPU: what a real training run (a benchmark cell: steps
# over batches of varying length, then evaluation and saving) holds resident beyond weights +
# gradients + optimizer states + activations: the runtime and tokenized data, and the blocks glibc's
# allocator keeps after batches of different shapes (dynamic padding). The latter grows with how
# many differently shaped batches the run sees: a run over 2 distinct batches (64 examples, batch
# 32) reuses its freed blocks exactly; each doubling of them keeps ~10 MiB + 3.4% of the step's
# activations more (sweep suite: ~150 MiB more at 4,096 examples than at 64).
# So CPU overhead = CPU_RUNTIME_BYTES + log2(distinct batches) * (CPU_SHAPE_BYTES + CPU_SHAPE_SHARE
# * the step's activations), where distinct batches = min(steps, ceil(train_size / batch_size),
# seq_len) (padded lengths cannot take more values than seq_len), DEFAULT_DISTINCT_BATCHES when
# neither steps nor train size are given. Fitted (least squares) on the unquantized encoder cells of
# the calibration and sweep suites by `python benchmarks/calibrate_memory.py --fit ...`.
# CPU_OVERHEAD_BYTES: the activation-independent part at DEFAULT_DISTINCT_BATCHES (one number for
# callers that want one).
# CUDA: torch.cuda.max_memory_allocated, which excludes the CUDA context (CUDA_CONTEXT_BYTES, shown
# beside the prediction, not added: nvidia-smi counts it); what remains is cuBLAS workspaces and
# allocator rounding, an estimate until a GPU calibration is committed.
CPU_RUNTIME_BYTES = 3_118_025  # 3.0 MiB
CPU_SHAPE_BYTES = 10_161_953  # 9.7 MiB per doubling
CPU_SHAPE_SHARE = 0.0344  # of the step's activations, per doubling
DEFAULT_DISTINCT_BATCHES = 64
CPU_OVERHEAD_BYTES = CPU_RUNTIME_BYTES + 6 * CPU_SHAPE_BYTES  # 61.2 MiB
CUDA_OVERHEAD_BYTES = 64 * 2**20
CUDA_CONTEXT_BYTES = 400 * 2**20  # CUDA context + kernels loaded by torch: ~300-500 MiB per process
# Adversarial training (peftkit.adversarial: fgm one extra forward/backward per step, pgd/freelb
# adv_steps more): on the CPU each extra pass leaves this share of one pass's activations resident
# (freed blocks of the earlier pass that the next one cannot reuse exactly); on CUDA the caching
# allocator reuses them (no extra). Fitted on the fgm cells of the robust suite.
ADVERSARIAL_PASS_SHARE = 0.2
# A quantized base on the CPU keeps more resident than its packed weights: bitsandbytes' CPU
# kernels and buffers, and part of the float weights read while loading (the allocator keeps what
# was freed). Per quantization: (bytes, share of the float32 bytes of the quantized layers),
# fitted on the quantized cells of the calibration suites (two model sizes).
KBIT_RETAINED = {"8bit": (-26_721_791, 0.958), "4bit": (39_107_789, 1.232)}
# Gated-MLP (Llama-style) blocks: the share of the per-token temporaries below that stays resident
# in a real run, fitted on the Llama-style calibration cells (calibration_llm suite). It and the
# activation share of the overhead move each other: one refit from 0.24 gave 0.27 (the fit file's).
CPU_GATED_TEMPORARIES_SCALE = 0.27
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
