"""The step-time cost of adversarial training and distillation, against the plain step.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python benchmarks/adversarial_cost.py [--steps 10] [--strategy lora]

The packaged MiniLM, a batch of 32 SST-2 sentences (max length 64), CPU: the training loop's
step (`peftkit.training.loop._Run._step`'s parts: the clean forward + backward, `Adversary.attack`,
the optimizer step) timed over ``--steps`` steps after one warm-up step, in wall-clock and in
CPU seconds, and the floating-point operations of one step (torch's FlopCounterMode: the same on
a busy machine as on an idle one). Expected: FGM about 2x, PGD /
FreeLB with K steps about (K+1)x; distillation adds one teacher forward (no backward).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import peftkit
from peftkit.adversarial import Adversary
from peftkit.data import default_data_dir, load_data
from peftkit.distill import Distiller
from peftkit.tasks import get_task

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def step(model, batch, adversary, loss_of, accelerator, optimizer) -> None:
    """One training step as the loop runs it (`peftkit.training.loop._Run._step`), without its bookkeeping."""
    batch = dict(batch)  # a new batch object, as the loader gives: the teacher runs once for it
    with adversary.clean_pass():
        accelerator.backward(loss_of(model, batch))
    adversary.attack(lambda: loss_of(model, batch))
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strategy", default="lora")
    parser.add_argument("--adv-steps", type=int, default=2)
    args = parser.parse_args()
    from accelerate import Accelerator

    task = get_task("classification")
    data = load_data(
        None,
        "classification",
        train=str(default_data_dir() / "sst2/train.tsv"),
        text_column="sentence",
        max_train_samples=32,
        validation_fraction=1e-6,
    )
    settings = {
        "plain": {},
        "fgm": {"method": "fgm"},
        "pgd": {"method": "pgd"},
        "freelb": {"method": "freelb"},
        "distill": {"teacher": True},
    }
    teacher = peftkit.load_model(MODEL, task="classification", labels=["0", "1"])[0]
    results = {}
    for name, setting in settings.items():
        torch.manual_seed(0)
        model, tokenizer = peftkit.load_model(MODEL, task="classification", labels=["0", "1"])
        model = peftkit.wrap(model, args.strategy)
        prepared = task.prepare(data, tokenizer, max_length=64)["train"]
        batch = task.collator(tokenizer)([prepared[i] for i in range(len(prepared))])
        accelerator = Accelerator(cpu=True)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        adversary = Adversary(model, accelerator, setting.get("method"), 1.0, args.adv_steps, None)
        loss_of = Distiller(teacher if setting.get("teacher") else None, 0.5, 2.0, task, accelerator)
        model.train()

        parts = (model, batch, adversary, loss_of, accelerator, optimizer)
        step(*parts)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step(*parts)
        results[name] = {
            "wall_s": round((time.perf_counter() - wall) / args.steps, 3),
            "cpu_s": round((time.process_time() - cpu) / args.steps, 3),
        }
        with FlopCounterMode(
            display=False
        ) as flops:  # the same step's floating-point operations: load-independent
            step(*parts)
        results[name]["gflops"] = round(flops.get_total_flops() / 1e9, 2)
        adversary.remove()
        print(name, results[name], flush=True)
    for row in results.values():
        row["cpu_ratio"] = round(row["cpu_s"] / results["plain"]["cpu_s"], 2)
        row["wall_ratio"] = round(row["wall_s"] / results["plain"]["wall_s"], 2)
        row["flops_ratio"] = round(row["gflops"] / results["plain"]["gflops"], 2)
    print(
        json.dumps(
            {
                "strategy": args.strategy,
                "batch": list(batch["input_ids"].shape),
                "adv_steps": args.adv_steps,
                "torch_threads": torch.get_num_threads(),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
