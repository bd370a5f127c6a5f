"""The ``peftkit`` command: train, predict, merge, ls.

Every ``train`` option can come from flags or from a YAML file (``--config``) whose keys are the
long flag names with underscores (``batch_size: 32``); flags given on the command line win over
the file. Any other `TrainConfig` field goes under ``train_options:`` (or ``--set key=value``);
strategy options go under ``strategy_options:`` (or ``--option key=value``).

Subcommands register themselves in `SUBCOMMANDS`, so later ones (bench, plan) slot in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RECIPES = {
    "lora_classify": "text classification with LoRA (any strategy); runs a packaged demo with no arguments",
    "ner": "token classification (CoNLL format, e.g. CoNLL-2003) with any strategy",
    "sft": "causal-LM supervised fine-tuning (prompt -> response), LoRA or QLoRA (--quantization 4bit)",
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


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``peftkit train`` (also used by the recipes)."""
    p.add_argument("--config", help="YAML file of options (keys = flag names); flags override it")
    p.add_argument("--model", help="model path or hub id")
    p.add_argument("--task", help="classification | token-classification | causal-lm (default: from the model)")
    p.add_argument("--data", help="hub dataset id or local directory (optional when --train is given)")
    p.add_argument("--train", help="train file (csv, tsv, json, jsonl, CoNLL)")
    p.add_argument("--validation", help="validation file (default: carved from train)")
    p.add_argument("--test", help="test file")
    for name, default in (("text", "text"), ("label", "label"), ("tokens", "tokens"), ("tags", "tags"), ("prompt", "prompt"), ("response", "response")):
        p.add_argument(f"--{name}-column", default=default, help=f"column holding the {name} (default: {default})")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--strategy", default="lora", help="full | lora | adapter | bitfit | prefix | prompt | ia3 (default: lora)")
    p.add_argument("--option", dest="option", action="append", metavar="KEY=VALUE", help="strategy option, e.g. --option r=16")
    p.add_argument("--strategy-options", type=json.loads, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quantization", choices=["8bit", "4bit"], help="load the base model quantized (QLoRA with --quantization 4bit)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default: the strategy's)")
    p.add_argument("--head-lr", type=float, help="learning rate of the new task head (default: the same as --lr)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: every epoch)")
    p.add_argument("--save-steps", type=int, help="write a resumable checkpoint every N steps")
    p.add_argument("--resume", nargs="?", const=True, default=None, help="resume from CHECKPOINT, or the latest one under --output")
    p.add_argument("--gradient-accumulation-steps", type=int)
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    p.add_argument("--early-stopping-patience", type=int)
    p.add_argument("--report-to", choices=["tensorboard"])
    p.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even where a GPU is present")
    p.add_argument("--set", dest="set", action="append", metavar="KEY=VALUE", help="any other TrainConfig field, e.g. --set warmup_ratio=0.06")
    p.add_argument("--train-options", type=json.loads, default=None, help=argparse.SUPPRESS)
    p.add_argument("--output", default="peftkit-output", help="output directory (default: peftkit-output)")


_TRAIN_FLAGS = {  # flag dest -> TrainConfig field
    "epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size", "eval_batch_size": "eval_batch_size",
    "lr": "lr", "head_lr": "head_lr", "seed": "seed", "max_length": "max_length", "eval_steps": "eval_steps", "save_steps": "save_steps",
    "resume": "resume_from_checkpoint", "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_checkpointing": "gradient_checkpointing", "mixed_precision": "mixed_precision",
    "early_stopping_patience": "early_stopping_patience", "report_to": "report_to", "cpu": "cpu", "output": "output_dir",
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
    """The DatasetDict the data/column flags describe."""
    from .data import load_data

    for name in ("data", "train", "validation", "test"):
        setattr(args, name, expand_path(getattr(args, name)))
    if not (args.data or args.train):
        raise SystemExit("peftkit: give the data: --data DATASET_ID_OR_DIR, or --train FILE (plus --validation/--test).")
    return load_data(
        args.data, task, train=args.train, validation=args.validation, test=args.test,
        text_column=args.text_column, label_column=args.label_column, tokens_column=args.tokens_column,
        tags_column=args.tags_column, prompt_column=args.prompt_column, response_column=args.response_column,
        seed=seed, max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
    )


def run_training(args: argparse.Namespace, callbacks=(), **config_defaults: Any):
    """load_model -> wrap -> train from parsed train arguments; returns (TrainResult, model).

    ``callbacks`` go to `peftkit.train` (``on_evaluate(step, metrics)``)."""
    from transformers import set_seed

    from . import wrap
    from .data import label_names
    from .introspect import check_task
    from .loading import load_model
    from .training import train

    if not args.model:
        raise SystemExit("peftkit: --model is required (a local model directory or hub id).")
    if not args.task:
        raise SystemExit("peftkit: --task is required: classification, token-classification or causal-lm.")
    task = check_task(args.task)
    config = train_config_from_args(args, **config_defaults)
    data = load_data_from_args(args, task, seed=config.seed)
    set_seed(config.seed)  # the new task head is initialised from the seed too
    model, tokenizer = load_model(args.model, task=task, labels=label_names(data, task), quantization=args.quantization)
    model = wrap(model, args.strategy, task=task, **strategy_options_from_args(args))
    return train(model, tokenizer, data, config, task=task, callbacks=callbacks), model


def cmd_train(args: argparse.Namespace) -> int:
    from . import count_parameters

    result, model = run_training(args)
    print(f"peftkit: {args.strategy}: {count_parameters(model)}")
    print(f"peftkit: {result.split} metrics: {json.dumps(result.metrics)}")
    print(f"peftkit: model checkpoint: {result.final_checkpoint}; metrics: {Path(args.output) / 'metrics.json'}")
    return 0


# --------------------------------------------------------------------------- predict


def _read_inputs(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.file:
        file = Path(args.file)
        if not file.is_file():
            raise SystemExit(f"peftkit: --file {file}: no such file.")
        if file.suffix in (".csv", ".tsv", ".json", ".jsonl"):
            import datasets

            kind = {".tsv": "csv", ".jsonl": "json"}.get(file.suffix, file.suffix[1:])
            kwargs = {"delimiter": "\t"} if file.suffix == ".tsv" else {}
            rows = datasets.load_dataset(kind, data_files=str(file), split="train", **kwargs)
            if args.text_column not in rows.column_names:
                raise SystemExit(f"peftkit: {file} has no column {args.text_column!r}; columns: {', '.join(rows.column_names)}. Use --text-column.")
            texts += [str(t) for t in rows[args.text_column]]
        else:
            texts += [line.rstrip("\n") for line in file.read_text().splitlines() if line.strip()]
    if not texts:
        raise SystemExit("peftkit: nothing to predict: give --text TEXT (repeatable) or --file FILE.")
    return texts


def _load_checkpoint(path: str, base_model: str | None):
    from transformers import AutoTokenizer

    from . import load
    from .checkpoint import read_config

    meta = read_config(path)
    model = load(path, base_model=base_model).eval()
    source = path if (Path(path) / "tokenizer_config.json").is_file() else (base_model or meta.get("base_model"))
    return model, AutoTokenizer.from_pretrained(source), meta


def predict(model, tokenizer, task: str, texts: list[str], batch_size: int = 32, max_new_tokens: int = 32) -> list[dict[str, Any]]:
    """Predictions for raw texts: a label (classification), word labels (token classification)
    or a generated continuation (causal LM)."""
    import torch

    if task == "causal-lm":
        from .tasks import get_task

        return [{"text": t, "generated": g} for t, g in zip(texts, get_task(task).generate(model, tokenizer, texts, max_new_tokens=max_new_tokens), strict=True)]
    id2label = getattr(model.config, "id2label", None) or {}
    out: list[dict[str, Any]] = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        words = [t.split() for t in chunk] if task == "token-classification" else None
        enc = tokenizer(words or chunk, is_split_into_words=words is not None, truncation=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v.to(model.device) for k, v in enc.items()}).logits.float()
        probs = logits.softmax(-1)
        for j, text in enumerate(chunk):
            if task == "classification":
                k = int(probs[j].argmax())
                out.append({"text": text, "label": id2label.get(k, str(k)), "score": round(float(probs[j, k]), 4)})
            else:
                labels, seen = [], set()
                for pos, w in enumerate(enc.word_ids(j)):
                    if w is not None and w not in seen:
                        seen.add(w)
                        labels.append(id2label.get(int(probs[j, pos].argmax()), "?"))
                out.append({"text": text, "tokens": words[j], "labels": labels + ["O"] * (len(words[j]) - len(labels))})
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    texts = _read_inputs(args)
    model, tokenizer, meta = _load_checkpoint(args.checkpoint, args.base_model)
    rows = predict(model, tokenizer, meta["task"], texts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")
        print(f"peftkit: {len(rows)} predictions written to {args.output}")
    else:
        print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------- merge, ls


def cmd_merge(args: argparse.Namespace) -> int:
    from . import merge

    model, tokenizer, meta = _load_checkpoint(args.checkpoint, args.base_model)
    merged = merge(model)
    merged.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"peftkit: merged {meta['strategy']} model written to {args.output} (load it with transformers' from_pretrained)")
    return 0


def _recipes_dir() -> Path | None:
    here = Path(__file__).resolve().parents[1] / "recipes"
    return here if here.is_dir() else None


def cmd_ls(args: argparse.Namespace) -> int:
    from .strategies import REGISTRY, STRATEGIES

    if args.what in ("all", "strategies"):
        print("strategies:")
        for name in STRATEGIES:
            spec = REGISTRY[name]
            print(f"  {name:<8} lr {spec.default_lr:<7g} {spec.summary}")
    if args.what in ("all", "recipes"):
        folder = _recipes_dir()
        print("recipes:" + ("" if folder else "  (ship with the source repository: recipes/)"))
        for name, summary in RECIPES.items():
            print(f"  {name:<14} {summary}")
            if folder:
                print(f"  {'':<14} accelerate launch recipes/{name}.py --help")
        if folder and (folder / "configs").is_dir():
            print("configs:")
            for cfg in sorted((folder / "configs").glob("*.yaml")):
                first = cfg.read_text().splitlines()[0].lstrip("# ").strip()
                print(f"  {cfg.name:<28} {first}")
    return 0


# --------------------------------------------------------------------------- parser


def _setup_train(p: argparse.ArgumentParser) -> Callable:
    add_train_arguments(p)
    return cmd_train


def _setup_predict(p: argparse.ArgumentParser) -> Callable:
    p.add_argument("checkpoint", help="a checkpoint directory written by peftkit (e.g. OUTPUT/best)")
    p.add_argument("--text", action="append", help="a text to predict (repeatable)")
    p.add_argument("--file", help="texts, one per line; or a csv/tsv/json/jsonl file with --text-column")
    p.add_argument("--text-column", default="text")
    p.add_argument("--base-model", help="base model path or id (default: the one the checkpoint names)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--output", help="write JSON lines here instead of printing them")
    return cmd_predict


def _setup_merge(p: argparse.ArgumentParser) -> Callable:
    p.add_argument("checkpoint", help="a LoRA / IA3 / BitFit / full checkpoint written by peftkit")
    p.add_argument("output", help="directory for the merged transformers model")
    p.add_argument("--base-model", help="base model path or id (default: the one the checkpoint names)")
    return cmd_merge


def _setup_ls(p: argparse.ArgumentParser) -> Callable:
    p.add_argument("what", nargs="?", default="all", choices=["all", "strategies", "recipes"])
    return cmd_ls


# name -> (help, setup(parser) -> handler). `bench` and `plan` are added here when they exist.
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Callable]]] = {
    "train": ("fine-tune a model (flags or --config file.yaml)", _setup_train),
    "predict": ("run a checkpoint on texts or a file", _setup_predict),
    "merge": ("fold a LoRA/IA3 checkpoint into its base model and save it", _setup_merge),
    "ls": ("list strategies and recipes", _setup_ls),
    "plan": ("predict training memory per strategy and recommend one", lambda p: _lazy_setup("memory", "setup_plan_parser", p)),
    "bench": ("run a benchmark suite, or rebuild its report (--report DIR)", lambda p: _lazy_setup("bench", "setup_bench_parser", p)),
    "tune": ("search hyperparameters with Optuna", lambda p: _lazy_setup("tune", "setup_tune_parser", p)),
}


def _lazy_setup(module: str, name: str, p: argparse.ArgumentParser) -> Callable:
    """Set up a subcommand whose module is imported only when the parser is built."""
    import importlib

    return getattr(importlib.import_module(f"peftkit.{module}"), name)(p)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient fine-tuning for Transformers models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (help_text, setup) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=setup(p))
        subparsers[name] = p
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if not argv or argv[0] not in subparsers:
        args = parser.parse_args(argv)  # prints help / the error for an unknown command
        parser.print_help()
        return 2
    args = parse_with_config(subparsers[argv[0]], argv[1:])
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
        if os.environ.get("PEFTKIT_DEBUG"):
            raise
        print(f"peftkit {argv[0]}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
