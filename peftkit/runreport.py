"""What a training run's output directory tells about how it was made.

- ``run_config.yaml`` (`write_run_config`): the command, every resolved training setting
  (defaults included), library versions, model, strategy and options, task, data files with their
  sha256 and each split's rows and content digest.
- ``train_log.png`` (`plot_log`): training loss and validation metrics by step (matplotlib,
  imported here only; without it the plot is skipped with one note).
- ``README.md`` in the saved model folders (`write_model_card`): a model card (strategy, base,
  data, metrics, the command, how to load it) in place of PEFT's empty template.
- `chance_loss`: the loss of predicting the training label frequencies, to warn when a run
  learned nothing.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes")


def library_versions() -> dict[str, str]:
    """peftkit's, Python's and the installed libraries' versions (read without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"peftkit": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def command_line() -> str:
    """How this process was started, as a shell line."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return shlex.join([program, *sys.argv[1:]])


def data_files(sources: dict[str, Any] | None) -> dict[str, Any]:
    """``{name: {"path", "sha256"}}`` for each local file (a folder: each file in it); hub ids as given."""
    from .rundir import file_sha256

    out: dict[str, Any] = {}
    for name, value in (sources or {}).items():
        if not value:
            continue
        path = Path(str(value))
        if path.is_file():
            out[name] = {"path": str(path.resolve()), "sha256": file_sha256(path)}
        elif path.is_dir():
            out[name] = {"path": str(path.resolve()), "files": {
                p.name: file_sha256(p) for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")}}
        else:
            out[name] = {"id": str(value)}
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_run_config(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (see `_Run.record`) as YAML, with a header line."""
    import yaml

    header = f"# How this run was made (written by peftkit {record.get('versions', {}).get('peftkit', '')}).\n"
    _atomic_write(path, header + yaml.safe_dump(record, sort_keys=False, default_flow_style=False, width=110))
    return path


# --------------------------------------------------------------------------- plot


def plot_log(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss (and validation metrics) by step into ``path``; None (with a note) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("peftkit: matplotlib is not installed, so train_log.png was not drawn (pip install matplotlib).")
        return None
    train = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    metrics = sorted({k for r in evals for k, v in r.items() if k.startswith("eval_") and isinstance(v, (int, float))})
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    if train:
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1.2)
    if "eval_loss" in metrics:
        left.plot([r["step"] for r in evals if "eval_loss" in r], [r["eval_loss"] for r in evals if "eval_loss" in r],
                  "o-", label="validation loss")
    left.set(xlabel="step", ylabel="loss", title="loss")
    left.legend(loc="best")
    shown = [m for m in metrics if m not in ("eval_loss", "eval_n_eval")]
    for name in shown:
        points = [(r["step"], r[name]) for r in evals if isinstance(r.get(name), (int, float))]
        right.plot(*zip(*points, strict=True), "o-", label=name.removeprefix("eval_"))
    right.set(xlabel="step", title="validation metrics")
    if shown:
        right.legend(loc="best")
    else:
        right.text(0.5, 0.5, "no validation", ha="center", va="center", transform=right.transAxes)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- model card


def _table(rows: list[tuple[str, str]]) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows if v not in (None, ""))


def _metrics_text(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def write_model_card(folder: Path, record: dict[str, Any], *, best: dict[str, Any] | None = None,
                     final: dict[str, Any] | None = None, split: str = "test") -> Path:
    """``folder/README.md`` for a model saved by a run (replaces PEFT's empty template)."""
    model, train = record.get("model", {}), record.get("train", {})
    strategy, base, task = model.get("strategy", "?"), model.get("base_model") or "?", record.get("task", "?")
    options = ", ".join(f"{k}={v}" for k, v in (model.get("options") or {}).items())
    data = record.get("data", {})
    files = data.get("files") or {}
    splits = "; ".join(f"{name} {d['rows']} rows" for name, d in (data.get("splits") or {}).items())
    sources = "; ".join(f"{name}: {f.get('path') or f.get('id')}" + (f" (sha256 {f['sha256'][:16]})" if "sha256" in f else "")
                        for name, f in files.items())
    front = ["---"]
    if model.get("format") == "peft":
        front.append("library_name: peft")
    if model.get("base_model"):
        front.append(f"base_model: {json.dumps(model['base_model'])}")
    front += ["tags:", "- peftkit", f"- {strategy}", f"- {task}", "---", ""]
    steps = train.get("total_steps")
    trained = (f"{steps} optimizer steps, lr {train.get('lr_resolved')}, batch size {train.get('batch_size')} x "
               f"{train.get('gradient_accumulation_steps')} accumulation, seed {train.get('seed')}")
    body = [
        f"# {strategy} fine-tune of {base} ({task})", "",
        f"Trained with peftkit {record.get('versions', {}).get('peftkit', '')}.", "",
        _table([("strategy", strategy + (f" ({options})" if options else "")), ("base model", base), ("task", task),
                ("data", sources), ("splits", splits), ("training", trained),
                ("best validation", _metrics_text(best)), (f"{split} metrics (this model)", _metrics_text(final))]),
        "## How it was made", "", "```", record.get("command", ""), "```", "",
        "Every setting is in `run_config.yaml` next to this folder; the loss by step in `train_log.csv`.", "",
        "## Use", "", "```",
        f"peftkit predict {folder} --text \"...\"",
        f"python -c \"import peftkit; model = peftkit.load('{folder}')\"",
        "```", "",
    ]
    path = folder / "README.md"
    _atomic_write(path, "\n".join(front + body))
    return path


# --------------------------------------------------------------------------- learned nothing?


def chance_loss(labels) -> float | None:
    """Entropy (nats) of the label distribution: the cross-entropy of always predicting the label
    frequencies. ``labels`` may nest (token classification); negative ids (-100) are skipped."""
    counts: Counter = Counter()
    stack = [labels]
    while stack:
        item = stack.pop()
        if hasattr(item, "__len__") and not isinstance(item, str):  # a list, an array, a Column
            stack.extend(list(item))
        elif item is not None and int(item) >= 0:
            counts[int(item)] += 1
    total = sum(counts.values())
    if total == 0 or len(counts) < 2:
        return None
    return -sum(c / total * math.log(c / total) for c in counts.values())


def timestamp() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
