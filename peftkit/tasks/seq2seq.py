"""Sequence-to-sequence generation (summarization, translation, text-to-text) for encoder-decoder
models (T5, BART, any ``AutoModelForSeq2SeqLM``).

Columns: "prompt" (the source text, read by the encoder) and "response" (the target text, the
decoder learns to write it); ``load_data``'s ``prompt_column`` / ``response_column`` name them in
the user's files. The target is tokenized with ``text_target=`` (the tokenizer's target side,
which matters for translation tokenizers) and becomes "labels", padded with -100; the model
builds its decoder inputs from the labels itself.

Evaluation runs the loss (``eval_loss``, mean over target tokens) and greedy (or beam) generation
on every example, scored locally by peftkit's ``rouge_em`` metric: ``rouge1``, ``rouge2``,
``rougeL`` (F1, the main metric) and ``exact_match``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import (
    IGNORE_INDEX,
    Task,
    cached_metric,
    check_gathered,
    model_inputs,
    pad_token_id,
    prompt_samples,
    tokenized,
)


class Seq2SeqTask(Task):
    """Columns "prompt" → "response"; ``max_new_tokens`` and ``num_beams`` set evaluation's generation."""

    name = "seq2seq-lm"
    summary = "text-to-text with an encoder-decoder LM (T5, BART): summarization, translation"
    main_metric = "rougeL"
    greater_is_better = True
    auto_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    class_suffixes = ("ForSeq2SeqLM",)
    generative = True
    columns = {"prompt": "prompt", "response": "response"}
    bench_metrics = ("rougeL", "rouge1", "rouge2", "exact_match", "eval_loss")
    # transformers 5 has no text-to-text pipeline (pipeline_tag None): a merged export is served with
    # AutoModelForSeq2SeqLM.generate. ONNX: encoder and decoder are two graphs and a generation loop.
    onnx_refusal = ("(encoder-decoder) needs a decoder loop that optimum's exporter writes (pip install "
                    "optimum[onnxruntime]); use --format merged instead")

    def __init__(self, max_new_tokens: int = 64, num_beams: int = 1):
        if max_new_tokens < 1 or num_beams < 1:
            raise ValueError(
                f"max_new_tokens ({max_new_tokens}) and num_beams ({num_beams}) must be at least 1."
            )
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.tokenizer = None  # set by prepare: compute_metrics decodes with it

    @classmethod
    def claims(cls, model_class_name: str, config=None) -> bool:
        return super().claims(model_class_name, config) or (
            model_class_name.endswith("ForConditionalGeneration")
            and bool(getattr(config, "is_encoder_decoder", False))
        )

    # ------------------------------------------------------------------ Task interface

    def prepare(self, data, tokenizer, max_length: int = 128):
        self.tokenizer = tokenizer

        def encode(batch):
            enc = tokenizer(batch["prompt"], truncation=True, max_length=max_length)
            targets = tokenizer(text_target=batch["response"], truncation=True, max_length=max_length)
            return {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": targets["input_ids"],
            }

        return tokenized(data, encode, "peftkit: tokenizing")

    def eval_step(self, model, batch):
        inputs = model_inputs(model, batch)
        labels = batch["labels"].to(inputs["input_ids"].device)
        logits = model(**inputs, labels=labels).logits.float()
        losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        generated = self._generate_ids(
            model, inputs["input_ids"], inputs["attention_mask"], pad_token_id(self._tokenizer())
        )
        return {
            "loss_sum": losses.sum(1),
            "n_tokens": (labels != IGNORE_INDEX).sum(1),
            "generated": generated,
            "labels": labels,
        }

    def compute_metrics(self, gathered):
        check_gathered(gathered, "loss_sum", "n_tokens", "generated", "labels")
        tokens = float(np.sum(gathered["n_tokens"]))
        if tokens == 0:
            raise ValueError("No target tokens in the evaluation data.")
        predictions, references = self.decode(gathered["generated"]), self.decode(gathered["labels"])
        scores = cached_metric("rouge_em").compute(predictions=predictions, references=references)
        return {
            "eval_loss": float(np.sum(gathered["loss_sum"])) / tokens,
            **{k: float(v) for k, v in scores.items()},
        }

    # ------------------------------------------------------------------ generation

    def _tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError(
                "Seq2SeqTask needs the tokenizer: call prepare(data, tokenizer) before evaluating."
            )
        return self.tokenizer

    def decode(self, rows) -> list[str]:
        """Texts from rows of token ids padded with -100 (special tokens dropped)."""
        tokenizer = self._tokenizer()
        return [
            tokenizer.decode([int(t) for t in row if t >= 0], skip_special_tokens=True).strip()
            for row in rows
        ]

    def _generate_ids(self, model, input_ids, attention_mask, pad: int, adapter_names=None) -> torch.Tensor:
        """Generated decoder ids, the decoder's start token dropped and padding as -100."""
        model = getattr(model, "module", model)  # DDP-wrapped
        extra = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=False,
            pad_token_id=pad,
            **extra,
        )
        out = out[:, 1:]  # the decoder start token (generation always begins with it)
        return out.masked_fill(out == pad, IGNORE_INDEX)

    @torch.no_grad()
    def generate(
        self,
        model,
        tokenizer,
        prompts: list[str],
        max_new_tokens: int | None = None,
        batch_size: int = 16,
        adapter_names: list[str] | None = None,
    ) -> list[str]:
        """The model's output text for each source text in ``prompts`` (greedy unless ``num_beams`` > 1).

        ``adapter_names`` (one per prompt) selects each prompt's LoRA adapter in a PEFT model that
        holds several (PEFT's mixed-batch inference)."""
        self.tokenizer = tokenizer
        if max_new_tokens is not None and max_new_tokens != self.max_new_tokens:
            return type(self)(max_new_tokens, self.num_beams).generate(
                model, tokenizer, prompts, None, batch_size, adapter_names
            )
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        texts: list[str] = []
        try:
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, return_tensors="pt").to(
                    device
                )
                names = None if adapter_names is None else adapter_names[i : i + batch_size]
                texts += self.decode(
                    self._generate_ids(
                        model, enc["input_ids"], enc["attention_mask"], pad_token_id(tokenizer), names
                    )
                )
        finally:
            model.train(was_training)
        return texts

    def log_samples(self, model, tokenizer, split, n):
        """The model's outputs for the first ``n`` source texts of ``split``, with their references."""
        return prompt_samples(self, model, tokenizer, split, n)

    # ------------------------------------------------------------------ prediction

    def predict(
        self, model, tokenizer, inputs, *, labels=None, adapter_names=None, batch_size=16, max_new_tokens=None
    ):
        """``{"generated"}`` per source text."""
        texts = self.generate(model, tokenizer, list(inputs), max_new_tokens, batch_size, adapter_names)
        return [{"generated": g} for g in texts]

    def input_columns(self) -> tuple[str, ...]:
        return ("text",)

    def present(self, value, prediction):
        return {"text": value, "generated": prediction["generated"]}

    # ------------------------------------------------------------------ export

    def logits_inputs(self, inputs):
        """One decoder pass with the source ids as decoder inputs (any fixed one compares two models)."""
        return {**inputs, "use_cache": False, "decoder_input_ids": inputs["input_ids"]}
