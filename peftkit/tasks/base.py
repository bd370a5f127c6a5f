"""The Task interface, and helpers the tasks share.

A task is everything peftkit knows about one kind of problem; data loading, training, ``predict``
/ ``eval``, serving and the benchmark ask it and never branch on its name:

- model: ``auto_class`` (the transformers Auto class), ``peft_task_type``, ``class_suffixes``
  (model class names it recognises), ``has_head`` (a new, randomly initialised head), and
  ``model_config`` (extra config keys such as ``problem_type``);
- data: ``columns`` (canonical column → its default source name; the ``load_data`` kwarg,
  flag and YAML key are ``<canonical>_column``), ``optional_columns`` (canonical columns that
  may be absent: their default is None), ``options`` (further ``load_data`` kwargs with their
  defaults), ``canonicalize`` (raw splits → canonical columns), ``label_column`` /
  ``nested_labels`` / ``stratify`` (for the single-class check and the validation carve);
- training: ``prepare`` (tokenize), ``collator`` (pad), ``eval_step`` (tensors whose first dim is
  the batch; a second dim, if any, padded with -100 across processes by the trainer) and
  ``compute_metrics``; ``main_metric`` / ``greater_is_better`` / ``chance_loss``;
- prediction: ``parse_input`` (a str or dict from the CLI / HTTP → one input), ``predict``
  (inputs → one dict each), ``present`` (that dict for ``peftkit predict``'s output);
- benchmark: ``bench_metrics`` (the metric names a suite may pick, first = default) and
  ``bench_score`` (test metrics of a trained model);
- export (`peftkit.export`): ``logits_inputs`` (the forward pass whose logits an export is
  compared on), ``pipeline_tag`` / ``pipeline_options`` / ``pipeline_shows`` (the transformers
  pipeline that serves a merged export, and what it shows), ``onnx_refusal`` / ``onnx_output``
  (whether a logits-only ONNX graph serves the task, and what its output holds),
  ``export_accuracy`` (``export --eval`` measures argmax accuracy) and ``vllm_lora`` (vLLM and
  TGI serve its LoRA adapters).

Tasks register themselves: a subclass with a ``name`` enters `REGISTRY` when its module is
imported (`peftkit.tasks` imports every module in its folder), so adding a task is one file.
``peftkit --help`` and the bench suite parser read ``name``, ``summary``, ``columns``,
``optional_columns``, ``options``, ``option_help`` and ``bench_metrics`` from the source without
importing torch (`peftkit.static.task_catalog`): keep them literals in the class body.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

IGNORE_INDEX = -100

# name -> Task class, in registration order (peftkit.tasks imports the built-in ones).
REGISTRY: dict[str, type[Task]] = {}


class Task:
    """Base class: subclasses set ``name`` (which registers them) and implement the steps."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    main_metric: ClassVar[str] = ""
    greater_is_better: ClassVar[bool] = True
    labels_are_classes: ClassVar[bool] = False  # "labels" hold class ids (not generated tokens)

    # --- model
    auto_class: ClassVar[str] = ""  # e.g. "AutoModelForSequenceClassification"
    peft_task_type: ClassVar[str] = ""  # e.g. "SEQ_CLS"
    class_suffixes: ClassVar[tuple[str, ...]] = ()  # model class names ending so are this task's
    has_head: ClassVar[bool] = False  # a new classification head sized by the label names
    model_config: ClassVar[dict[str, Any]] = {}  # config keys set on the model it builds (problem_type)
    pre_split_words: ClassVar[bool] = False  # the tokenizer gets lists of words (add_prefix_space for BPE)

    # --- data
    columns: ClassVar[dict[str, str]] = {}  # canonical column -> default source column name
    optional_columns: ClassVar[tuple[str, ...]] = ()  # canonical columns that may be left out (default None)
    options: ClassVar[dict[str, Any]] = {}  # other load_data keyword options -> default
    option_help: ClassVar[dict[str, str]] = {}  # load_data kwarg -> its --help text (default: "the column holding ...")
    label_column: ClassVar[str | None] = None  # canonical column of class ids (ClassLabel), if any
    nested_labels: ClassVar[bool] = False  # label_column holds a list of ids per row
    stratify: ClassVar[bool] = False  # carve validation stratified by label_column
    reads_conll: ClassVar[bool] = False  # .txt / .conll files (tagged words) are this task's data

    # --- prediction
    generative: ClassVar[bool] = False  # predict generates text (served as completions, one forward per request)

    # --- benchmark
    bench_metrics: ClassVar[tuple[str, ...]] = ()  # metrics a suite may name; the first is the default

    # --- export (peftkit export)
    pipeline_tag: ClassVar[str | None] = None  # transformers pipeline serving a merged export (None: none)
    pipeline_options: ClassVar[dict[str, Any]] = {}  # what that pipeline's call needs to read the outputs
    onnx_refusal: ClassVar[str | None] = None  # why a logits-only ONNX graph cannot serve it, and what to do
    onnx_output: ClassVar[str] = "logits"  # what the ONNX graph's 'logits' output holds, for its users
    export_accuracy: ClassVar[bool] = False  # export --eval scores argmax(logits) against one label a text
    vllm_lora: ClassVar[bool] = False  # vLLM / TGI serve its LoRA adapters (decoder-only generation)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register(cls)

    # ------------------------------------------------------------------ model

    @classmethod
    def claims(cls, model_class_name: str, config=None) -> bool:
        """Whether a model of this class (and config) was built for this task."""
        return model_class_name.endswith(cls.class_suffixes) if cls.class_suffixes else False

    # ------------------------------------------------------------------ data

    @classmethod
    def column_options(cls) -> dict[str, str | None]:
        """{load_data kwarg: default} for the task's columns: ``text_column="text"`` ..."""
        return {f"{canon}_column": (None if canon in cls.optional_columns else default) for canon, default in cls.columns.items()}

    def canonicalize(self, raw: dict[str, Any], origin: dict[str, str], columns: dict[str, str | None],
                     options: dict[str, Any]) -> dict[str, Any]:
        """{split: Dataset holding only the canonical columns} from raw splits (``origin`` names
        each split for messages; ``columns``: canonical → the user's column, None when an optional
        one is not used; ``options``: the task's other load options). Raise DataError on bad input.

        Default: every column holds text (string); rows with an empty text are dropped."""
        from datasets import Features, Value

        from ..data import canonical_columns, check_text, drop_blank_rows

        used = {canon: column for canon, column in columns.items() if column is not None}
        for split, ds in raw.items():
            for canon, column in used.items():
                check_text(ds, column, canon, f"{canon}_column", origin[split])
        features = Features({canon: Value("string") for canon in used})
        out = {s: canonical_columns(ds, used, features, None, None, False) for s, ds in raw.items()}
        return {s: drop_blank_rows(ds, used, origin[s]) for s, ds in out.items()}

    def needs_columns(self, ds, columns: dict[str, str | None]) -> bool:
        """Whether a raw split must hold ``columns`` (False where the task reads another layout
        of data from it in ``canonicalize``, as causal-lm reads chat / Alpaca / ShareGPT files)."""
        return True

    def drop_unusable(self, raw: dict[str, Any], origin: dict[str, str], columns: dict[str, str | None]) -> None:
        """Drop raw splits the task cannot use (e.g. hub test splits labelled -1), in place."""
    next_token_labels: ClassVar[bool] = False  # the logits at position i predict label i+1 (causal LM)

    def chance_loss(self, prepared) -> float | None:
        """The loss of always predicting a prepared training split's label frequencies (their
        entropy), for the warning that a run learned nothing; None where that means nothing."""
        if not self.labels_are_classes or "labels" not in prepared.column_names:
            return None
        from ..runreport import chance_loss

        return chance_loss(prepared["labels"])

    def log_samples(self, model, tokenizer, split, n: int) -> list[dict[str, Any]] | None:
        """A few of the model's outputs on the first ``n`` rows of ``split`` (a canonical validation
        split), shown in the training log after each evaluation; None (the default): the task shows
        none. The trainer calls it on the main process, in eval mode, without gradients."""
        return None

    # ------------------------------------------------------------------ training

    def prepare(self, data, tokenizer, max_length: int = 128):
        """Tokenized splits holding only model inputs and "labels" (unpadded)."""
        raise NotImplementedError

    def collator(self, tokenizer):
        """A callable padding a list of prepared examples into a dict of tensors."""
        return PadCollator(pad_token_id(tokenizer))

    def eval_step(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors to gather for one batch (first dim = batch)."""
        raise NotImplementedError

    def compute_metrics(self, gathered: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics from the gathered outputs of every ``eval_step``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ prediction

    def input_columns(self) -> tuple[str, ...]:
        """Canonical columns one prediction input is made of (the first is the required one)."""
        return tuple(c for c in self.columns if c != self.label_column)[:1]

    def parse_input(self, value: Any) -> Any:
        """One prediction input from a string or a dict of input columns (CLI files, HTTP bodies).
        Default: the text of the first input column. Raise ValueError on what the task cannot use."""
        key = self.input_columns()[0]
        if isinstance(value, dict):
            if key not in value:
                raise ValueError(f"a {self.name} input needs a {key!r} field; got {sorted(value)}")
            value = value[key]
        if not isinstance(value, str):
            raise ValueError(f"a {self.name} input must be a string; got {type(value).__name__}")
        return value

    def input_size(self, value: Any) -> int:
        """Characters in one parsed input (for the server's size limit)."""
        return sum(len(v) for v in value.values() if isinstance(v, str)) if isinstance(value, dict) else len(str(value))

    def check_input(self, value: Any) -> str | None:
        """Why a parsed input cannot be predicted on (None when it can)."""
        return None

    def predict(self, model, tokenizer, inputs: Sequence[Any], *, labels: Sequence[Sequence[str] | None] | None = None,
                adapter_names: Sequence[str] | None = None, batch_size: int = 32, max_new_tokens: int = 32) -> list[dict[str, Any]]:
        """One prediction dict per parsed input; ``labels[i]`` names input i's classes (default:
        the model config's id2label); ``adapter_names`` (one per input) picks each input's
        adapter in a PEFT model that holds several."""
        raise NotImplementedError(f"peftkit cannot predict for task {self.name!r}.")

    def present(self, value: Any, prediction: dict[str, Any]) -> dict[str, Any]:
        """The row ``peftkit predict`` prints for one input and its prediction."""
        shown = value if isinstance(value, dict) else {self.input_columns()[0]: value}
        return {**shown, **prediction}

    # ------------------------------------------------------------------ export

    def logits_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of the plain forward pass whose ``.logits`` an export is checked on
        (and traced to ONNX), from tokenized ``inputs`` (input_ids, attention_mask, ...).
        Default: the inputs as given."""
        return inputs

    def pipeline_shows(self, output: Any) -> list[str] | str | None:
        """What the ``pipeline_tag`` pipeline's output for one text shows: the label names it gave, or
        (generative tasks) the generated text. Only called where ``pipeline_tag`` is set."""
        raise NotImplementedError(
            f"{type(self).__name__} sets pipeline_tag but does not read its output: define pipeline_shows."
        )

    # ------------------------------------------------------------------ benchmark

    def bench_score(self, model, tokenizer, test, *, max_length: int, batch_size: int, device: str,
                    max_new_tokens: int = 32) -> dict[str, float]:
        """Test metrics of a trained model on a canonical split (the benchmark's score): by default
        ``evaluate`` over the prepared split, batched by length."""
        from accelerate import Accelerator
        from datasets import DatasetDict
        from torch.utils.data import DataLoader

        from ..training import evaluate

        prepared = self.prepare(DatasetDict(test=test), tokenizer, max_length=max_length)["test"]
        lengths = [len(x) for x in prepared["input_ids"]]
        prepared = prepared.select(np.argsort(lengths, kind="stable")[::-1].tolist())  # less padding
        loader = DataLoader(prepared, batch_size=batch_size, collate_fn=self.collator(tokenizer))
        return evaluate(model, loader, self, Accelerator(cpu=device == "cpu"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, main_metric={self.main_metric!r})"


def register(cls: type[Task]) -> type[Task]:
    """Add a Task class to `REGISTRY` under its ``name`` (a later class of the same name replaces it)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name: set the class attribute name = 'my-task'.")
    REGISTRY[cls.name] = cls
    return cls


def pad_token_id(tokenizer) -> int:
    """The id to pad input_ids with: the pad token, else eos, else 0 (padding is masked anyway)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


class PadCollator:
    """Right-pads list-valued fields of a batch to the longest example: input_ids with the pad id,
    labels with -100, everything else (attention_mask, token_type_ids, ...) with 0. Scalar fields
    (a class label) become a 1-D tensor."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def pad_value(self, key: str) -> int:
        return {"input_ids": self.pad_id, "labels": IGNORE_INDEX}.get(key, 0)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        batch = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if isinstance(values[0], (list, tuple, np.ndarray, torch.Tensor)):
                width = max(len(v) for v in values)
                fill = self.pad_value(key)
                values = [list(v) + [fill] * (width - len(v)) for v in values]
            batch[key] = torch.tensor(values, dtype=torch.long)
        return batch


def model_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without "labels", on the model's device."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = None
    return {k: (v.to(device) if device is not None and v.device != device else v) for k, v in batch.items() if k != "labels"}


def align_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Drop leading positions a prompt-learning model (prompt tuning, p-tuning) prepends."""
    extra = logits.shape[1] - labels.shape[1]
    return logits[:, extra:] if extra > 0 else logits


def tokenized(data, fn, desc: str):
    """``fn`` mapped (batched) over every split, keeping only what ``fn`` returns."""
    from datasets import DatasetDict

    return DatasetDict({split: ds.map(fn, batched=True, remove_columns=ds.column_names, desc=desc) for split, ds in data.items()})


@functools.cache
def cached_metric(name: str):
    """One in-memory instance per metric per process (loading a module costs ~0.1-1 s)."""
    from ..metrics import load_metric

    return load_metric(name, keep_in_memory=True)


def prompt_samples(task: Task, model, tokenizer, split, n: int) -> list[dict[str, Any]] | None:
    """``Task.log_samples`` for prompt/response data: the task's ``generate`` answers to the first ``n``
    prompts of ``split``, with their references."""
    if "prompt" not in split.column_names:
        return None
    rows = split.select(range(min(n, len(split))))
    outputs = task.generate(model, tokenizer, rows["prompt"], max_new_tokens=32)
    references = rows["response"] if "response" in rows.column_names else [None] * len(outputs)
    return [
        {"prompt": p, "generated": g, "reference": r}
        for p, g, r in zip(rows["prompt"], outputs, references, strict=True)
    ]


def check_gathered(gathered: dict[str, np.ndarray], *keys: str) -> None:
    missing = [k for k in keys if k not in gathered]
    if missing:
        raise KeyError(f"compute_metrics needs {missing} from eval_step; got {sorted(gathered)}.")
    if len(gathered[keys[0]]) == 0:
        raise ValueError("No evaluation examples to compute metrics on.")
