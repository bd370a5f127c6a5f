"""Adversarial training (peftkit.adversarial): the embedding-output perturbation changes the loss and
the update under every strategy and task, and never touches evaluation."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_config

import peftkit
from peftkit.adversarial import METHODS, Adversary, EmbeddingPerturbation

# Every strategy (AdaLoRA needs its budget schedule: LoRA's mechanism); prefix tuning needs a model with a
# key/value cache: GPT-2 for causal LM.
STRATEGY_TASKS = [
    (s, "causal-lm" if s == "prefix" else "classification") for s in peftkit.STRATEGIES if s != "adalora"
]
TASK_ARCH = {"classification": "bert", "token-classification": "bert", "causal-lm": "gpt2"}


def tiny_model(task: str, arch: str | None = None, seed: int = 0):
    """A tiny model without dropout (so two forward passes differ only by the perturbation)."""
    from peftkit.introspect import auto_class

    arch = arch or TASK_ARCH[task]
    drop = {"gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)}.get(
        arch, dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    )
    torch.manual_seed(seed)
    return auto_class(task).from_config(tiny_config(arch, **drop))


def tiny_batch(task: str, seed: int = 0, batch: int = 4, length: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "classification":
        out["labels"] = torch.randint(0, 3, (batch,), generator=g)
    elif task == "token-classification":
        out["labels"] = torch.randint(0, 3, (batch, length), generator=g)
        out["labels"][:, 0] = -100
    else:
        out["labels"] = ids.clone()
        out["labels"][:, :3] = -100
    return out


def one_step(model, batch, method: str | None, **kw):
    """Losses of every pass and the accumulated gradients of one (possibly adversarial) step."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model.train()
    model.zero_grad(set_to_none=True)
    adversary = Adversary(
        model, accelerator, method, kw.get("epsilon", 1.0), kw.get("steps", 2), kw.get("alpha")
    )
    losses = []

    def loss_of():
        loss = model(**batch).loss
        losses.append(loss.item())
        return loss

    try:
        with adversary.clean_pass():
            accelerator.backward(loss_of())
        adversary.attack(loss_of)
    finally:
        adversary.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return losses, grads


@pytest.mark.parametrize("strategy,task", STRATEGY_TASKS)
def test_adversarial_step_changes_loss_and_update_for_every_strategy(strategy, task):
    model = peftkit.wrap(tiny_model(task), strategy)
    batch = tiny_batch(task)
    plain_losses, plain = one_step(model, batch, None)
    losses, grads = one_step(model, batch, "fgm")
    assert len(plain_losses) == 1 and len(losses) == 2
    assert losses[0] == pytest.approx(plain_losses[0])  # the clean pass is the plain one
    assert losses[1] > losses[0]  # the perturbation goes up the loss
    assert plain.keys() == grads.keys() and plain
    assert any(not torch.allclose(plain[n], grads[n]) for n in plain), (
        "the adversarial pass added no gradient"
    )


@pytest.mark.parametrize("task", list(TASK_ARCH))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_every_task(task, method):
    model = peftkit.wrap(tiny_model(task), "lora")
    batch = tiny_batch(task)
    _, plain = one_step(model, batch, None)
    losses, grads = one_step(model, batch, method, steps=2)
    assert len(losses) == (2 if method == "fgm" else 3)  # clean + 1, or clean + K
    assert all(loss > losses[0] for loss in losses[1:])
    assert any(not torch.allclose(plain[n], grads[n]) for n in plain)


def test_pgd_stays_in_the_epsilon_ball_and_its_inner_steps_add_no_parameter_gradient():
    model = peftkit.wrap(tiny_model("classification"), "lora", dropout=0.0)
    batch = tiny_batch("classification")
    hook = EmbeddingPerturbation(model)
    seen, deltas = [], []
    original = hook._hook

    def spy(module, inputs, output):
        out = original(module, inputs, output)
        if out is not None:
            deltas.append((out - output).detach())
            seen.append(deltas[-1].flatten(1).norm(dim=1))
        return out

    hook.handle.remove()
    hook.handle = hook.module.register_forward_hook(spy)
    from accelerate import Accelerator

    adversary = Adversary(model, Accelerator(cpu=True), "pgd", 0.5, 3, 0.4)
    adversary.hook.remove()
    adversary.hook = hook
    model.train()
    with adversary.clean_pass():
        model(**batch).loss.backward()
    clean = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    adversary.attack(lambda: model(**batch).loss)
    assert len(seen) == 4  # the clean pass (zero delta) and three ascent steps
    assert torch.all(seen[0] == 0)
    assert all(torch.all(norm <= 0.5 + 1e-4) for norm in seen[1:])
    assert torch.allclose(seen[-1], torch.full_like(seen[-1], 0.5), atol=1e-4)  # 0.4 then projected back
    total = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)  # the last delta alone: the inner steps must have added nothing
    with hook.active([deltas[-1]]):
        model(**batch).loss.backward()
    for name, grad in clean.items():
        assert torch.allclose(total[name], grad + dict(model.named_parameters())[name].grad, atol=1e-6)
    hook.remove()


@pytest.mark.parametrize("strategy", ["lora", "prompt", "full"])
def test_no_perturbation_outside_training(strategy):
    model = peftkit.wrap(tiny_model("classification"), strategy)
    batch = {k: v for k, v in tiny_batch("classification").items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    hook = EmbeddingPerturbation(model)
    big = [
        torch.randn(4, 10, 32, generator=torch.Generator().manual_seed(0)) * 5
    ]  # (a constant: LayerNorm undoes it)
    with torch.no_grad(), hook.active(big):  # even while a delta is set, eval mode is left alone
        during = model(**batch).logits
    with torch.no_grad():
        after = model(**batch).logits
    hook.remove()
    assert torch.equal(before, during) and torch.equal(before, after)
    model.train()
    with torch.no_grad(), EmbeddingPerturbation(model).active(big):
        assert not torch.allclose(model(**batch).logits, before)  # ... while training sees it


def test_train_config_validates_adversarial_options():
    from peftkit.training import TrainConfig

    with pytest.raises(ValueError, match="adversarial.*choose one of fgm, pgd, freelb"):
        TrainConfig(adversarial="fgsm")
    with pytest.raises(ValueError, match="adv_epsilon"):
        TrainConfig(adversarial="fgm", adv_epsilon=0)
    with pytest.raises(ValueError, match="adv_steps"):
        TrainConfig(adversarial="pgd", adv_steps=0)
    assert TrainConfig(adversarial="none").adversarial is None
    assert TrainConfig.from_dict({"adversarial": "pgd", "adv_steps": 3, "adv_alpha": 0.3}).adv_steps == 3
