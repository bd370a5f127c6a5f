"""Causal-LM supervised fine-tuning: prompt → response, or whole conversations (a "messages"
column: chat, Alpaca and ShareGPT files, see `peftkit.tasks.sft_formats`), with the loss on the
assistant's turns only.

Text layout: with a chat template (``tokenizer.chat_template``), the prompt is the user message
and the response the assistant message, and every token outside the assistant's content is
masked (-100); the template's end-of-turn marker after the content is trained, so the model
learns to stop. Without one (peftkit's plain fallback layout): ``prompt + "\\n"`` (masked) then
``response + eos`` (trained), turn after turn in a conversation. Generation builds its prompt
the same way, so training and inference agree.

Metrics: ``eval_loss`` (mean over response tokens) and ``perplexity``; ``exact_match`` scores
greedy answers against the responses after stripping and casefolding.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .base import IGNORE_INDEX, Task, align_logits, check_gathered, model_inputs, pad_token_id, prompt_samples
from .sft_formats import conversation_format, detect_format, to_messages


def normalize_answer(text: str) -> str:
    """Casefolded, with surrounding whitespace stripped and inner whitespace collapsed."""
    return " ".join(text.strip().casefold().split())


def exact_match_score(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after `normalize_answer`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("No examples to score.")
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True)) / len(references)


def _label_spans(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(input_ids of ``text``, labels: the token where it starts inside a span, else -100)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        inside = [any(a <= begin < b for a, b in spans) for begin, _ in enc["offset_mapping"]]
        return ids, [t if keep else IGNORE_INDEX for t, keep in zip(ids, inside, strict=True)]
    ids, labels, at = [], [], 0  # slow tokenizers: tokenize the pieces between span edges
    for a, b in [*spans, (len(text), len(text))]:
        for piece, trained in ((text[at:a], False), (text[a:b], True)):
            piece_ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"]) if piece else []
            ids, labels = ids + piece_ids, labels + (piece_ids if trained else [IGNORE_INDEX] * len(piece_ids))
        at = b
    return ids, labels


class CausalLMTask(Task):
    """Columns "prompt" and "response", or "messages" → input_ids/attention_mask + labels (-100 but
    on the answers).

    ``use_chat_template``: None (default) uses the tokenizer's chat template when it has one."""

    name = "causal-lm"
    summary = "prompt -> response with a decoder-only LM (loss on the response)"
    next_token_labels = True
    main_metric = "eval_loss"
    greater_is_better = False
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    class_suffixes = ("ForCausalLM", "LMHeadModel")
    generative = True
    columns = {"prompt": "prompt", "response": "response"}
    bench_metrics = ("exact_match",)
    pipeline_tag = "text-generation"
    onnx_output = "logits (batch, sequence, vocabulary): next-token logits at every position (no KV cache)"
    vllm_lora = True

    def __init__(self, use_chat_template: bool | None = None):
        self.use_chat_template = use_chat_template

    @classmethod
    def claims(cls, model_class_name: str, config=None) -> bool:
        return super().claims(model_class_name, config) or (
            model_class_name.endswith("ForConditionalGeneration") and not getattr(config, "is_encoder_decoder", False))

    # ------------------------------------------------------------------ data formats

    def needs_columns(self, ds, columns):
        """Prompt/response columns are needed unless the file is in a conversation format."""
        return detect_format(ds.column_names, columns["prompt"], columns["response"]) == "prompt/response"

    def canonicalize(self, raw, origin, columns, options):
        """Prompt/response files as they are; chat, Alpaca and ShareGPT files as one "messages" column."""
        name = conversation_format(raw, origin, columns["prompt"], columns["response"])
        if name is None:
            return super().canonicalize(raw, origin, columns, options)
        return {split: to_messages(ds, name, origin[split]) for split, ds in raw.items()}

    # ------------------------------------------------------------------ text layout

    def uses_chat_template(self, tokenizer) -> bool:
        has = bool(getattr(tokenizer, "chat_template", None))
        if self.use_chat_template and not has:
            raise ValueError(f"use_chat_template=True but {type(tokenizer).__name__} has no chat_template.")
        return has if self.use_chat_template is None else self.use_chat_template

    @staticmethod
    def _chat_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """(the conversation as the chat template writes it, the [start, end) character spans to
        train: each assistant turn's content and the end-of-turn marker the template puts after it)."""

        def render(turns, prompt=False):
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)

        full = render(messages)
        spans, cursor = [], 0
        for i, message in enumerate(messages):
            found = full.find(message["content"], cursor) if message["content"] else cursor
            if found < 0:
                raise ValueError(
                    f"Cannot find a {message['role']} turn's text in the chat template's output; pass "
                    "use_chat_template=False to get_task('causal-lm', ...) for peftkit's plain layout."
                )
            cursor = found + len(message["content"])
            if message["role"] != "assistant":
                continue
            head, upto = (render(messages[:i], True), render(messages[: i + 1])) if i else ("", None)
            if upto is not None and upto.startswith(head) and full.startswith(upto) and len(head) <= found:
                spans.append((len(head), len(upto)))  # the template renders turn by turn
            else:  # the content itself (to the end for the last turn)
                spans.append((found, len(full) if i == len(messages) - 1 else cursor))
        return full, spans

    def _plain_prompt_ids(self, tokenizer, prompt: str) -> list[int]:
        ids = list(tokenizer(prompt + "\n")["input_ids"])
        eos = tokenizer.eos_token_id
        if ids and eos is not None and ids[-1] == eos and eos != tokenizer.bos_token_id:
            ids = ids[:-1]  # tokenizers that append eos: the prompt must not end the text
        return ids

    def prompt_ids(self, tokenizer, prompt: str) -> list[int]:
        """The token ids a generation for ``prompt`` starts from (as laid out in training)."""
        if self.uses_chat_template(tokenizer):
            head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            return list(tokenizer(head, add_special_tokens=False)["input_ids"])
        return self._plain_prompt_ids(tokenizer, prompt)

    def encode(self, tokenizer, prompt: str, response: str, max_length: int | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for one example; labels are -100 up to the response."""
        return self.encode_messages(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], max_length)

    def encode_messages(self, tokenizer, messages: list[dict[str, str]], max_length: int | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for a conversation; labels are -100 everywhere but the assistant turns.

        Without a chat template (peftkit's plain layout): each other turn's text and a newline
        (masked), each assistant turn's text and eos (trained); one user turn then one assistant
        turn is exactly the prompt/response layout."""
        if self.uses_chat_template(tokenizer):
            full, spans = self._chat_spans(tokenizer, messages)
            ids, labels = _label_spans(tokenizer, full, spans)
        else:
            ids, labels = [], []
            for message in messages:
                if message["role"] == "assistant":
                    piece = list(tokenizer(message["content"], add_special_tokens=False)["input_ids"])
                    piece += [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
                    ids, labels = ids + piece, labels + piece
                else:
                    text = message["content"]
                    piece = list(tokenizer(text + "\n", add_special_tokens=False)["input_ids"]) if ids else self._plain_prompt_ids(tokenizer, text)
                    ids, labels = ids + piece, labels + [IGNORE_INDEX] * len(piece)
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        return ids, labels

    def stop_ids(self, tokenizer) -> list[int]:
        """Token ids that end an answer: eos, and the chat template's end-of-turn special token."""
        ids = {tokenizer.eos_token_id} - {None}
        if self.uses_chat_template(tokenizer) and getattr(tokenizer, "is_fast", False):
            full, spans = self._chat_spans(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
            start = spans[0][0]
            enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
            special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
            after = [t for t, (begin, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if begin >= start + 2]
            if after and after[0] in special:
                ids.add(after[0])
        return sorted(ids)

    # ------------------------------------------------------------------ Task interface

    def prepare(self, data, tokenizer, max_length: int = 128):
        from datasets import DatasetDict

        def encode(batch):
            if "messages" in batch:  # chat, Alpaca and ShareGPT data (`sft_formats`)
                rows = [self.encode_messages(tokenizer, m, max_length) for m in batch["messages"]]
            else:
                rows = [self.encode(tokenizer, p, r, max_length) for p, r in zip(batch["prompt"], batch["response"], strict=True)]
            return {
                "input_ids": [ids for ids, _ in rows],
                "attention_mask": [[1] * len(ids) for ids, _ in rows],
                "labels": [labels for _, labels in rows],
            }

        out = {}
        for split, ds in data.items():
            prepared = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="peftkit: tokenizing")
            kept = prepared.filter(lambda labels: any(t != IGNORE_INDEX for t in labels), input_columns="labels")
            if len(kept) == 0 and len(prepared):
                raise ValueError(f"{split}: every example's prompt fills max_length={max_length}; raise max_length.")
            if len(kept) < len(prepared):
                warnings.warn(
                    f"{split}: {len(prepared) - len(kept)} of {len(prepared)} examples have no response token left "
                    f"within max_length={max_length} (the prompt fills it); they are dropped. Raise max_length to keep them.",
                    stacklevel=2,
                )
            out[split] = kept
        return DatasetDict(out)

    def eval_step(self, model, batch):
        labels = batch["labels"]
        logits = align_logits(model(**model_inputs(model, batch)).logits, labels).float()
        labels = labels.to(logits.device)
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        losses = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
        return {"loss_sum": losses.sum(1), "n_tokens": (shift_labels != IGNORE_INDEX).sum(1)}

    def compute_metrics(self, gathered):
        check_gathered(gathered, "loss_sum", "n_tokens")
        tokens = float(np.sum(gathered["n_tokens"]))
        if tokens == 0:
            raise ValueError("No response tokens in the evaluation data.")
        loss = float(np.sum(gathered["loss_sum"])) / tokens
        return {"eval_loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf")}

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 16,
                 adapter_names: list[str] | None = None) -> list[str]:
        """Greedy answers to ``prompts`` (laid out as in training), decoded without special tokens.

        ``adapter_names`` (one per prompt) selects each prompt's LoRA adapter in a PEFT model that
        holds several (PEFT's mixed-batch inference)."""
        from transformers import GenerationConfig

        model = getattr(model, "module", model)  # DDP-wrapped
        device = next(model.parameters()).device
        pad, stops = pad_token_id(tokenizer), self.stop_ids(tokenizer)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=stops or None)
        was_training = model.training
        model.eval()
        answers: list[str] = []
        try:
            for i in range(0, len(prompts), batch_size):
                ids = [self.prompt_ids(tokenizer, p) for p in prompts[i : i + batch_size]]
                width = max(len(x) for x in ids)
                input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)  # left padding
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
                extra = {} if adapter_names is None else {"adapter_names": list(adapter_names[i : i + batch_size])}
                out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config, **extra)
                for row in out[:, width:].tolist():
                    cut = next((j for j, t in enumerate(row) if t in stops), len(row))
                    answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        finally:
            model.train(was_training)
        return answers

    def log_samples(self, model, tokenizer, split, n):
        """Greedy answers to the first ``n`` prompts of ``split``, with their references."""
        return prompt_samples(self, model, tokenizer, split, n)

    def exact_match(self, model, tokenizer, dataset, max_new_tokens: int = 32, batch_size: int = 16, max_samples: int | None = None) -> float:
        """Share of ``dataset`` rows whose greedy answer equals "response" (stripped, casefolded)."""
        if max_samples is not None:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        answers = self.generate(model, tokenizer, list(dataset["prompt"]), max_new_tokens=max_new_tokens, batch_size=batch_size)
        return exact_match_score(answers, list(dataset["response"]))

    # ------------------------------------------------------------------ prediction and benchmark

    def predict(self, model, tokenizer, inputs, *, labels=None, adapter_names=None, batch_size=16, max_new_tokens=32):
        """``{"generated"}`` per prompt: greedy, laid out as in training."""
        generated = self.generate(model, tokenizer, list(inputs), max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  adapter_names=adapter_names)
        return [{"generated": g} for g in generated]

    def input_columns(self) -> tuple[str, ...]:
        return ("text",)

    def present(self, value, prediction):
        return {"text": value, "generated": prediction["generated"]}

    def bench_score(self, model, tokenizer, test, *, max_length, batch_size, device, max_new_tokens=32):
        """Exact match of greedy answers against the responses."""
        return {"exact_match": self.exact_match(model, tokenizer, test, max_new_tokens=max_new_tokens, batch_size=batch_size)}

    # ------------------------------------------------------------------ export

    def logits_inputs(self, inputs):
        """Full-sequence logits, no KV cache (a traced graph has no cache inputs or outputs)."""
        return {**inputs, "use_cache": False}

    def pipeline_shows(self, output):
        """The text a text-generation pipeline generated (None when it gave nothing)."""
        return output[0].get("generated_text") if output else None
