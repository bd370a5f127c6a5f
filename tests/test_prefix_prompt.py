"""Prefix and prompt tuning beyond PEFT's reach: our prefix tuning through the attention interface,
prompt tuning on token classification and on architectures PEFT needs help with."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, build_tiny, perturb_trainable, tiny_config
from safetensors.torch import load_file
from test_strategies import logits, make_inputs
from transformers import AutoConfig

import peftkit
from peftkit.introspect import auto_class, head_module_names

# Architectures the main matrix (conftest) does not build, with the tasks tested here.
EXTRA = {
    "albert": dict(
        embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "modernbert": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        global_attn_every_n_layers=2,
        local_attention=8,
    ),
    "phi3": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "t5": dict(d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, decoder_start_token_id=0),
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64),
    # GPT-2's own eos id (50256) lies outside this vocabulary: the forward probe must not use it
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, eos_token_id=50256, bos_token_id=50256),
}


def extra_model(arch: str, task: str):
    base = dict(
        vocab_size=VOCAB,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        max_position_embeddings=64,
        num_labels=3,
    )
    if arch == "t5":
        base.pop("max_position_embeddings")
    torch.manual_seed(0)
    return auto_class(task).from_config(AutoConfig.for_model(arch, **{**base, **EXTRA[arch]})).eval()


def saved_base(tmp_path, arch: str, task: str):
    """(model, its folder): the model saved and loaded back, so a fresh copy can be built for reloading."""
    model = extra_model(arch, task) if arch in EXTRA else build_tiny(arch, task)
    path = tmp_path / f"base-{arch}-{task}"
    model.save_pretrained(path)
    return auto_class(task).from_pretrained(path).eval(), path


def check_contract(model, path, task: str, strategy: str, marks: tuple[str, ...], tmp_path, **options):
    """Wraps; only the strategy's parameters (and the head) train and all get gradients; outputs keep
    the input's shape and change; save -> reload gives the same logits; merge refuses with the reason."""
    batch = make_inputs(task)
    before = logits(model, batch)
    heads = head_module_names(model)
    wrapped = peftkit.wrap(model, strategy, **options).eval()
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    strays = [n for n in trainable if not any(m in n for m in marks) and not any(f"{h}." in n for h in heads)]
    assert not strays, strays[:5]
    assert any(any(m in n for m in marks) for n in trainable)
    after = logits(wrapped, batch)
    assert after.shape == before.shape  # virtual positions never reach the logits
    assert not torch.allclose(after, before, atol=1e-6)  # not a no-op

    perturb_trainable(wrapped)
    wrapped.zero_grad()
    wrapped(**batch).loss.backward()
    for n, p in wrapped.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {n}"
        else:
            assert p.grad is None, n

    trained = logits(wrapped, batch)
    ckpt = peftkit.save(wrapped, tmp_path / "ckpt")
    reloaded = peftkit.load(ckpt, base_model=auto_class(task).from_pretrained(path)).eval()
    torch.testing.assert_close(logits(reloaded, batch), trained, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="Cannot merge .*virtual tokens"):
        peftkit.merge(wrapped)
    return wrapped, ckpt


PREFIX_CASES = [
    ("bert", "classification"),
    ("bert", "token-classification"),
    ("distilbert", "token-classification"),
    ("albert", "classification"),
    ("albert", "token-classification"),
    ("modernbert", "classification"),
    ("modernbert", "token-classification"),
    ("t5", "classification"),
    ("gpt2", "classification"),
    ("llama", "token-classification"),
    ("phi3", "classification"),
    # attention in their own code, reached by hooks (peftkit/strategies/own_attention.py)
    ("deberta-v2", "classification"),
    ("deberta-v2", "token-classification"),
    ("mpnet", "classification"),
    ("mpnet", "token-classification"),
]


@pytest.mark.parametrize("arch,task", PREFIX_CASES)
def test_native_prefix(arch, task, tmp_path):
    model, path = saved_base(tmp_path, arch, task)
    wrapped, ckpt = check_contract(model, path, task, "prefix", (".peftkit_prefix.",), tmp_path)
    assert peftkit.wrap_info(wrapped).options["implementation"] == "native"
    saved = load_file(str(ckpt / "adapter_model.safetensors"))
    heads = tuple(f"{h}." for h in head_module_names(model))
    assert all(".peftkit_prefix." in n or n.startswith(heads) for n in saved)  # prefixes (and head) only


PROMPT_CASES = [
    ("bert", "token-classification"),
    ("distilbert", "token-classification"),
    ("albert", "classification"),  # embeddings narrower than the hidden size
    ("albert", "token-classification"),
    ("modernbert", "token-classification"),
    ("t5", "token-classification"),
    ("phi3", "classification"),
    ("gpt2", "classification"),
    # encoder-decoder heads that pool the decoder state at the input's last eos
    ("bart", "classification"),
    ("t5", "classification"),
]


@pytest.mark.parametrize("arch,task", PROMPT_CASES)
def test_prompt_tuning(arch, task, tmp_path):
    model, path = saved_base(tmp_path, arch, task)
    check_contract(model, path, task, "prompt", ("prompt_encoder",), tmp_path)


@pytest.mark.parametrize("arch", ["gpt2", "phi3"])
def test_no_false_refusal_on_language_models(arch):
    """The forward probe keeps to token ids the model has (GPT-2's config eos is 50256 here)."""
    for strategy in ("prompt", "prefix"):
        wrapped = peftkit.wrap(extra_model(arch, "causal-lm"), strategy)
        assert wrapped(**make_inputs("causal-lm")).loss.isfinite()
    assert peftkit.wrap_info(wrapped).options["implementation"] == "peft"


def test_prompt_token_classification_loss_covers_the_input_only():
    wrapped = peftkit.wrap(build_tiny("bert", "token-classification"), "prompt").eval()
    batch = make_inputs("token-classification")
    out = wrapped(**batch)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 3), batch["labels"].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def check_padding_is_hidden(wrapped, task: str) -> dict[str, torch.Tensor]:
    """The first row, right-padded after 5 tokens, gives the logits it gives alone; returns the padded batch."""
    padded = {k: v.clone() for k, v in make_inputs(task).items() if k != "labels"}
    padded["input_ids"][0, 5:] = 0
    padded["attention_mask"][0, 5:] = 0
    alone = {k: v[:1, :5] for k, v in padded.items()}
    with torch.no_grad():
        row = wrapped(**padded).logits[:1]
        single = wrapped(**alone).logits
    torch.testing.assert_close(
        row[:, :5] if task == "token-classification" else row, single, rtol=1e-4, atol=1e-5
    )
    return padded


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prompt_tuned_decoder_classifier_reads_the_last_real_token(arch):
    """Given inputs_embeds, GPT-2/Llama classifiers pool the last position, padding in a right-padded
    batch; prompt tuning makes them pool the last attended one again."""
    wrapped = peftkit.wrap(build_tiny(arch, "classification"), "prompt").eval()
    perturb_trainable(wrapped)
    check_padding_is_hidden(wrapped, "classification")


@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5", "deberta-v2", "mpnet"])
def test_prefix_mask_hides_padding_and_shows_the_prefix(arch):
    """A padded row gives the logits it gives alone (the widened mask still hides the padding), and
    the prefix is seen from every real token (its own mask positions are open)."""
    task = "classification" if arch != "t5" else "token-classification"
    model = extra_model(arch, task) if arch in EXTRA and arch != "gpt2" else build_tiny(arch, task)
    wrapped = peftkit.wrap(model, "prefix").eval()
    perturb_trainable(wrapped)
    padded = check_padding_is_hidden(wrapped, task)

    prefix = next(m for n, m in wrapped.named_modules() if n.endswith("peftkit_prefix"))
    with torch.no_grad():
        before = wrapped(**padded).logits[0]
        prefix.value.mul_(3.0)
        change = (wrapped(**padded).logits[0] - before).abs()
    assert (change[:5].amax(-1) > 0).all() if task == "token-classification" else change.amax() > 0


def test_prefix_projection_is_left_out_of_the_checkpoint(tmp_path):
    model, path = saved_base(tmp_path, "bert", "classification")
    wrapped = peftkit.wrap(model, "prefix", prefix_projection=True, num_virtual_tokens=4).eval()
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any(n.startswith("peftkit_prefix_encoder.") for n in trainable)
    assert not any(".peftkit_prefix." in n for n in trainable)  # the layers read the shared MLP
    batch = make_inputs("classification")
    wrapped.zero_grad()
    wrapped(**batch).loss.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in wrapped.named_parameters()
        if p.requires_grad
    )

    trained = logits(wrapped, batch)
    ckpt = peftkit.save(wrapped, tmp_path / "ckpt")
    saved = load_file(str(ckpt / "adapter_model.safetensors"))
    assert not any(n.startswith("peftkit_prefix_encoder.") for n in saved)
    assert saved["bert.encoder.layer.0.attention.self.peftkit_prefix.key"].shape == (
        4,
        4,
        8,
    )  # heads, tokens, head_dim
    assert json.loads((ckpt / "peftkit_config.json").read_text())["options"]["prefix_projection"] is False
    reloaded = peftkit.load(ckpt, base_model=auto_class("classification").from_pretrained(path)).eval()
    assert not hasattr(reloaded, "peftkit_prefix_encoder")
    torch.testing.assert_close(logits(reloaded, batch), trained, rtol=0, atol=1e-5)


def test_eager_and_sdpa_models_get_the_same_prefix(tmp_path):
    """The prefixed attention hands over to the implementation the model had: SDPA or its own eager one."""
    _, path = saved_base(tmp_path, "llama", "classification")
    results = []
    for implementation in ("sdpa", "eager"):
        model = auto_class("classification").from_pretrained(path, attn_implementation=implementation).eval()
        wrapped = peftkit.wrap(model, "prefix")
        assert wrapped.config._attn_implementation == f"peftkit_prefix_{implementation}"
        padded = check_padding_is_hidden(wrapped, "classification")  # a boolean mask, then an additive one
        results.append(logits(wrapped, padded))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_prefix_choice_and_refusals():
    assert peftkit.wrap_info(peftkit.wrap(build_tiny("gpt2", "causal-lm"), "prefix")).format == "peft"
    with pytest.raises(ValueError, match="PEFT cannot apply prefix tuning"):
        peftkit.wrap(build_tiny("bert", "classification"), "prefix", implementation="peft")


@pytest.mark.parametrize(
    "arch,task",
    [("bart", "classification"), ("deberta-v2", "classification"), ("mpnet", "token-classification")],
)
def test_prefix_on_the_meta_device_counts_like_the_real_model(arch, task):
    """The planner wraps models on the meta device: the probe runs there too."""
    real = peftkit.count_parameters(peftkit.wrap(build_tiny(arch, task), "prefix"))
    with torch.device("meta"):
        skeleton = auto_class(task).from_config(tiny_config(arch))
    assert peftkit.count_parameters(peftkit.wrap(skeleton, "prefix")) == real


def test_native_prefix_decodes_with_a_cache():
    """Forced on a causal LM, our prefix works with the KV cache: the prefix is not cached, it is put
    in front again at each step, and the step's mask covers it."""
    wrapped = peftkit.wrap(build_tiny("llama", "causal-lm"), "prefix", implementation="native").eval()
    perturb_trainable(wrapped, scale=1.0)
    ids = make_inputs("causal-lm")["input_ids"]
    with torch.no_grad():
        full = wrapped(ids).logits[:, -1]
        start = wrapped(ids[:, :-1], use_cache=True)
        step = wrapped(ids[:, -1:], past_key_values=start.past_key_values).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)


# DeBERTa-v3's attention: relative positions in buckets, content-to-position and position-to-content
# terms, position embeddings through the shared key/query projections.
DEBERTA_V3 = dict(
    relative_attention=True,
    pos_att_type=["p2c", "c2p"],
    share_att_key=True,
    position_buckets=8,
    max_relative_positions=-1,
    norm_rel_ebd="layer_norm",
)


@pytest.mark.parametrize("task", ["classification", "token-classification"])
def test_native_prefix_on_deberta_relative_attention(task, tmp_path):
    """With DeBERTa-v3's disentangled relative attention the hooks keep every contract; padding stays
    hidden (the position terms are computed for the input's positions only)."""
    torch.manual_seed(0)
    model = auto_class(task).from_config(tiny_config("deberta-v2", **DEBERTA_V3)).eval()
    model.save_pretrained(tmp_path / "base")
    model = auto_class(task).from_pretrained(tmp_path / "base").eval()
    wrapped, _ = check_contract(model, tmp_path / "base", task, "prefix", (".peftkit_prefix.",), tmp_path)
    check_padding_is_hidden(wrapped, task)


@pytest.mark.parametrize(
    "arch,names", [("deberta-v2", ("query_proj", "key_proj", "value_proj")), ("mpnet", ("q", "k", "v"))]
)
def test_own_code_attention_sees_the_prefix_without_position_terms(arch, names):
    """One hooked attention module computes softmax([q.Pk, q.k + bias]) [Pv; v]: the learned keys and
    values in front of the input's, with no position term (zero bias) for them."""
    wrapped = peftkit.wrap(build_tiny(arch, "token-classification"), "prefix", num_virtual_tokens=3).eval()
    perturb_trainable(wrapped, scale=1.0)
    module = next(m for n, m in wrapped.named_modules() if hasattr(m, "peftkit_prefix"))
    heads, length = module.num_attention_heads, 5
    hidden = torch.randn(2, length, 32, generator=torch.Generator().manual_seed(3))
    bias = torch.randn(2, heads, length, length) if arch == "mpnet" else torch.zeros(2, heads, length, length)
    with torch.no_grad():
        if arch == "mpnet":
            got, weights = module(hidden, None, bias, True)
        else:
            got, weights = module(hidden, torch.ones(2, 1, length, length, dtype=torch.bool), True)
        # outside the module's forward the projections' hooks leave them alone
        q, k, v = (getattr(module, name)(hidden).view(2, length, heads, -1).transpose(1, 2) for name in names)
        pk, pv = (t.expand(2, -1, -1, -1) for t in module.peftkit_prefix.key_value())
        scores = torch.cat([q @ pk.transpose(-1, -2), q @ k.transpose(-1, -2)], -1) / q.shape[-1] ** 0.5
        scores = scores + torch.nn.functional.pad(bias, (3, 0))
        expected = (scores.softmax(-1) @ torch.cat([pv, v], 2)).transpose(1, 2).reshape(2, length, -1)
        if arch == "mpnet":
            expected = module.o(expected)  # MPNet's output projection is part of its attention module
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights, scores.softmax(-1), rtol=1e-4, atol=1e-5)  # the input's rows only
