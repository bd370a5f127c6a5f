"""The step-time cost of adversarial training and distillation, against the plain step.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python benchmarks/adversarial_cost.py [--steps 30] [--strategy lora]

The packaged MiniLM on 512 SST-2 sentences (batch 32, max length 64), CPU: each setting trains
``--steps`` optimizer steps; the time per step is read from the training log's throughput (the
first logged window, which holds the warm-up, is left out). Expected: FGM about 2x, PGD / FreeLB
with K steps about (K+1)x; distillation adds one teacher forward (no backward).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import peftkit
from peftkit.data import load_data, default_data_dir
from peftkit.loading import PACKAGED_MODELS  # noqa: F401 - the packaged MiniLM resolves through load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--strategy", default="lora")
    parser.add_argument("--adv-steps", type=int, default=2)
    args = parser.parse_args()
    data_dir = default_data_dir()
    data = load_data(None, "classification", train=str(data_dir / "sst2/train.tsv"), text_column="sentence",
                     max_train_samples=512, validation_fraction=1e-6)
    data = type(data)(train=data["train"])
    settings = {"plain": {}, "fgm": {"adversarial": "fgm"}, "pgd": {"adversarial": "pgd", "adv_steps": args.adv_steps},
                "freelb": {"adversarial": "freelb", "adv_steps": args.adv_steps}}
    model_id = "sentence-transformers/all-MiniLM-L6-v2"
    teacher, _ = peftkit.load_model(model_id, task="classification", labels=["0", "1"])
    settings["distill"] = {"teacher": teacher}
    results = {}
    for name, extra in settings.items():
        model, tokenizer = peftkit.load_model(model_id, task="classification", labels=["0", "1"])
        model = peftkit.wrap(model, args.strategy)
        with tempfile.TemporaryDirectory() as out:
            config = peftkit.TrainConfig(output_dir=out, max_steps=args.steps, batch_size=32, max_length=64, log_every=10,
                                         progress=False, cpu=True, lr=1e-3, **extra)
            start = time.perf_counter()
            result = peftkit.train(model, tokenizer, data, config)
            total = time.perf_counter() - start
        rates = [r["samples_per_second"] for r in result.log if r.get("samples_per_second")][1:]
        step = 32 / (sum(rates) / len(rates))
        results[name] = {"seconds_per_step": round(step, 3), "train_seconds": round(total, 1)}
        print(name, results[name], flush=True)
    plain = results["plain"]["seconds_per_step"]
    for row in results.values():
        row["ratio"] = round(row["seconds_per_step"] / plain, 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
