"""The planner's run-dependent CPU terms (distinct batch shapes, adversarial passes) and its CUDA column."""

from __future__ import annotations

import json

import pytest
from helpers_memory import save_tiny_config

from peftkit.planner import plan
from peftkit.planner.constants import CPU_RUNTIME_BYTES, DEFAULT_DISTINCT_BATCHES
from peftkit.planner.costs import adversarial_passes, cpu_overhead_bytes, distinct_batches


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(save_tiny_config(tmp_path_factory.mktemp("bert") / "bert", "bert"))


def lora(model: str, **settings):
    return plan(model, batch_size=8, seq_len=32, strategies=["lora"], quantization=[None], **settings).row(
        "lora"
    )


def test_distinct_batches_are_bounded_by_steps_data_and_lengths():
    assert distinct_batches(32, 64, train_size=64, max_steps=150) == 2  # the same two batches every epoch
    assert distinct_batches(32, 64, train_size=4096, max_steps=10) == 10
    assert distinct_batches(32, 64, train_size=4096, max_steps=1000) == 64  # at most one per padded length
    assert distinct_batches(32, 128) == min(DEFAULT_DISTINCT_BATCHES, 128)
    assert distinct_batches(32, 8) == 8


def test_cpu_overhead_grows_with_batch_shapes_and_activations():
    assert cpu_overhead_bytes(1, 10**9) == CPU_RUNTIME_BYTES  # one shape: the allocator reuses its blocks
    assert cpu_overhead_bytes(2, 10**8) < cpu_overhead_bytes(64, 10**8) < cpu_overhead_bytes(64, 10**9)


def test_small_training_sets_are_planned_smaller_on_the_cpu_only(bert):
    small, large = lora(bert, train_size=16, max_steps=100), lora(bert, train_size=4096, max_steps=100)
    assert small.overhead < large.overhead and small.predicted_peak < large.predicted_peak
    assert small.activations == large.activations and small.cuda_peak == large.cuda_peak


def test_a_longest_batch_trained_first_is_priced_beside_the_shorter_later_steps(bert):
    """peftkit's sampler trains the longest batch first: the later steps, at next_len, build up the
    allocator's kept blocks; the peak is the larger of that step and the first one (CoNLL-2003, seed 1:
    one 128-token sentence among sentences of at most 89)."""

    def row(next_len=None):
        return plan(bert, batch_size=32, seq_len=256, strategies=["lora"], quantization=[None], train_size=4096,
                    max_steps=300, next_len=next_len).row("lora")

    every, lone, near = row(), row(next_len=64), row(next_len=250)
    assert lone.predicted_peak < near.predicted_peak < every.predicted_peak
    # one long batch: its step with the runtime alone sets the peak
    assert (lone.activations, lone.overhead, lone.optimizer_states) == (every.activations, CPU_RUNTIME_BYTES, 0)
    assert lone.predicted_peak == every.predicted_peak - every.overhead - every.optimizer_states + CPU_RUNTIME_BYTES
    assert any(n.startswith("peak at the first step (256 tokens") for n in lone.notes)
    # later steps nearly as long, with what the allocator keeps after them, cost more than the first one
    assert near.activations < every.activations and near.overhead > CPU_RUNTIME_BYTES
    assert near.optimizer_states == every.optimizer_states > 0 and not near.notes
    assert near.predicted_peak > lone.predicted_peak
    assert row(next_len=256).predicted_peak == every.predicted_peak  # not shorter: priced as before
    assert lone.cuda_peak == every.cuda_peak  # the CUDA column keeps the longest step
    with pytest.raises(ValueError, match="next_len"):
        row(next_len=0)


def test_adversarial_passes_add_cpu_memory(bert):
    assert [adversarial_passes(m, 3) for m in (None, "fgm", "pgd", "freelb")] == [1, 2, 4, 4]
    plain, fgm = lora(bert), lora(bert, adversarial="fgm")
    pgd = lora(bert, adversarial="pgd", adv_steps=2)
    assert plain.activations < fgm.activations < pgd.activations
    # on CUDA the extra pass reuses the cached blocks: only the perturbation's gradient path remains
    assert 0 <= fgm.cuda_peak - plain.cuda_peak < fgm.predicted_peak - plain.predicted_peak
    with pytest.raises(ValueError, match="adversarial"):
        lora(bert, adversarial="fast")
    with pytest.raises(ValueError, match="adv_steps"):
        lora(bert, adversarial="pgd", adv_steps=0)


def test_cuda_column_uses_the_checkpoint_dtype(tmp_path):
    path = str(save_tiny_config(tmp_path / "llama", "llama", dtype="bfloat16"))
    settings = dict(
        task="causal-lm", batch_size=2, seq_len=16, strategies=["full", "lora"], quantization=[None]
    )
    cpu, cuda = plan(path, **settings), plan(path, **settings, device="cuda")
    for name in ("full", "lora"):
        assert cpu.row(name).cuda_peak == cuda.row(name).predicted_peak == cuda.row(name).cuda_peak
        assert cuda.row(name).weights < cpu.row(name).weights  # bf16 frozen weights against float32
    assert cuda.row("full").gradients * 2 == cpu.row("full").gradients  # full fine-tuning trains in bf16
    assert cuda.row("full").weights * 1.9 < cpu.row("full").weights
    assert cuda.row("lora").gradients == cpu.row("lora").gradients  # adapters stay float32
    table = cpu.to_table()
    assert "cuda peak" in table and "bfloat16" in table and "CUDA context" in table
    assert cpu.to_dict()["rows"][0]["cuda_peak"] == cpu.row("full").cuda_peak


def test_bench_cells_plan_with_their_training_options(tmp_path, bert):
    from peftkit.bench.cell import plan_cell
    from peftkit.bench.suite import StrategySpec

    spec = StrategySpec(
        name="lora-gc",
        strategy="lora",
        options={"r": 4},
        train={"gradient_checkpointing": True, "adversarial": "fgm", "lr_scheduler": "linear"},
    )
    result = plan_cell(
        bert, "classification", spec, 8, 32, "cpu", num_labels=2, train_samples=64, max_steps=20, next_len=16
    )
    assert result.gradient_checkpointing and result.adversarial == "fgm"
    assert (result.train_size, result.max_steps, result.next_len) == (64, 20, 16)


def test_cli_plans_the_run_settings_and_shows_the_cuda_column(capsys, bert):
    from peftkit.planner import main

    argv = [bert, "--strategies", "lora", "--quantization", "none", "--batch-size", "8", "--seq-len", "32"]
    assert main([*argv, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--json", "--train-size", "4096", "--max-steps", "100", "--adversarial", "pgd"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert (run["train_size"], run["max_steps"], run["adversarial"]) == (4096, 100, "pgd")
    assert run["rows"][0]["predicted_peak"] > plain["rows"][0]["predicted_peak"]
    assert main(argv) == 0
    assert "cuda peak" in capsys.readouterr().out
