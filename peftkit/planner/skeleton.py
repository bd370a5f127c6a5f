"""The model on the meta device, quantized like `load_model` would, from its config alone."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any

import torch
from torch import nn

from ..introspect import auto_class, full_precision_modules, has_head
from .structure import _bnb_kind

# --------------------------------------------------------------------------- building the model

def _config_error(model: str, err: Exception) -> OSError:
    return OSError(
        f"peftkit plan could not read the config of {model!r}: {err}\n\nThe planner needs only the model's "
        "config.json. Offline (HF_HUB_OFFLINE=1) or without access to the hub, pass a local path instead: a "
        "directory holding config.json (one written by save_pretrained, or a downloaded snapshot), e.g. "
        "peftkit plan ./my-model --task classification."
    )


def load_config(model: Any, task: str, num_labels: int | None = None, **config_kwargs: Any):
    """The model's config from a hub id, a local directory, or a config / model object."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        config = copy.deepcopy(model)
    elif isinstance(model, nn.Module) and hasattr(model, "config"):
        config = copy.deepcopy(model.config)
    else:
        name = str(model)
        try:
            config = AutoConfig.from_pretrained(name, **config_kwargs)
        except (OSError, ValueError) as err:
            raise _config_error(name, err) from err
    if num_labels is not None and has_head(task):
        config.num_labels = num_labels
    return config


@contextlib.contextmanager
def _quiet():
    """Silence transformers', PEFT's and bitsandbytes' warnings while building skeletons (bitsandbytes logs
    about casts and uninitialised 4-bit state when a wrap's probe pass runs through a quantized skeleton)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bnb = logging.getLogger("bitsandbytes")
    bnb_level = bnb.level
    bnb.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        bnb.setLevel(bnb_level)


def build_skeleton(config, task: str, quantization: str | None = None) -> nn.Module:
    """The model for ``task`` on the meta device, quantized like `load_model` would (no weights).

    Quantization replaces Linear layers by bitsandbytes layers the way transformers does at load
    time, keeping the task head and output embeddings in full precision like `load_model`, and
    prepares the model for k-bit training (frozen base, input gradients) with the same helper.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(), _quiet():
        model = auto_class(task).from_config(config)
    with _quiet():
        model.tie_weights()  # not tied inside init_empty_weights; a loaded model shares these tensors
    if quantization:
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear

        from ..loading import prepare_for_kbit_training, quantization_config

        keep = full_precision_modules(model) + list(getattr(model, "_keep_in_fp32_modules", None) or [])
        with _quiet():
            model = replace_with_bnb_linear(model, modules_to_not_convert=keep,
                                            quantization_config=quantization_config(quantization, sorted(set(keep))))
        setattr(model, "is_loaded_in_4bit" if quantization == "4bit" else "is_loaded_in_8bit", True)
        _pack_meta_weights(model)
        prepare_for_kbit_training(model)
    return model.train()


def _pack_meta_weights(model: nn.Module) -> None:
    """Give meta bitsandbytes weights the storage they have once loaded, so counts match.

    A loaded 4-bit weight is a ``[(out*in + 1) // 2, 1]`` uint8 tensor (two values per byte),
    an 8-bit one an ``[out, in]`` int8 tensor; `count_parameters` reads them that way.
    """
    for module in model.modules():
        kind = _bnb_kind(module)
        if kind == "4bit":
            n = module.in_features * module.out_features
            module.weight.data = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device="meta")
        elif kind == "8bit":
            module.weight.data = torch.empty((module.out_features, module.in_features), dtype=torch.int8, device="meta")


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
               "num_decoder_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "embedding_size")
_FFN_KEYS = ("intermediate_size", "ffn_dim", "d_ff", "hidden_dim", "n_inner", "encoder_ffn_dim", "decoder_ffn_dim")
_HEAD_DIM = 16


def miniature_config(config):
    """The same architecture at toy size: 1 layer, head dim 16, kept head counts, small FFN.

    Used only to run `wrap`'s forward-time checks on real (random) weights of a few MB.
    """
    cfg = copy.deepcopy(config)
    values = cfg.to_dict()
    heads = next((values[k] for k in ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads")
                  if isinstance(values.get(k), int)), 4)
    hidden = heads * _HEAD_DIM
    for key in _LAYER_KEYS:
        if isinstance(values.get(key), int):
            setattr(cfg, key, 1)
    for key in _HIDDEN_KEYS:
        if isinstance(values.get(key), int):
            setattr(cfg, key, hidden)
    for key in _FFN_KEYS:
        if isinstance(values.get(key), int):
            setattr(cfg, key, 2 * hidden)
    for key in ("head_dim", "d_kv"):
        if isinstance(values.get(key), int):
            setattr(cfg, key, _HEAD_DIM)
    if isinstance(values.get("layer_types"), list):
        cfg.layer_types = values["layer_types"][:1]
    return cfg


def _probe_twin(config, task: str):
    """A factory for real miniature models, or None when the architecture cannot be shrunk."""
    try:
        twin = miniature_config(config)
        with _quiet():
            model = auto_class(task).from_config(twin).eval()
        token = next((t for t in (twin.eos_token_id, twin.bos_token_id, 1) if isinstance(t, int)), 1)
        ids = torch.full((1, 2), token, dtype=torch.long)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if task == "seq2seq-lm":
            kwargs["labels"] = ids
        with torch.no_grad(), _quiet():
            model(**kwargs)
    except Exception:  # noqa: BLE001 - any failure means: no miniature, skip forward-time checks
        return None

    def make():
        torch.manual_seed(0)
        with _quiet():
            return auto_class(task).from_config(twin).eval()

    return make
