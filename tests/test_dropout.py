"""peftkit.dropout: the CPU dropout's masks, gradients and seeding, and the swap in and out of a model."""

import pytest
import torch
from torch import nn

from peftkit.dropout import CpuDropout, dropout_cpu, faster_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_masks_drop_p_of_the_elements_and_scale_the_rest(p):
    torch.manual_seed(0)
    x = torch.ones(2_000_000)
    y = dropout_cpu(x, p)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=4 * (p * (1 - p) / x.numel()) ** 0.5 + 1e-5)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    # neighbours are independent: a drop says nothing about the next element (16-bit quarters of one draw)
    both = ((y[:-1] == 0) & (y[1:] == 0)).float().mean().item()
    assert both == pytest.approx(p * p, abs=0.1 * p * p + 1e-4)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(4, 32, 16, requires_grad=True)
    y = dropout_cpu(x, 0.2)
    y.sum().backward()
    expected = (y != 0).float() / 0.8
    assert torch.equal(x.grad, expected)
    assert y.shape == x.shape and y.dtype == x.dtype


def test_the_seed_sets_the_mask_and_bfloat16_keeps_its_dtype():
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    torch.manual_seed(3)
    a = dropout_cpu(x, 0.1)
    torch.manual_seed(3)
    b = dropout_cpu(x, 0.1)
    torch.manual_seed(4)
    c = dropout_cpu(x, 0.1)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.bfloat16


def test_module_is_identity_in_eval_and_torch_dropout_at_the_edges():
    x = torch.randn(16, 8)
    module = CpuDropout(0.3).eval()
    assert torch.equal(module(x), x)
    module.train()
    assert torch.equal(CpuDropout(0.0).train()(x), x)
    assert torch.equal(CpuDropout(1.0).train()(x), torch.zeros_like(x))
    assert isinstance(module, nn.Dropout)  # PEFT and peftkit's planner check for nn.Dropout / nn.Identity


def test_swap_covers_the_model_and_lora_and_puts_the_originals_back():
    from conftest import build_tiny

    import peftkit

    model = peftkit.wrap(build_tiny("bert", "classification").train(), "lora")
    before = {name: module for name, module in model.named_modules() if type(module) is nn.Dropout}
    assert any("lora_dropout" in name for name in before)
    with faster_dropout(model) as swapped:
        inside = dict(model.named_modules())
        assert swapped == len(before)
        assert all(type(inside[name]) is CpuDropout and inside[name].p == m.p for name, m in before.items())
        model(input_ids=torch.randint(3, 60, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
    after = dict(model.named_modules())
    assert all(after[name] is module for name, module in before.items())
    with pytest.raises(RuntimeError), faster_dropout(model):
        raise RuntimeError("a failed run")
    assert all(dict(model.named_modules())[name] is module for name, module in before.items())
    with faster_dropout(model, enabled=False) as swapped:
        assert swapped == 0 and not any(type(m) is CpuDropout for m in model.modules())
