"""The baselines for the suite's LoRA cell, written the way a user would write them by hand.

- ``baseline-trainer``: Hugging Face ``Trainer`` + PEFT ``get_peft_model``, batches grouped by length
  as peftkit groups them.
- ``baseline-accelerate``: a minimal hand-written Accelerate + PEFT loop (the shape of
  Accelerate's ``examples/nlp_example.py``: one ``prepare``, a plain loop, ``backward``).
- ``baseline-trainer-defaults``: ``Trainer`` + PEFT with ``TrainingArguments`` left at their defaults
  (random batches, float32, no compiling) except what defines the job: what a user gets.
- ``baseline-trainer-best``: ``Trainer`` + PEFT with its speed flags: ``group_by_length``,
  ``torch_compile=True``, and ``bf16=True`` where `peftkit.precision.bf16_pays` (else left off; the
  row's ``trainer_note`` says why).

All use the same model, data subset, LoRA configuration (rank, alpha, dropout, the same target
modules), learning rate, AdamW with weight decay off biases and LayerNorm weights, linear
schedule with the same warmup steps, gradient clipping, batch size, step budget, maximum
length, dynamic padding and seed as the peftkit cell. Their timed region matches peftkit's:
tokenizing the training texts, training (compiling included), and saving the adapter. The
hand-written loop draws plain shuffled batches, as a minimal loop does. A Trainer row records the
``TrainingArguments`` it passed (``trainer_args``, JSON) and the seconds spent compiling
(``compile_seconds``). Evaluation (accuracy on the test split) is timed apart, as for every cell.
Nothing of peftkit trains or evaluates here; peftkit only reads the LoRA options' defaults and the
target modules, so the adapters match.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

from .common import device_label, load_task_data, model_source, preload, resolve_device
from .measure import MemoryProbe, compile_seconds, compile_total, directory_mb
from .suite import CellKey, Suite


def _lora_config(model, options: dict[str, Any]):
    """PEFT's LoraConfig with the same settings peftkit's ``lora`` strategy resolves to."""
    from peft import LoraConfig, TaskType

    from ..strategies import REGISTRY
    from ..strategies.lora import resolve_targets

    o = REGISTRY["lora"].resolve_options(options)
    return LoraConfig(task_type=TaskType.SEQ_CLS, r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"],
                      target_modules=resolve_targets(model, o["target_modules"]),
                      use_dora=o["use_dora"], use_rslora=o["use_rslora"], init_lora_weights=o["init"], bias=o["bias"])


def _tokenize(dataset, tokenizer, max_length: int):
    encoded = dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                          remove_columns=["text"])
    return encoded.rename_column("label", "labels")


def _accuracy(model, tokenizer, test, max_length: int, batch_size: int) -> float:
    """Plain argmax accuracy, batches sorted by length (as every cell is evaluated)."""
    import torch
    from transformers import DataCollatorWithPadding

    encoded = _tokenize(test, tokenizer, max_length)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
    encoded = encoded.select(order)
    collate = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate([encoded[j] for j in range(i, min(i + batch_size, len(encoded)))]).items()}
            labels = batch.pop("labels")
            correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / len(encoded)


def trainer_arguments(strategy: str, settings: dict[str, Any], out: Path) -> tuple[dict[str, Any], str]:
    """The ``TrainingArguments`` keywords of a Trainer baseline, and a note on a speed flag left off.

    Every one sets the job as the peftkit cell defines it (steps, batch size, lr, schedule and warmup,
    weight decay, gradient clipping, seed, device) and turns off what the cell does not do (checkpoints,
    evaluation, trackers); everything else is each baseline's own.
    """
    job = {"output_dir": str(out / "trainer"), "max_steps": settings["steps"],
           "per_device_train_batch_size": settings["batch_size"], "learning_rate": settings["lr"],
           "weight_decay": settings["weight_decay"], "warmup_steps": settings["warmup"],
           "lr_scheduler_type": settings["scheduler"], "max_grad_norm": settings["max_grad_norm"] or 0.0,
           "seed": settings["seed"], "use_cpu": settings["device"] == "cpu", "save_strategy": "no",
           "eval_strategy": "no", "report_to": "none"}
    if strategy == "baseline-trainer":  # as peftkit trains: grouped by length, quiet, logging every 10 steps
        return {**job, "data_seed": settings["seed"], "logging_steps": 10, "disable_tqdm": True,
                "dataloader_num_workers": 0, "train_sampling_strategy": "group_by_length"}, ""
    if strategy == "baseline-trainer-defaults":
        return job, ""
    if strategy == "baseline-trainer-best":
        from ..precision import bf16_pays, cpu_name

        on_cpu = settings["device"] == "cpu"
        bf16 = bf16_pays(on_cpu)
        note = "" if bf16 else (f"bf16 left off: this CPU, {cpu_name()}, has no native bfloat16" if on_cpu
                                else "bf16 left off: this GPU has no bfloat16")
        return {**job, "train_sampling_strategy": "group_by_length", "torch_compile": True, "bf16": bf16}, note
    raise ValueError(f"{strategy!r} is not a Trainer baseline.")


def _train_with_trainer(model, tokenizer, train, settings: dict[str, Any], out: Path, *, arguments: dict[str, Any]) -> None:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    encoded = _tokenize(train, tokenizer, settings["max_length"])
    args = TrainingArguments(**arguments)
    Trainer(model=model, args=args, train_dataset=encoded, data_collator=DataCollatorWithPadding(tokenizer)).train()
    model.save_pretrained(out / "adapter")


def _train_with_accelerate(model, tokenizer, train, settings: dict[str, Any], out: Path) -> None:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding, get_scheduler

    accelerator = Accelerator(cpu=settings["device"] == "cpu")
    set_seed(settings["seed"])
    encoded = _tokenize(train, tokenizer, settings["max_length"])
    loader = DataLoader(encoded, batch_size=settings["batch_size"], shuffle=True,
                        collate_fn=DataCollatorWithPadding(tokenizer), generator=torch.Generator().manual_seed(settings["seed"]))
    no_decay = ("bias", "LayerNorm.weight")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if not any(k in n for k in no_decay)], "weight_decay": settings["weight_decay"]},
              {"params": [p for n, p in params if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=settings["lr"])
    scheduler = get_scheduler(settings["scheduler"], optimizer, num_warmup_steps=settings["warmup"],
                              num_training_steps=settings["steps"])
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    step = 0
    while step < settings["steps"]:
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            if settings["max_grad_norm"]:
                accelerator.clip_grad_norm_(model.parameters(), settings["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step >= settings["steps"]:
                break
    accelerator.unwrap_model(model).save_pretrained(out / "adapter")


def run_baseline(suite: Suite, key: CellKey, work_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Train the suite's LoRA cell with ``Trainer`` or a hand-written loop; fill ``row`` like a cell."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..data import label_names
    from ..parameters import count_parameters
    from ..training import TrainConfig

    if not suite.baselines:
        raise ValueError(f"{suite.path} has no baselines: section; add baselines: {{task: ..., strategy: ...}} to run "
                         f"{key.strategy}.")
    task = suite.task(key.task)
    spec = suite.strategy(suite.baselines["strategy"])
    device = resolve_device(suite)
    budget = suite.budget_for(task)
    config = TrainConfig(**budget)  # the same defaults the peftkit cell trains with
    if not config.max_steps:
        raise ValueError("The baselines need a step budget: set budget.max_steps in the suite.")
    lr = spec.learning_rate()
    settings = {"steps": config.max_steps, "batch_size": config.batch_size, "lr": lr, "weight_decay": config.weight_decay,
                "warmup": int(config.warmup_ratio * config.max_steps), "scheduler": config.scheduler,
                "max_grad_norm": config.max_grad_norm, "seed": key.seed, "max_length": task.max_length, "device": device}
    row.update(device=device_label(device), base_strategy="lora", lr=lr, max_steps=config.max_steps,
               options=spec.options_text(), batch_size=config.batch_size)
    torch.manual_seed(key.seed)
    data = load_task_data(task, key.train_size, key.seed)
    labels = label_names(data, task.task)
    row.update(train_samples=len(data["train"]), eval_samples=len(data["test"]))
    trainer = key.strategy != "baseline-accelerate"
    preload(trainer=trainer)

    probe = MemoryProbe("cuda" if device == "cuda" else "cpu")
    probe.start()
    path, extra = model_source(suite)
    tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, **extra, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = get_peft_model(model, _lora_config(model, spec.options))
    counts = count_parameters(model)  # counted like every other cell (the head's frozen original once)
    row.update(trainable_params=counts.trainable, total_params=counts.total, trainable_percent=round(counts.percent, 4))

    train, arguments = _train_with_accelerate, {}
    if trainer:
        arguments, note = trainer_arguments(key.strategy, settings, work_dir)
        train = functools.partial(_train_with_trainer, arguments=arguments)
        row.update(trainer_args=json.dumps({k: v for k, v in arguments.items() if k != "output_dir"}, sort_keys=True),
                   trainer_note=note)
    row["mixed_precision"] = "bf16" if arguments.get("bf16") else "no"
    start, cpu_start, compiled = time.perf_counter(), time.process_time(), compile_total()
    train(model, tokenizer, data["train"], settings, work_dir)
    seconds = time.perf_counter() - start
    row.update(train_seconds=round(seconds, 2), train_cpu_seconds=round(time.process_time() - cpu_start, 2),
               samples_per_second=round(config.max_steps * config.batch_size / seconds, 2))
    if arguments.get("torch_compile"):
        row["compile_seconds"] = compile_seconds(since=compiled)

    start = time.perf_counter()
    accuracy = _accuracy(model, tokenizer, data["test"], task.max_length, config.eval_batch_size or config.batch_size)
    row.update(eval_seconds=round(time.perf_counter() - start, 2), metric_name="accuracy", metric_value=round(accuracy, 6),
               metrics=f'{{"accuracy": {accuracy}}}', checkpoint_mb=directory_mb(work_dir / "adapter"))
    row.update(probe.stop())
    row["status"] = "ok"
    return row
