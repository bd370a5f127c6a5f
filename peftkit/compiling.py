"""The training forward, compiled with ``torch.compile`` where that works (``TrainConfig.compile``).

PEFT documents LoRA, DoRA and IA3 as compile-safe; other strategies may compile with graph breaks
(slower, still right) or not at all. Where compiling fails, the failing call is run again eagerly
and training goes on eagerly, after one warning: a run never dies because it asked for speed.
Backward graphs compile in the forward's wake (AOTAutograd), so they need nothing of their own.
Evaluation stays eager: it runs a few times per run, too rarely to repay compiling.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def _is_compile_error(error: BaseException) -> bool:
    """An error raised by Dynamo / Inductor (tracing, lowering, the C compiler), not by the model."""
    try:
        from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException
    except ImportError:  # pragma: no cover - torch without Dynamo
        return False
    return isinstance(error, (TorchDynamoException, BackendCompilerFailed))


class CompiledForward:
    """Calls ``model`` compiled (``enabled``) or eagerly; falls back to eager, with one warning, where
    compiling fails: at the first call for any error (the model ran before it was compiled, so the
    compilation is what broke), later for Dynamo / Inductor errors (a recompilation for new shapes)."""

    def __init__(self, model: nn.Module, enabled: bool):
        self.model = model
        self.compiled = torch.compile(model) if enabled else None
        self.calls = 0

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled model."""
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.model(*args, **kwargs)
        first, self.calls = self.calls == 0, self.calls + 1
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compilation failure falls back to eager
            if not (first or _is_compile_error(error)):
                raise
            self.compiled = None
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            warnings.warn(
                f"compile=True: torch.compile could not compile {type(self.model).__name__}'s forward "
                f"({type(error).__name__}: {reason}); training goes on eagerly (uncompiled). Drop compile "
                "(--compile) to silence this.",
                stacklevel=2,
            )
            return self.model(*args, **kwargs)
