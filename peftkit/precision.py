"""Mixed precision: which one a run gets, and whether this machine can give it.

Accelerate does the work: ``Accelerator(mixed_precision="bf16")`` wraps the prepared model's
forward in ``torch.autocast(device_type, dtype=torch.bfloat16)`` on the CPU as on a GPU (no
Intel extension needed), and leaves the parameters alone. So weights, gradients and the AdamW
state stay float32; only what autocast lists (matmuls, linear layers) runs in bfloat16, and the
outputs are cast back to float32. Evaluation through the prepared model runs under the same
autocast.

On the CPU bfloat16 only pays where the CPU multiplies it natively (AVX512-BF16, or AMX on Intel
Sapphire Rapids and later; bfloat16 instructions on Arm): elsewhere (AVX2 only) oneDNN emulates it,
slower than float32, so ``bf16`` is refused there and ``auto`` keeps float32. Where the CPU has it,
bf16 is the default (`default_mixed_precision`): measured to keep accuracy and to train faster.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch


def cpu_bf16_supported() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 / AMX on x86, BF16 on Arm)."""
    cpu = getattr(torch, "cpu", None)
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    try:  # Arm: oneDNN reports bfloat16 where the CPU has the BF16 extension
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_name() -> str:
    """The CPU's model name and vector capability, for messages (e.g. "AMD EPYC (AVX2)")."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def bf16_pays(on_cpu: bool) -> bool:
    """Whether bfloat16 autocast is measured to pay here: a CPU with native bfloat16, or a CUDA GPU with it."""
    if on_cpu or not torch.cuda.is_available():
        return cpu_bf16_supported()
    return torch.cuda.is_bf16_supported()


def default_mixed_precision(on_cpu: bool) -> str:
    """What a run trains in when nothing asks for a precision: bf16 on a CPU that multiplies it natively,
    else "no". Measured (benchmarks/suites/bf16.yaml, 2 cores of an AMX Xeon): LoRA on SST-2, banking77
    and CoNLL-2003 trained 1.22x faster under bf16 autocast, scores within noise of float32 over 5 seeds.
    GPUs keep float32 unless asked ("auto" / "bf16"): not measured there."""
    return "bf16" if on_cpu and cpu_bf16_supported() else "no"


def resolve_mixed_precision(asked: str | None, *, on_cpu: bool, default: str | None = None) -> str:
    """The precision a run trains in: ``asked``; else (None) what ``accelerate launch`` / ``accelerate config``
    asks for (bf16 or fp16; the "no" it passes when not told is not an ask), else ``default`` (None:
    `default_mixed_precision`). ``"auto"`` becomes "bf16" where `bf16_pays`, else "no". Refuses
    (RuntimeError, with the fix) what this machine cannot give."""
    precision = asked
    if precision is None:
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        precision = launched if launched != "no" else (default or default_mixed_precision(on_cpu))
    if precision == "auto":
        return "bf16" if bf16_pays(on_cpu) else "no"
    if precision == "no":
        return precision
    if on_cpu and precision == "bf16":
        if not cpu_bf16_supported():
            raise RuntimeError(
                f"mixed_precision='bf16' on the CPU needs native bfloat16 (AVX512-BF16 or AMX); this CPU, "
                f"{cpu_name()}, would emulate it, slower than float32. Use mixed_precision='no' (--mixed-precision "
                "no) here, or 'auto' to use bf16 only where the machine has it."
            )
        return precision
    if on_cpu:
        raise RuntimeError(
            f"mixed_precision={precision!r} needs a GPU, and this run is on the CPU. Use mixed_precision='no' "
            "(--mixed-precision no) to train in full precision here, or 'bf16' on a CPU with native bfloat16."
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(
            f"mixed_precision='bf16' needs a GPU with bfloat16 support (compute capability 8.0+); "
            f"{torch.cuda.get_device_name()} has none. Use mixed_precision='fp16' or 'no'."
        )
    return precision


def autocast(precision: str | None, device: torch.device | str):
    """The autocast context for running a model outside Accelerate (prediction) in ``precision``:
    bfloat16 / float16 autocast on ``device``'s type, or nothing for "no" / None."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision or "no")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
