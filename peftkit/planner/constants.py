"""The planner's choices and fitted constants: framework overheads and allocator behaviour, fitted by
``python benchmarks/calibrate_memory.py --fit`` on the calibration benchmark suites."""

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
