"""Strategy hooks the training loop calls (param_groups, on_train_start, on_step), AdaLoRA and LoRA+
through them, the checkpoint format as a strategy attribute, and every strategy list derived from
the registry. Tiny random BERT models; a few seconds each."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny
from helpers_training import load_sentiment, minilm_path, save_tiny_model, write_sentiment_csv

ROOT = Path(__file__).resolve().parents[1]
needs_tokenizer = pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM tokenizer")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("hooks")
    return {"model": save_tiny_model(root / "tiny-bert", dropout=0.0), "data": write_sentiment_csv(root / "data")}


def _train(assets, out, strategy, options, **config):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import peftkit
    from peftkit.training import TrainConfig, train

    torch.manual_seed(0)
    model = peftkit.wrap(AutoModelForSequenceClassification.from_pretrained(assets["model"]), strategy, **options)
    settings = dict(output_dir=str(out), epochs=2, batch_size=8, lr=1e-2, log_every=1, progress=False,
                    load_best_at_end=False)
    result = train(model, AutoTokenizer.from_pretrained(assets["model"]), load_sentiment(assets["data"]),
                   TrainConfig(**{**settings, **config}))
    return model, result


def _kept_ranks(model) -> dict[str, int]:
    """Layer -> the number of unmasked (non-zero) entries of its AdaLoRA E vector."""
    return {n: int((p != 0).sum()) for n, p in model.named_parameters() if ".lora_E." in n}


# ----------------------------------------------------------------------------- AdaLoRA


@needs_tokenizer
@pytest.mark.parametrize("accumulation", [1, 2])
def test_adalora_allocates_once_per_optimizer_step_and_its_ranks_shrink(assets, tmp_path, monkeypatch, accumulation):
    from peft.tuners.adalora import AdaLoraModel

    calls = []
    original = AdaLoraModel.update_and_allocate

    def spy(self, global_step):
        grads = [p.grad for n, p in self.model.named_parameters() if ".lora_A." in n]
        calls.append((global_step, all(g is not None for g in grads)))  # before zero_grad: gradients there
        return original(self, global_step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", spy)
    options = {"init_r": 6, "target_r": 2}
    model, result = _train(assets, tmp_path, "adalora", options, gradient_accumulation_steps=accumulation)
    total = 2 * 64 // (8 * accumulation)  # 2 epochs of 64 examples, batch 8
    assert [step for step, _ in calls] == list(range(1, total + 1))
    assert all(has_grads for _, has_grads in calls)
    config = model.peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == (total, int(0.1 * total), int(0.2 * total))
    pattern = config.rank_pattern
    kept = {name: sum(mask) for name, mask in pattern.items()}
    assert len(kept) == 2 * 4 or len(kept) == 2 * 2  # every adapted layer has a pattern
    assert min(kept.values()) < 6 and sum(kept.values()) <= 2 * len(kept)  # pruned to the budget
    assert sorted(_kept_ranks(model).values()) == sorted(kept.values())  # the masked E entries are zero
    assert result.final_checkpoint is not None


@needs_tokenizer
def test_adalora_checkpoint_holds_rank_pattern_and_reloads_pruned(assets, tmp_path):
    import peftkit

    model, result = _train(assets, tmp_path, "adalora", {"init_r": 6, "target_r": 2})
    saved = json.loads((result.final_checkpoint / "adapter_config.json").read_text())
    assert saved["rank_pattern"] and saved["total_step"] == 16
    reloaded = peftkit.load(result.final_checkpoint)
    shapes = {n: p.shape[0] for n, p in reloaded.named_parameters() if ".lora_E." in n}
    assert sorted(shapes.values()) == sorted(sum(m) for m in saved["rank_pattern"].values())
    assert min(shapes.values()) < 6  # the pruned ranks, not init_r
    batch = {"input_ids": torch.randint(5, 1000, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


def test_adalora_options_refused_before_building():
    import peftkit

    with pytest.raises(ValueError, match="leave no steps"):
        peftkit.wrap(build_tiny("bert", "classification"), "adalora", tinit_ratio=0.5, tfinal_ratio=0.5)
    with pytest.raises(ValueError, match="above init_r"):
        peftkit.wrap(build_tiny("bert", "classification"), "adalora", init_r=4, target_r=8)


# ----------------------------------------------------------------------------- LoRA+


@needs_tokenizer
def test_lora_plus_trains_b_matrices_at_ratio_times_lr_through_the_schedule(assets, tmp_path, monkeypatch):
    from peftkit.training import _Run

    seen = {}
    original = _Run._step

    def spy(self, batch):
        for g in self.optimizer.param_groups:
            seen.setdefault(g["name"], []).append((g["lr"], len(g["params"])))
        return original(self, batch)

    monkeypatch.setattr(_Run, "_step", spy)
    model, _ = _train(assets, tmp_path, "lora", {"plus_ratio": 16}, lr=1e-3, warmup_ratio=0.25)
    b_count = sum(1 for n, p in model.named_parameters() if ".lora_B." in n and p.requires_grad)
    assert seen["decay_lora_plus"][0][1] == b_count
    for (lr, _), (b_lr, _) in zip(seen["decay"], seen["decay_lora_plus"], strict=True):
        assert b_lr == pytest.approx(16 * lr)  # warm-up and decay scale both groups alike
    assert len({lr for lr, _ in seen["decay"]}) > 2  # the schedule did move the rates


def test_lora_plus_groups_keep_head_lr_and_plain_lora_is_unchanged():
    import peftkit
    from peftkit.strategies import strategy_of
    from peftkit.training import parameter_groups

    model = peftkit.wrap(build_tiny("bert", "classification"), "lora", plus_ratio=4)
    groups = strategy_of(model).param_groups(model, parameter_groups(model, 0.01, lr=1e-3, head_lr=5e-3), 1e-3)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay_lora_plus"]["lr"] == pytest.approx(4e-3) and by_name["decay"]["lr"] == 1e-3
    assert by_name["head_decay"]["lr"] == 5e-3
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".lora_B." in names[id(p)] for p in by_name["decay_lora_plus"]["params"])
    assert not any(".lora_B." in names[id(p)] for p in by_name["decay"]["params"])
    plain = peftkit.wrap(build_tiny("bert", "classification"), "lora")
    base = parameter_groups(plain, 0.01, lr=1e-3)
    assert strategy_of(plain).param_groups(plain, base, 1e-3) is base
    with pytest.raises(ValueError, match="plus_ratio"):
        peftkit.wrap(build_tiny("bert", "classification"), "lora", plus_ratio=0.5)


# ----------------------------------------------------------------------------- one list, no name tests


def test_wrap_takes_the_format_from_the_strategy_not_its_name():
    import peftkit.strategies as strategies

    source = inspect.getsource(strategies.wrap)
    assert "spec.name ==" not in source and "uses_peft" not in source
    formats = {name: spec.checkpoint_format for name, spec in strategies.REGISTRY.items()}
    assert formats["full"] == "full" and formats["adapter"] == formats["bitfit"] == "peftkit"
    assert formats["lora"] == formats["adalora"] == formats["ia3"] == formats["prompt"] == "peft"


def test_strategy_lists_come_from_the_registry():
    from peftkit import memory, static, strategies, tuning

    assert strategies.STRATEGIES == tuple(strategies.REGISTRY) == tuple(c.name for c in strategies.CLASSES)
    assert "adalora" in strategies.STRATEGIES
    assert list(static.strategy_catalog()) == list(strategies.STRATEGIES)
    assert static.planner_order() == strategies.planner_order() == memory.DEFAULT_ORDER
    assert sorted(memory.DEFAULT_ORDER) == sorted(strategies.STRATEGIES)
    assert set(tuning.STRATEGY_SPACES) <= set(strategies.REGISTRY)
    for name, space in tuning.STRATEGY_SPACES.items():
        assert set(space) <= set(strategies.REGISTRY[name].options)


def test_training_loop_names_no_strategy():
    import ast

    from peftkit.strategies import STRATEGIES

    files = sorted((ROOT / "peftkit" / "training").glob("*.py"))
    assert files
    trees = [ast.parse(file.read_text()) for file in files]
    constants = {n.value for t in trees for n in ast.walk(t) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert constants & set(STRATEGIES) == set()


def test_training_loop_imports_no_strategy_or_checkpoint_code():
    """The loop is handed the lr, hooks and save function (`RunParts`); only `training.run` resolves them."""
    import ast

    tree = ast.parse((ROOT / "peftkit" / "training" / "loop.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported, "the loop imports something"
    assert not {m for m in imported if m and m.lstrip(".").split(".")[-1] in ("strategies", "checkpoint", "tasks")}


def test_main_suite_has_the_new_cells():
    import yaml

    cells = {c["name"]: c for c in yaml.safe_load((ROOT / "benchmarks/suites/main.yaml").read_text())["strategies"]}
    assert cells["adalora"]["strategy"] == "adalora"
    assert cells["lora-plus"]["options"]["plus_ratio"] == 16


def test_adalora_records_the_ranks_of_the_weights_put_back(tmp_path):
    """After load_best_at_end puts an earlier step's weights back, the saved ranks are that step's."""
    import peftkit
    from peftkit.strategies import strategy_of

    model = peftkit.wrap(build_tiny("bert", "classification"), "adalora", init_r=4, target_r=2)
    strategy = strategy_of(model)
    e = [(n, p) for n, p in model.base_model.model.named_parameters() if ".lora_E." in n]
    with torch.no_grad():
        for i, (_, p) in enumerate(e):
            p.copy_(torch.tensor([[0.5], [0.0], [0.3], [0.0]]) if i % 2 else torch.tensor([[0.0], [0.2], [0.0], [0.0]]))
    # A later step's pattern, which the weights put back do not follow (it keeps entries that are zero now
    # and drops entries that are not).
    model.peft_config["default"].rank_pattern = {n: [True, False, False, True] for n, _ in e}
    strategy.on_weights_restored(model)
    assert {sum(m) for m in model.peft_config["default"].rank_pattern.values()} == {1, 2}
    batch = {"input_ids": torch.randint(5, 90, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    reloaded = peftkit.load(peftkit.save(model, tmp_path / "ckpt"), base_model=build_tiny("bert", "classification"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**batch).logits, expected)


@needs_tokenizer
def test_loop_calls_on_weights_restored_when_it_puts_the_best_weights_back(assets, tmp_path, monkeypatch):
    import peftkit
    from peftkit.strategies.adalora import AdaLoRA

    calls = []
    original = AdaLoRA.on_weights_restored
    monkeypatch.setattr(AdaLoRA, "on_weights_restored", lambda self, model: calls.append(1) or original(self, model))
    model, result = _train(assets, tmp_path, "adalora", {"init_r": 6, "target_r": 2}, load_best_at_end=True)
    assert calls == [1]
    reloaded = peftkit.load(result.final_checkpoint)
    batch = {"input_ids": torch.randint(5, 1000, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)
