"""IA3 (Liu et al. 2022): learned rescaling of keys, values and the feed-forward activation.

With ``target_modules="auto"`` the modules are PEFT's own defaults for the model type where PEFT has
them, else read off the model's structure (`peftkit.targets.ia3_targets`).
"""

from __future__ import annotations

from peft import IA3Config
from torch import nn

from ..targets import ia3_targets
from ._peft import apply_peft, has_conv1d, heads_to_save, task_type
from .base import Strategy
from .options import Modules


class IA3(Strategy):
    name = "ia3"
    summary = "learned scaling of keys, values and feed-forward activations (PEFT)"
    options = {"target_modules": "auto", "feedforward_modules": "auto", "modules_to_save": "auto"}
    option_rules = {
        "target_modules": Modules(),
        "feedforward_modules": Modules(optional=True),
        "modules_to_save": Modules(optional=True),
    }
    checkpoint_format = "peft"
    plan_rank = 40
    mergeable = True
    default_lr = 3e-3

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        auto = "auto" in (o["target_modules"], o["feedforward_modules"])
        found, found_ffn = ia3_targets(model) if auto else ([], [])
        ffn = found_ffn if o["feedforward_modules"] == "auto" else list(o["feedforward_modules"] or [])
        if o["target_modules"] == "auto":  # the attention part found, then the feed-forward modules chosen
            targets = [t for t in found if t not in found_ffn] + ffn
        else:
            targets = list(o["target_modules"])
        config = IA3Config(
            task_type=task_type(task),
            target_modules=targets,
            feedforward_modules=[f for f in ffn if f in targets],
            modules_to_save=heads_to_save(model, o["modules_to_save"]),
            fan_in_fan_out=has_conv1d(model, targets),
        )
        return apply_peft(model, config, "IA3")
