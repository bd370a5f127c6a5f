"""`peftkit plan` and ``python -m peftkit.planner``: the table (or JSON) and the recommendation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .planning import plan

# --------------------------------------------------------------------------- command line

def setup_plan_parser(p: argparse.ArgumentParser):
    """Add the `peftkit plan` arguments to ``p``; returns the handler (`run_plan`)."""
    from ..cli import setup_plan_arguments

    setup_plan_arguments(p)
    return run_plan


def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``plan`` on an argparse subparsers object (``handler`` default set to `run_plan`)."""
    help_text = "predict training memory per strategy x quantization and recommend one"
    p = subparsers.add_parser("plan", help=help_text, description=help_text)
    p.set_defaults(handler=setup_plan_parser(p))
    return p


def run_plan(args: argparse.Namespace) -> int:
    """`peftkit plan`: print the table (or JSON) and the recommendation; 1 with the error on bad input."""

    from ..cli import plan_scores_dir

    try:
        result = plan(args.model, task=args.task, batch_size=args.batch_size, seq_len=args.seq_len,
                      strategies=args.strategies, quantization=[None if q == "none" else q for q in args.quantization],
                      gradient_checkpointing=args.gradient_checkpointing, optimizer=args.optimizer,
                      budget=args.budget, device=args.device, num_labels=args.num_labels,
                      train_size=getattr(args, "train_size", None), max_steps=getattr(args, "max_steps", None),
                      adversarial=getattr(args, "adversarial", None), adv_steps=getattr(args, "adv_steps", 2),
                      results_dir=plan_scores_dir(getattr(args, "scores", None)))
    except (OSError, ValueError) as err:
        print(f"peftkit plan: error: {err}", file=sys.stderr)
        return 1
    print(result.to_json() if args.json else result.to_table())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peftkit.planner MODEL ...`` (the same as ``peftkit plan``)."""
    parser = argparse.ArgumentParser(prog="peftkit plan", description="Predict training memory per strategy.")
    setup_plan_parser(parser)
    return run_plan(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
