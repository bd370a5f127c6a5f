"""LoRA (Hu et al. 2021) and its PEFT variants: DoRA, rsLoRA and PEFT's init schemes."""

from __future__ import annotations

import typing
from typing import Any

from peft import LoraConfig
from torch import nn

from ..targets import attention_targets
from ._peft import apply_peft, has_conv1d, heads_to_save, task_type
from .base import Strategy, wrap_info
from .options import Choice, Flag, Integer, Modules, Number

# PEFT init schemes that need more than a name (a config of their own, or a pass over data before
# training): peftkit cannot set them up from an option, a LoraConfig passed to wrap can.
NEEDS_CONFIG = {"eva": "eva_config", "corda": "corda_config", "loftq": "loftq_config"}


class InitRule(Choice):
    """True/False or one of PEFT's init_lora_weights names, read off LoraConfig so it follows PEFT
    ("pissa_niter_<n>" as PEFT spells it). The names in `NEEDS_CONFIG` pass here and are refused
    by `LoRA.check_options`, which says what to do instead."""

    def __init__(self):
        hint = typing.get_type_hints(LoraConfig)["init_lora_weights"]
        names = [n for arg in typing.get_args(hint) for n in typing.get_args(arg)]
        plain = [n for n in names if "[" not in n and n not in NEEDS_CONFIG]
        super().__init__([True, False, *plain], patterns=[r"pissa_niter_\d+"], shown=["'pissa_niter_<n>'"])

    def accepts(self, value) -> bool:
        return super().accepts(value) or (isinstance(value, str) and value in NEEDS_CONFIG)


def resolve_targets(model: nn.Module, target_modules) -> list[str] | str:
    """LoRA's targets as PEFT takes them: "auto" read off the model, a list of names, or a string passed
    as is ("all-linear" or a regular expression over full module names)."""
    targets = attention_targets(model) if target_modules == "auto" else target_modules
    return targets if isinstance(targets, str) else list(targets)


def lora_family_settings(model: nn.Module, task: str, o: dict[str, Any]) -> dict[str, Any]:
    """The LoraConfig fields LoRA and AdaLoRA set alike from their options."""
    targets = resolve_targets(model, o["target_modules"])
    return dict(
        task_type=task_type(task),
        lora_alpha=o["alpha"],
        lora_dropout=o["dropout"],
        target_modules=targets,
        modules_to_save=heads_to_save(model, o["modules_to_save"]),
        fan_in_fan_out=has_conv1d(model, targets),
    )


class LoRA(Strategy):
    name = "lora"
    summary = "low-rank updates on the attention projections (PEFT)"
    options = {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": "auto",  # or a list of names, "all-linear", a regex
        "use_dora": False,
        "use_rslora": False,
        "init": True,  # PEFT's init_lora_weights: True, "gaussian", "pissa", "olora", ...
        "bias": "none",
        "modules_to_save": "auto",
        "plus_ratio": 1,  # LoRA+ (Hayou et al. 2024): the B matrices train at plus_ratio x lr (e.g. 16)
    }
    option_rules = {
        "r": Integer(1),
        "alpha": Number(0, low_closed=False),
        "dropout": Number(0, 1),
        "target_modules": Modules(("auto", "all-linear"), pattern=True),
        "use_dora": Flag(),
        "use_rslora": Flag(),
        "init": InitRule(),
        "bias": Choice(["none", "all", "lora_only"]),
        "modules_to_save": Modules(optional=True),
        "plus_ratio": Number(1),
    }
    checkpoint_format = "peft"
    plan_rank = 10
    mergeable = True
    default_lr = 5e-4

    def check_options(self, o) -> None:
        if o["init"] in NEEDS_CONFIG:
            raise ValueError(
                f"lora option init={o['init']!r} needs PEFT's {NEEDS_CONFIG[o['init']]} (and for eva/corda a pass over "
                f"data), which a strategy option cannot give: pass peft.LoraConfig(init_lora_weights={o['init']!r}, "
                f"{NEEDS_CONFIG[o['init']]}=...) to peftkit.wrap instead, or pick init=True."
            )
        if o["init"] == "orthogonal" and o["r"] % 2:
            raise ValueError(f"lora option init='orthogonal' needs an even rank, got r={o['r']} (e.g. r={o['r'] + 1}).")

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        config = LoraConfig(
            r=o["r"],
            use_dora=o["use_dora"],
            use_rslora=o["use_rslora"],
            init_lora_weights=o["init"],
            bias=o["bias"],
            **lora_family_settings(model, task, o),
        )
        return apply_peft(model, config, "LoRA")

    def param_groups(self, model: nn.Module, groups: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
        """LoRA+: each group's ``lora_B`` parameters move to a group of their own ("<name>_lora_plus")
        at ``plus_ratio`` times the group's rate; the scheduler scales every group alike, so the ratio holds."""
        info = wrap_info(model)
        ratio = info.options.get("plus_ratio", 1) if info else 1
        if ratio == 1:
            return groups
        b_ids = {id(p) for n, p in model.named_parameters() if ".lora_B." in n}
        out = []
        for group in groups:
            b = [p for p in group["params"] if id(p) in b_ids]
            rest = [p for p in group["params"] if id(p) not in b_ids]
            if rest or not b:
                out.append({**group, "params": rest})
            if b:
                out.append({**group, "name": f"{group.get('name', 'group')}_lora_plus", "params": b,
                            "lr": group.get("lr", lr) * ratio})
        return out
