"""Evaluation: the task's eval step over a prepared DataLoader, gathered across processes, then the
task's metrics. The loop scores validation and test with it; ``peftkit eval`` scores a checkpoint."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _concat_padded(parts: list[np.ndarray]) -> np.ndarray:
    if parts[0].ndim < 2:
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    padded = [
        np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2), constant_values=-100)
        for p in parts
    ]
    return np.concatenate(padded)


def evaluate(model: nn.Module, dataloader, task, accelerator) -> dict[str, float]:
    """Run the task's eval step over a prepared dataloader; metrics over all processes' samples."""
    was_training = model.training
    model.eval()
    collected: dict[str, list[np.ndarray]] = {}
    for batch in dataloader:
        with torch.no_grad():
            out = task.eval_step(model, batch)
        out = {
            k: accelerator.pad_across_processes(v, dim=1, pad_index=-100) if v.ndim >= 2 else v
            for k, v in out.items()
        }
        out = accelerator.gather_for_metrics(out)
        for key, value in out.items():
            collected.setdefault(key, []).append(
                value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
            )
    model.train(was_training)
    gathered = {k: _concat_padded(v) for k, v in collected.items()}
    return {k: float(v) for k, v in task.compute_metrics(gathered).items()}
