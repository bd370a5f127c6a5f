"""Shared pieces of the serve tests: peftkit checkpoints of tiny bases, and what `peftkit predict`
gives for them (the answer a served adapter must match)."""

from __future__ import annotations

from pathlib import Path

from conftest import perturb_trainable


def wrapped_save(base: Path, task: str, out: Path, strategy: str, seed: int, **options) -> Path:
    """``base`` built for ``task`` (its model config: a multi-label head), wrapped, moved off its
    initial values as training would, and saved with peftkit to ``out``."""
    import peftkit
    from peftkit.introspect import auto_class
    from peftkit.tasks import task_class

    model = peftkit.wrap(
        auto_class(task).from_pretrained(base, **task_class(task).model_config),
        strategy,
        task=task,
        **options,
    )
    perturb_trainable(model, scale=0.3, seed=seed)
    peftkit.save(model, out)
    return out


def reference(path: Path, texts: list, max_new_tokens: int = 32) -> list[dict]:
    """What `peftkit predict` gives for ``texts``."""
    from peftkit.checkpoint import read_config
    from peftkit.cli import _load_checkpoint
    from peftkit.cli import predict as cli_predict

    model, tokenizer, _ = _load_checkpoint(str(path), None)
    return cli_predict(model, tokenizer, read_config(path)["task"], texts, max_new_tokens=max_new_tokens)
