"""Seq2seq (encoder-decoder) LMs: prompt → response.

Placeholder holding what the model side needs (its Auto class, PEFT task type, class names) so
``seq2seq-lm`` is one registered task; training, metrics and generation are not written here yet
(issue 17's Seq2SeqTask replaces this class body)."""

from __future__ import annotations

from .base import Task


class Seq2SeqTask(Task):
    """Columns "prompt" and "response" for AutoModelForSeq2SeqLM models (T5, BART, ...)."""

    name = "seq2seq-lm"
    summary = "text-to-text with an encoder-decoder LM (T5, BART)"
    main_metric = "eval_loss"
    greater_is_better = False
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    class_suffixes = ("ForSeq2SeqLM",)
    generative = True
    columns = {"prompt": "prompt", "response": "response"}

    @classmethod
    def claims(cls, model_class_name: str, config=None) -> bool:
        return super().claims(model_class_name, config) or (
            model_class_name.endswith("ForConditionalGeneration") and bool(getattr(config, "is_encoder_decoder", False)))
