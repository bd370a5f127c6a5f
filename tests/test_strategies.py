"""Every strategy on tiny models of many architectures: what trains, what flows, what is kept."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCH_TASKS, VOCAB, build_tiny, perturb_trainable
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer

import peftkit
from peftkit.introspect import auto_class, head_module_names, linear_dims
from peftkit.strategies import BottleneckAdapter
from peftkit.targets import attention_targets, ia3_targets, residual_width, sublayer_outputs

# Architectures whose feed-forward part is a mixture of experts (no Linear layer per expert).
MIXTURE_OF_EXPERTS = {"mixtral"}

# Strategies whose freshly wrapped model must compute exactly what the base model did.
IDENTITY_AT_INIT = ("full", "lora", "adalora", "adapter", "ia3", "bitfit")
# Architectures whose backbone has no bias terms: BitFit must refuse them. The only refusals left:
# every other strategy wraps every architecture and task of the matrix.
# (Qwen2 has q/k/v biases, so BitFit applies.)
BIAS_FREE = {"llama", "t5", "phi3", "mistral", "gemma", "mpt", "mixtral"}


# Which parameter names may train under each strategy (task-head parameters aside).
TRAINABLE_MARK = {
    "lora": ("lora_",),
    "adalora": ("lora_",),
    "ia3": ("ia3_",),
    "adapter": (".adapter.",),
    "prefix": ("prompt_encoder", ".peftkit_prefix."),
    "prompt": ("prompt_encoder",),
}


# A 2-unit ReLU bottleneck (width 32 // 16) can be dead for every token of a tiny random
# model, which would hide whether gradients are wired; GELU keeps every unit alive.
TINY_OPTIONS = {"adapter": {"activation": "gelu"}}


def make_inputs(task: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    ids[:, -1] = 2  # end with eos: BART's classification head reads the eos position
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "classification":
        batch["labels"] = torch.tensor([0, 2])
    elif task == "token-classification":
        batch["labels"] = torch.randint(0, 3, ids.shape, generator=g)
    elif task == "causal-lm":
        batch["labels"] = ids.clone()
    else:
        batch["labels"] = torch.randint(3, VOCAB, (2, 5), generator=g)
    return batch


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def intended(name: str, strategy: str, heads: list[str]) -> bool:
    """Whether a trainable parameter called ``name`` belongs to what the strategy trains."""
    if any(f"{h}." in name and "modules_to_save" in name or name.startswith(f"{h}.") for h in heads):
        return True
    if strategy == "full":
        return True
    if strategy == "bitfit":
        return name.endswith("bias")
    return any(mark in name for mark in TRAINABLE_MARK[strategy])


@pytest.mark.parametrize("strategy", peftkit.STRATEGIES)
@pytest.mark.parametrize("arch,task", ARCH_TASKS)
def test_strategy_on_architecture(arch, task, strategy, tiny_base, tmp_path):
    model, base_dir = tiny_base(arch, task)
    batch = make_inputs(task)
    before = logits(model, batch)
    base_total = peftkit.count_parameters(model).total
    base_names = {n for n, _ in model.named_parameters()}
    heads = head_module_names(model)

    if strategy == "bitfit" and arch in BIAS_FREE:
        with pytest.raises(ValueError, match="no.*bias|has none"):
            peftkit.wrap(model, strategy)
        return

    wrapped = peftkit.wrap(model, strategy, **TINY_OPTIONS.get(strategy, {}))
    wrapped.eval()
    info = peftkit.wrap_info(wrapped)
    assert info.strategy == strategy and info.task == task

    # Only the intended parameters require grad, and there is at least one.
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable
    wrong = [n for n in trainable if not intended(n, strategy, heads)]
    assert not wrong, f"unintended trainable parameters: {wrong[:5]}"
    for h in heads:  # the task head trains under every strategy
        assert any(n.startswith(f"{h}.") or f"{h}.modules_to_save" in n for n in trainable), h

    # Outputs unchanged right after wrapping.
    if strategy in IDENTITY_AT_INIT:
        torch.testing.assert_close(logits(wrapped, batch), before, rtol=0, atol=1e-5)

    # Counts: count_parameters agrees with an independent tally and with PEFT.
    counts = peftkit.count_parameters(wrapped)
    added = sum(p.numel() for n, p in wrapped.named_parameters() if not _maps_to_base(n, base_names))
    assert counts.total == base_total + added
    assert counts.trainable == sum(
        p.numel() for n, p in wrapped.named_parameters() if p.requires_grad and ".original_module." not in n
    )
    assert 0 < counts.percent <= 100
    if isinstance(wrapped, PeftModel):
        peft_trainable, _ = wrapped.get_nb_trainable_parameters()
        assert counts.trainable == peft_trainable

    # A backward pass reaches every trainable parameter and no frozen one.
    perturb_trainable(wrapped)
    wrapped.zero_grad()
    wrapped(**batch).loss.backward()
    for n, p in wrapped.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"no gradient reached {n}"
            assert p.grad.abs().sum() > 0, f"zero gradient at {n}"
        else:
            assert p.grad is None, f"frozen parameter {n} received a gradient"

    # Save -> load round trip gives identical logits.
    trained = logits(wrapped, batch)
    ckpt = peftkit.save(wrapped, tmp_path / "ckpt")
    fresh = auto_class(task).from_pretrained(base_dir).eval()
    reloaded = peftkit.load(ckpt, base_model=fresh).eval()
    torch.testing.assert_close(logits(reloaded, batch), trained, rtol=0, atol=1e-5)
    assert peftkit.wrap_info(reloaded).strategy == strategy

    # Merge: folds the update in (same logits) or refuses with a reason.
    if strategy in ("adapter", "prefix", "prompt"):
        with pytest.raises(ValueError, match="Cannot merge"):
            peftkit.merge(wrapped)
    else:
        merged = peftkit.merge(wrapped)
        assert type(merged) is type(model)
        assert not any(isinstance(m, (BaseTunerLayer, BottleneckAdapter)) for m in merged.modules())
        torch.testing.assert_close(logits(merged.eval(), batch), trained, rtol=1e-4, atol=1e-4)


def _maps_to_base(name: str, base_names: set[str]) -> bool:
    """True when a wrapped model's parameter is one of the base model's own (renamed by PEFT)."""
    if ".modules_to_save." in name:
        return True
    plain = name.replace(".base_layer.", ".").replace(".original_module.", ".")
    candidates = (plain, plain.removeprefix("base_model."), plain.removeprefix("base_model.model."))
    return any(c in base_names for c in candidates)


@pytest.mark.parametrize("arch,task", ARCH_TASKS)
def test_targets_found_on_every_architecture(arch, task):
    """No architecture in the matrix needs target_modules: every block has its attention output(s) and
    its feed-forward output, both writing the residual stream (a mixture of experts is taken whole),
    and IA3's feed-forward modules are targets (none where the experts are one 3-D tensor)."""
    model = build_tiny(arch, task)
    width = residual_width(model)
    blocks = sublayer_outputs(model)
    assert blocks and all(b.attention and b.feed_forward for b in blocks)
    for b in blocks:
        assert b.feed_forward not in b.attention
        assert all(linear_dims(model.get_submodule(n))[1] == width for n in b.attention)
        assert (linear_dims(model.get_submodule(b.feed_forward)) or (0, width))[1] == width
    assert attention_targets(model)
    targets, ffn = ia3_targets(model)
    assert (ffn or arch in MIXTURE_OF_EXPERTS) and set(ffn) <= set(targets)


# Fused and parallel layouts: (attention output, feed-forward output) within a block, and IA3's targets:
# PEFT's own table where it has the model type, else read off the structure (a fused q/k/v taken whole).
# Phi-3 and CodeGen register o_proj/out_proj before their fused qkv_proj; CodeGen, GPT-J and StableLM
# (use_parallel_residual) run attention and feed-forward in parallel; GPT-BigCode's c_attn is multi-query.
LAYOUTS = {
    "phi3": ("self_attn.o_proj", "mlp.down_proj", ["self_attn.qkv_proj", "mlp.down_proj"]),
    "codegen": ("attn.out_proj", "mlp.fc_out", ["attn.qkv_proj", "mlp.fc_out"]),
    "mpt": ("attn.out_proj", "ffn.down_proj", ["attn.Wqkv", "ffn.down_proj"]),
    "gpt_bigcode": ("attn.c_proj", "mlp.c_proj", ["c_attn", "mlp.c_proj"]),
    "gptj": ("attn.out_proj", "mlp.fc_out", ["q_proj", "v_proj", "fc_out"]),
    "stablelm": (
        "self_attn.o_proj",
        "mlp.down_proj",
        ["self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"],
    ),
    "mpnet": ("attention.attn.o", "output.dense", ["attention.attn.k", "attention.attn.v", "output.dense"]),
    "deberta-v2": ("attention.output.dense", "output.dense", ["key_proj", "value_proj", "output.dense"]),
    # PEFT's table names Mixtral's w2, which transformers 5 fuses into one 3-D tensor: the structure speaks.
    "mixtral": ("self_attn.o_proj", "mlp", ["self_attn.k_proj", "self_attn.v_proj"]),
}


@pytest.mark.parametrize("arch", LAYOUTS)
def test_fused_and_parallel_layouts(arch):
    attention, feed_forward, ia3 = LAYOUTS[arch]
    task = next(t for a, t in ARCH_TASKS if a == arch)
    model = build_tiny(arch, task)
    blocks = sublayer_outputs(model)
    first = blocks[0]
    assert first.attention == (f"{first.block}.{attention}",)
    assert first.feed_forward == f"{first.block}.{feed_forward}"
    assert ia3_targets(model)[0] == ia3
    wrapped = peftkit.wrap(model, "adapter", placement="houlsby")
    adapted = {n for n, m in wrapped.named_modules() if isinstance(m, BottleneckAdapter)}
    expected = {f"{b.block}.{n}.adapter" for b in blocks for n in (attention, feed_forward)}
    assert adapted == expected
    assert peftkit.wrap(build_tiny(arch, task), "ia3").peft_config["default"].target_modules == set(ia3)
