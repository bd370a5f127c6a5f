"""A LoRA adapter that vLLM (and TGI) load with ``--enable-lora``, or the list of what prevents it.

The rules are vLLM's own (``vllm/lora/peft_helper.py``, ``vllm/lora/lora_model.py``,
``vllm/config/lora.py``, the LoRA column of docs/models/supported_models.md):
- ``adapter_config.json`` must give ``r``, ``lora_alpha`` and ``target_modules``;
- no ``modules_to_save`` ("vLLM only supports modules_to_save being None"), no DoRA;
- ``r`` at most the server's ``--max-lora-rank``, whose choices are `MAX_LORA_RANKS` (default 16);
- adapter bias is not loaded (``bias`` must be "none", no ``lora_bias``);
- every LoRA tensor must sit on a module vLLM's implementation of the architecture replaces
  (all its linear layers, under their Hugging Face names, plus embeddings where the model lists them).
Which peftkit tasks' adapters vLLM serves is the task's ``vllm_lora`` (causal-lm's).
peftkit also refuses what vLLM would load silently wrong: per-layer ``rank_pattern``/``alpha_pattern``
(vLLM scales every layer by lora_alpha / r), base-modifying initialisations (PiSSA, OLoRA, CorDA, LoftQ:
the adapter only fits the modified base) and ``trainable_token_indices``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .report import ExportReport

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
DEFAULT_MAX_LORA_RANK = 16

_LLAMA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_EMBEDDINGS = ("embed_tokens", "lm_head")
# config.model_type -> module names vLLM's LoRA layers replace (HF names; vLLM packs q/k/v and gate/up itself).
VLLM_LORA_MODULES: dict[str, tuple[str, ...]] = {
    **{t: _LLAMA + _EMBEDDINGS for t in ("llama", "mistral", "qwen2", "qwen3", "granite", "olmo", "olmo2", "smollm3", "cohere")},
    **{t: _LLAMA for t in ("gemma", "gemma2", "gemma3_text")},  # Gemma applies no LoRA to its embeddings
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") + _EMBEDDINGS,
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2") + _EMBEDDINGS,
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2") + _EMBEDDINGS,
}
# Architectures vLLM runs but without LoRA (no LoRA tick in its supported-models table).
VLLM_NO_LORA = ("gpt2", "gpt_neox", "bloom", "falcon", "gptj", "mpt", "stablelm", "dbrx", "mamba")
BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "loftq", "eva")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def max_lora_rank_for(r: int) -> int | None:
    """The smallest ``--max-lora-rank`` choice that admits rank ``r`` (None above 512)."""
    return next((choice for choice in MAX_LORA_RANKS if choice >= r), None)


def _base_model_type(base: str | None, report: ExportReport) -> str | None:
    if not base:
        report.notes.append("the checkpoint names no base model: the architecture checks were skipped (pass --base-model)")
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base).model_type
    except (OSError, ValueError) as err:
        report.notes.append(f"could not read the base model's config ({base}): architecture checks skipped ({err})")
        return None


def _lora_modules(weights: Path) -> tuple[set[str], list[str]]:
    """(module names carrying LoRA tensors, tensor names that are not LoRA tensors) of an adapter file."""
    from safetensors import safe_open

    modules, other = set(), []
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            parts = key.split(".")
            if len(parts) >= 2 and parts[-2] in ("lora_A", "lora_B") and parts[-1] == "weight":
                modules.add(parts[-3])
            elif parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
                modules.add(parts[-2])
            else:
                other.append(key)
    return modules, other


def check_adapter(folder: Path, meta: dict[str, Any], base_model: str | None, report: ExportReport) -> dict[str, Any]:
    """Run vLLM's adapter rules on a PEFT adapter directory; failures become ``report.problems``."""
    config_file = folder / "adapter_config.json"
    if meta.get("format") != "peft" or not config_file.is_file():
        report.check("a PEFT LoRA adapter", False, f"this is a {meta.get('strategy')!r} checkpoint without adapter_config.json; "
                     "vLLM serves LoRA adapters only. Export the merged model (--format merged) and serve it with `vllm serve DIR`")
        return {}
    config = json.loads(config_file.read_text())
    peft_type = config.get("peft_type")
    if not report.check("a PEFT LoRA adapter", peft_type == "LORA", f"peft_type {peft_type}"
                        + ("" if peft_type == "LORA" else "; vLLM loads LoRA only: export --format merged and serve the merged model")):
        return config
    from ..tasks import TASKS

    task = TASKS.get(str(meta.get("task")))
    servable = task is not None and task.vllm_lora
    refusal = (f" (peftkit task {meta.get('task')}): vLLM serves the LoRA adapters of decoder-only language models; "
               "export --format merged (or onnx where the task has a logits-only graph)")
    report.check("a causal-LM adapter", servable, f"task_type {config.get('task_type')}" + ("" if servable else refusal))
    missing = [k for k in ("r", "lora_alpha", "target_modules") if config.get(k) in (None, [], "")]
    report.check("r, lora_alpha and target_modules present", not missing, f"missing {missing}" if missing else
                 f"r={config['r']}, lora_alpha={config['lora_alpha']}, target_modules={_short(config['target_modules'])}")
    report.check("no modules_to_save", not config.get("modules_to_save"),
                 f"modules_to_save={config.get('modules_to_save')}: vLLM only loads LoRA matrices; train with "
                 "--option modules_to_save=[] (or merge and serve the merged model)" if config.get("modules_to_save") else "")
    report.check("no DoRA", not config.get("use_dora"), "use_dora=true: vLLM does not support DoRA; retrain with use_dora=false "
                 "or export --format merged" if config.get("use_dora") else "")
    r = config.get("r") or 0
    needed = max_lora_rank_for(r) if isinstance(r, int) else None
    report.check("rank within vLLM's max_lora_rank choices", needed is not None,
                 f"r={r} needs --max-lora-rank {needed} (choices {list(MAX_LORA_RANKS)}, default {DEFAULT_MAX_LORA_RANK})"
                 if needed else f"r={r} exceeds vLLM's largest --max-lora-rank {MAX_LORA_RANKS[-1]}; retrain with r <= 512")
    bias_ok = config.get("bias", "none") == "none" and not config.get("lora_bias")
    report.check("bias none", bias_ok, "" if bias_ok else f"bias={config.get('bias')!r}, lora_bias={config.get('lora_bias')}: "
                 "vLLM loads no adapter biases; retrain with --option bias=none")
    patterns = {k: config[k] for k in ("rank_pattern", "alpha_pattern") if config.get(k)}
    report.check("one rank and alpha for every layer", not patterns, f"{patterns}: vLLM scales every layer by lora_alpha / r"
                 if patterns else "")
    init = str(config.get("init_lora_weights", True)).lower()
    base_modifying = next((m for m in BASE_MODIFYING_INITS if init.startswith(m)), None)
    report.check("adapter fits the unmodified base", base_modifying is None, f"init_lora_weights={config.get('init_lora_weights')!r} "
                 "changes the base weights: the adapter only fits the modified base; export --format merged" if base_modifying else "")
    report.check("no trainable token embeddings", not config.get("trainable_token_indices"),
                 "trainable_token_indices: vLLM loads no token-embedding deltas" if config.get("trainable_token_indices") else "")
    _check_modules(folder, config, base_model or meta.get("base_model") or config.get("base_model_name_or_path"), report)
    if meta.get("quantization"):
        report.notes.append(f"trained on a {meta['quantization']} base (QLoRA): serve it on the full-precision base or a "
                            "quantized one; expect small differences from the training-time outputs")
    return config


def _short(value: Any) -> str:
    text = str(sorted(value)) if isinstance(value, (list, set, tuple)) else str(value)
    return text if len(text) < 120 else text[:117] + "..."


def _check_modules(folder: Path, config: dict[str, Any], base: str | None, report: ExportReport) -> None:
    weights = folder / "adapter_model.safetensors"
    if not report.check("adapter_model.safetensors present", weights.is_file(), "" if weights.is_file() else f"missing in {folder}"):
        return
    modules, other = _lora_modules(weights)
    saved = [str(m) for m in config.get("modules_to_save") or []]  # reported by their own checks, with DoRA's vectors
    other = [k for k in other if "lora_magnitude_vector" not in k and not any(f".{m}." in f".{k}" for m in saved)]
    report.check("only LoRA tensors in the adapter file", not other,
                 f"{len(other)} other tensor(s), e.g. {other[:3]}: vLLM rejects full weights in an adapter" if other else
                 f"{len(modules)} module name(s): {sorted(modules)}")
    model_type = _base_model_type(base, report)
    if model_type is None:
        return
    if model_type in VLLM_NO_LORA:
        report.check("vLLM supports LoRA for this architecture", False, f"{model_type}: vLLM runs it without LoRA support; "
                     "export --format merged and serve the merged model with `vllm serve DIR`")
        return
    supported = VLLM_LORA_MODULES.get(model_type)
    if supported is None:
        report.notes.append(f"peftkit has no vLLM module list for {model_type!r}: check its LoRA column in vLLM's supported-models "
                            "table; vLLM applies LoRA to the linear layers of the models it lists")
        return
    unsupported = sorted(modules - set(supported))
    report.check("target modules vLLM supports for the architecture", not unsupported,
                 f"{unsupported} are not LoRA modules in vLLM's {model_type} (supported: {list(supported)})" if unsupported else
                 f"{model_type}: {sorted(modules)}")


def write_vllm(tmp: Path, checkpoint: Path, meta: dict[str, Any], base_model: str | None, report: ExportReport, config: dict) -> None:
    """Copy the adapter (and tokenizer files) and re-run the rules on the written copy."""
    for name in ADAPTER_FILES + TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, tmp / name)
    written = ExportReport(report.format, report.checkpoint, report.output)
    check_adapter(tmp, meta, base_model, written)
    report.check("the written adapter passes the same checks", written.ok, "; ".join(written.problems))
    base = base_model or config.get("base_model_name_or_path") or meta.get("base_model") or "BASE_MODEL"
    rank = max_lora_rank_for(config["r"])
    out = report.output
    report.metrics["max_lora_rank"] = rank
    report.serve += [
        f"vllm serve {base} --enable-lora --max-lora-rank {rank} --lora-modules adapter={out}",
        f"python: LLM(model={base!r}, enable_lora=True, max_lora_rank={rank}).generate(prompts, sampling_params, "
        f"lora_request=LoRARequest('adapter', 1, {out!r}))",
        f"TGI: text-generation-launcher --model-id {base} --lora-adapters adapter={out}",
    ]
