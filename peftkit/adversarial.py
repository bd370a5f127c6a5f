"""Adversarial training on the input embeddings: FGM, PGD and FreeLB, for any strategy.

The usual recipes perturb ``word_embeddings.weight``, which does nothing when the embeddings are
frozen (LoRA, adapters, BitFit, prompt tuning). Here the OUTPUT of the input embedding layer
(``model.get_input_embeddings()``) is perturbed instead, through a forward hook: a tensor
``delta`` of the embedding output's shape is added to it, so the gradient with respect to the
embeddings exists whatever trains, and the trained parameters see the adversarial loss.

One training step (`Adversary`), within the loop's ``accelerator.accumulate``:

- the clean pass (forward + ``accelerator.backward``) runs with a zero ``delta`` that requires
  grad; its gradient ``g`` is the direction of steepest loss increase;
- ``fgm``: one more pass at ``delta = epsilon * g / ||g||`` (per example, L2 over positions and
  features), backward into the parameters: about 2x a plain step;
- ``pgd``: ``adv_steps`` ascent steps of size ``adv_alpha`` projected onto the ``epsilon`` ball;
  the inner steps take the gradient of ``delta`` only, the last one backpropagates into the
  parameters: about (K+1)x;
- ``freelb``: the same ascent, but every ascent pass's parameter gradient is kept, each weighted
  1/K (FreeLB's "free" gradient average; here started from the clean pass, not a random
  ``delta``, so it stays deterministic): about (K+1)x.

The clean gradient always counts with weight 1 (loss = clean + adversarial). Every pass but the
last runs under ``accelerator.no_sync`` (one gradient all-reduce per step in multi-process runs);
the loss the loop backpropagates is scaled by Accelerate as usual (gradient accumulation, fp16
loss scaling: the direction ``g / ||g||`` does not depend on the scale; a non-finite ``g``
gives a zero ``delta``). Outside these passes, and whenever the embedding module is in eval
mode, the hook returns the embeddings unchanged: evaluation and prediction never see a
perturbation.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

METHODS = ("fgm", "pgd", "freelb")


def input_embeddings(model: nn.Module) -> nn.Module:
    """The model's input embedding module (PEFT wrappers and Accelerate's DDP unwrapped)."""
    target = getattr(model, "module", model)
    try:
        module = target.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        module = None
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"adversarial training perturbs the input embeddings, and {type(target).__name__} has no "
            "get_input_embeddings(); train it without adversarial (adversarial=None)."
        )
    return module


def _unit(grad: torch.Tensor) -> torch.Tensor:
    """``grad / ||grad||`` per example (L2 over all but the first dimension); zero where not finite."""
    grad = grad.detach().float()
    norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.ndim - 1)))
    unit = grad / (norm + 1e-12)
    return torch.where(torch.isfinite(norm), unit, torch.zeros_like(unit))


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``delta`` scaled back onto the L2 ball of radius ``epsilon`` (per example) where it left it."""
    norm = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.ndim - 1)))
    return delta * torch.clamp(epsilon / (norm + 1e-12), max=1.0)


class EmbeddingPerturbation:
    """A forward hook adding ``deltas`` (one per call of the embedding module within a forward
    pass, e.g. encoder and decoder) to the embedding output while `active`; otherwise a no-op."""

    def __init__(self, model: nn.Module):
        self.module = input_embeddings(model)
        self.deltas: list[torch.Tensor] | None = None  # fixed perturbations, or ...
        self.probe = False  # ... fresh zero ones requiring grad, collected in self.deltas
        self._calls = 0
        self.handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, _inputs, output: torch.Tensor):
        if not module.training or (self.deltas is None and not self.probe):
            return None
        index, self._calls = self._calls, self._calls + 1
        if self.probe and index >= len(self.deltas or []):
            self.deltas = [*(self.deltas or []), torch.zeros_like(output, requires_grad=True)]
        delta = self.deltas[index]
        return output + delta.to(output.dtype)

    @contextmanager
    def active(self, deltas: list[torch.Tensor] | None = None, probe: bool = False):
        """Add ``deltas`` (or, with ``probe``, zero deltas that collect the gradient) in the passes run here."""
        self.deltas, self.probe, self._calls = deltas, probe, 0
        try:
            yield self
        finally:
            self.probe, self._calls = False, 0
            if not probe:
                self.deltas = None

    def take(self) -> list[torch.Tensor]:
        """The deltas of the last probing pass (their ``.grad`` set by its backward), forgotten here."""
        deltas, self.deltas = self.deltas or [], None
        return deltas

    def remove(self) -> None:
        self.handle.remove()


class Adversary:
    """The adversarial part of one training step (see the module docstring); ``method=None`` does nothing."""

    def __init__(
        self,
        model: nn.Module,
        accelerator,
        method: str | None,
        epsilon: float,
        steps: int,
        alpha: float | None,
    ):
        self.model, self.accelerator, self.method = model, accelerator, method
        self.epsilon, self.steps = float(epsilon), int(steps)
        self.alpha = float(alpha) if alpha is not None else self.epsilon / max(1, self.steps)
        self.hook = EmbeddingPerturbation(model) if method else None

    def _no_sync(self):
        return self.accelerator.no_sync(self.model) if self.accelerator.num_processes > 1 else nullcontext()

    @contextmanager
    def clean_pass(self):
        """Around the loop's clean forward + backward: collect the embedding-output gradient."""
        if self.hook is None:
            yield
            return
        with self._no_sync(), self.hook.active(probe=True):
            yield

    def attack(self, loss_of: Callable[[], torch.Tensor]) -> None:
        """The adversarial passes after the clean one; ``loss_of()`` runs a forward pass and returns the loss."""
        if self.hook is None:
            return
        grads = [d.grad if d.grad is not None else torch.zeros_like(d) for d in self.hook.take()]
        if not grads:
            raise RuntimeError(
                "adversarial training: the input embeddings were not called in the forward pass, so "
                "there is nothing to perturb; train this model with adversarial=None."
            )
        if self.method == "fgm":
            deltas = [self.epsilon * _unit(g) for g in grads]
            with self.hook.active(deltas):
                self.accelerator.backward(loss_of())
            return
        deltas = [torch.zeros_like(g, dtype=torch.float32) for g in grads]
        for k in range(self.steps):
            deltas = [
                _project(d + self.alpha * _unit(g), self.epsilon).requires_grad_()
                for d, g in zip(deltas, grads, strict=True)
            ]
            last = k == self.steps - 1
            with nullcontext() if last else self._no_sync(), self.hook.active(deltas):
                loss = loss_of()
                if self.method == "freelb":
                    self.accelerator.backward(loss / self.steps)
                elif last:
                    self.accelerator.backward(loss)
                else:  # pgd: only the direction for the next step, no parameter gradient
                    grads = list(torch.autograd.grad(loss, deltas, allow_unused=True, materialize_grads=True))
            if self.method == "freelb" and not last:
                grads = [d.grad if d.grad is not None else torch.zeros_like(d) for d in deltas]
            deltas = [d.detach() for d in deltas]

    def remove(self) -> None:
        if self.hook is not None:
            self.hook.remove()
