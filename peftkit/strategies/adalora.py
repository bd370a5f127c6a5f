"""AdaLoRA (Zhang et al. 2023): LoRA in SVD form whose ranks are pruned to a budget while it trains (PEFT).

PEFT's AdaLoRA needs the run's length up front (``total_step``) and a call to
``update_and_allocate`` after every optimizer step, with the gradients still there. Wrapping
cannot know the length, so `AdaLoRA.on_train_start` fills it in (with the warm-up and final phases
as fractions of it) and `AdaLoRA.on_step` makes the call; the training loop calls both hooks.
PEFT records the final ranks in the config's ``rank_pattern``, and saves and reloads the pruned
matrices by it.
"""

from __future__ import annotations

from peft import AdaLoraConfig
from torch import nn

from ._peft import apply_peft
from .base import Strategy
from .lora import lora_family_settings
from .options import Integer, Modules, Number


def _config(model: nn.Module) -> AdaLoraConfig:
    return model.peft_config[model.active_adapter]


class AdaLoRA(Strategy):
    name = "adalora"
    summary = "LoRA whose per-layer ranks are pruned to a budget during training (PEFT)"
    options = {
        "init_r": 12,  # every layer's rank at the start
        "target_r": 8,  # the average rank the budget prunes to
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": "auto",
        "tinit_ratio": 0.1,  # fraction of the run's steps before pruning starts
        "tfinal_ratio": 0.2,  # fraction at the end trained with the final ranks fixed
        "delta_t": 1,  # optimizer steps between two budget allocations
        "beta1": 0.85,
        "beta2": 0.85,
        "orth_reg_weight": 0.5,
        "modules_to_save": "auto",
    }
    option_rules = {
        "init_r": Integer(1),
        "target_r": Integer(1),
        "alpha": Number(0, low_closed=False),
        "dropout": Number(0, 1),
        "target_modules": Modules(("auto", "all-linear"), pattern=True),
        "tinit_ratio": Number(0, 1),
        "tfinal_ratio": Number(0, 1),
        "delta_t": Integer(1),
        "beta1": Number(0, 1),
        "beta2": Number(0, 1),
        "orth_reg_weight": Number(0),
        "modules_to_save": Modules(optional=True),
    }
    checkpoint_format = "peft"
    plan_rank = 15
    mergeable = True
    default_lr = 1e-3

    def check_options(self, o) -> None:
        if o["target_r"] > o["init_r"]:
            raise ValueError(
                f"adalora option target_r={o['target_r']} is above init_r={o['init_r']}: the budget only prunes. "
                f"Pick target_r <= init_r (e.g. target_r={o['init_r'] * 2 // 3 or 1})."
            )
        if o["tinit_ratio"] + o["tfinal_ratio"] >= 1:
            raise ValueError(
                f"adalora options tinit_ratio={o['tinit_ratio']} and tfinal_ratio={o['tfinal_ratio']} leave no steps "
                "to prune ranks in: keep their sum below 1 (e.g. 0.1 and 0.2)."
            )

    def apply(self, model: nn.Module, task: str, **o) -> nn.Module:
        config = AdaLoraConfig(
            init_r=o["init_r"],
            target_r=o["target_r"],
            deltaT=o["delta_t"],
            beta1=o["beta1"],
            beta2=o["beta2"],
            orth_reg_weight=o["orth_reg_weight"],
            total_step=1,  # a placeholder: on_train_start sets the run's length
            **lora_family_settings(model, task, o),
        )
        return apply_peft(model, config, "AdaLoRA")

    def on_train_start(self, model: nn.Module, total_steps: int) -> None:
        """PEFT's schedule from the run's length: ``total_step``, ``tinit`` and ``tfinal`` in optimizer steps."""
        from . import wrap_info

        o = wrap_info(model).options
        # Rounded down, and the ratios sum below 1 (check_options): steps to prune in remain.
        tinit, tfinal = int(o["tinit_ratio"] * total_steps), int(o["tfinal_ratio"] * total_steps)
        config = _config(model)
        config.tinit, config.tfinal = tinit, tfinal
        model.base_model.rankallocator.set_total_step(total_steps)

    def on_weights_restored(self, model: nn.Module) -> None:
        """The best evaluation's weights came back, pruned by the ranks of that step: record those ranks
        (the entries of E still non-zero), not the later ones, so that saving keeps what the weights use."""
        config = _config(model)
        if config.rank_pattern is None:
            return
        adapter = model.active_adapter
        config.rank_pattern = {
            name: (p != 0).view(-1).tolist()
            for name, p in model.base_model.model.named_parameters()
            if f"lora_E.{adapter}" in name
        }

    def on_load(self, model: nn.Module) -> None:
        """PEFT 0.21 loads AdaLoRA for inference without the adapter name its forward reads for the
        orthogonality loss, so a forward with labels fails; name the loaded adapter."""
        tuner = model.base_model
        if "trainable_adapter_name" not in vars(tuner):
            tuner.trainable_adapter_name = model.active_adapter

    def on_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """PEFT's budget allocation: scores the ranks by their gradients and masks the least important."""
        model.base_model.update_and_allocate(step)
