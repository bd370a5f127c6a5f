"""`plan()`: every strategy x quantization priced for one model, task and batch shape."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..introspect import check_task
from ..loading import QUANTIZATIONS
from .constants import (
    CPU_RUNTIME_BYTES,
    CUDA_CONTEXT_BYTES,
    DEVICES,
    KBIT_RETAINED,
    OPTIMIZERS,
    OVERHEAD_BYTES,
)
from .costs import (
    _dtype_bytes,
    activation_bytes,
    adversarial_bytes,
    adversarial_passes,
    cpu_overhead_bytes,
    distinct_batches,
    optimizer_bytes,
    weight_bytes,
)
from .recommendation import Recommendation, benchmark_scores, recommend
from .skeleton import _probe_twin, _quiet, build_skeleton, load_config
from .structure import _Structure, read_structure
from .units import format_bytes, parse_budget

# --------------------------------------------------------------------------- plan rows

@dataclass
class Row:
    """One strategy x quantization: parameter counts and predicted bytes."""

    strategy: str
    quantization: str | None
    trainable: int = 0
    total: int = 0
    weights: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    activations: int = 0
    overhead: int = 0
    predicted_peak: int = 0
    cuda_peak: int = 0  # the same run on a CUDA device (torch.cuda.max_memory_allocated, no CUDA context)
    fits: bool | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.strategy + (f"-{self.quantization}" if self.quantization else "")

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Profile:
    """What a row's numbers are computed from; kept so a plan can be re-priced cheaply."""

    row: Row
    structure: _Structure | None
    weights: int = 0
    trainable_tensors: list[tuple[int, int]] = field(default_factory=list)  # (values, bytes per value)
    cuda_weights: int = 0  # the same in the dtypes a CUDA run uses (the checkpoint's)
    cuda_trainable_tensors: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Plan:
    """Rows per strategy x quantization, with the settings they were computed for."""

    model: str
    task: str
    batch_size: int
    seq_len: int
    device: str
    optimizer: str
    gradient_checkpointing: bool
    budget: int | None
    rows: list[Row]
    results_used: str | None = None
    scores: dict[tuple[str, str | None], float] | None = None
    scores_source: str | None = None  # where ``scores`` were measured, as the recommendation names it
    train_size: int | None = None
    max_steps: int | None = None
    adversarial: str | None = None
    adv_steps: int = 2
    next_len: int | None = None
    _profiles: list[_Profile] = field(default_factory=list, repr=False)
    _dtype: torch.dtype = field(default=torch.float32, repr=False)
    _cuda_dtype: torch.dtype = field(default=torch.float32, repr=False)
    _recommendation: Recommendation | None = field(default=None, repr=False)

    @property
    def recommend(self) -> Recommendation:
        if self._recommendation is None:
            self._recommendation = recommend(self)
        return self._recommendation

    def row(self, strategy: str, quantization: str | None = None) -> Row:
        for r in self.rows:
            if r.strategy == strategy and r.quantization == quantization:
                return r
        raise KeyError(f"No row for {strategy!r} with quantization {quantization!r} in this plan.")

    def reprice(self, batch_size: int | None = None, seq_len: int | None = None,
                gradient_checkpointing: bool | None = None) -> Plan:
        """The same plan at another batch size, sequence length or checkpointing setting."""
        other = Plan(self.model, self.task, batch_size or self.batch_size, seq_len or self.seq_len, self.device,
                     self.optimizer, self.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing,
                     self.budget, [], self.results_used, self.scores, self.scores_source, self.train_size,
                     self.max_steps, self.adversarial, self.adv_steps, self.next_len if seq_len is None else None,
                     _dtype=self._dtype, _cuda_dtype=self._cuda_dtype)
        for p in self._profiles:
            row = copy.deepcopy(p.row)
            other._profiles.append(dataclasses.replace(p, row=row))
            other.rows.append(row)
            _price(other, other._profiles[-1])
        return other

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "task": self.task, "batch_size": self.batch_size, "seq_len": self.seq_len,
            "device": self.device, "optimizer": self.optimizer, "gradient_checkpointing": self.gradient_checkpointing,
            "budget": self.budget, "train_size": self.train_size, "max_steps": self.max_steps,
            "adversarial": self.adversarial, "adv_steps": self.adv_steps, "next_len": self.next_len, "rows": [r.to_dict() for r in self.rows],
            "recommendation": self.recommend.to_dict(), "results_used": self.results_used,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self) -> str:
        """A fixed-width table in human units, then the recommendation."""
        head = ("strategy", "quant", "trainable", "trainable %", "weights", "grads", "optimizer", "activations",
                "overhead", "peak", "cuda peak", "fits")
        lines = []
        for r in self.rows:
            if r.error:
                lines.append((r.strategy, r.quantization or "-", "refused: " + _short(r.error)))
                continue
            pct = 100 * r.trainable / r.total if r.total else 0.0
            fits = "-" if r.fits is None else ("yes" if r.fits else "no")
            lines.append((r.strategy, r.quantization or "-", f"{r.trainable:,}", f"{pct:.3f}", format_bytes(r.weights),
                          format_bytes(r.gradients), format_bytes(r.optimizer_states), format_bytes(r.activations),
                          format_bytes(r.overhead), format_bytes(r.predicted_peak), format_bytes(r.cuda_peak), fits))
        widths = [max(len(head[c]), *(len(x[c]) for x in lines if len(x) == len(head))) for c in range(len(head))]
        right = {2, 3, 4, 5, 6, 7, 8, 9, 10}

        def fmt(cells):
            if len(cells) != len(head):
                return "  ".join((cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2]))
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        budget = f", budget {format_bytes(self.budget)}" if self.budget else ""
        title = (f"peftkit plan: {self.model} ({self.task}), batch {self.batch_size} x seq {self.seq_len}, "
                 f"{self.optimizer}, {self.device}{', gradient checkpointing' if self.gradient_checkpointing else ''}{budget}")
        out = [title, "", fmt(head), "  ".join("-" * w for w in widths)] + [fmt(x) for x in lines]
        out += ["", self.cuda_note()]
        if note := self.precision_note():
            out += ["", note]
        out += ["", "Recommendation: " + str(self.recommend)]
        return "\n".join(line.rstrip() for line in out)

    def __str__(self) -> str:
        return self.to_table()

    def cuda_note(self) -> str:
        """What the "cuda peak" column assumes."""
        dtype = str(self._cuda_dtype).removeprefix("torch.")
        return (f"cuda peak: the same run on one CUDA GPU, as torch.cuda.max_memory_allocated counts it: frozen weights "
                f"in {dtype} (the checkpoint's dtype), adapters, gradients and AdamW states in float32 (full "
                f"fine-tuning: {dtype}), fused attention, no process RSS; add ~{CUDA_CONTEXT_BYTES // 2**20} MiB of CUDA "
                "context for what nvidia-smi shows, and the caching allocator's reserve for max_memory_reserved.")

    def precision_note(self) -> str:
        """What a CPU plan means where peftkit trains under bf16 autocast by default ("" elsewhere)."""
        from ..precision import default_mixed_precision

        if self.device != "cpu" or default_mixed_precision(on_cpu=True) != "bf16":
            return ""
        return ("peak: priced for float32 training. This CPU has native bfloat16, so peftkit trains under bf16 "
                "autocast by default: fewer activation bytes, but with batches of varying length the allocator keeps "
                "more (on the bf16 benchmark cells these predictions were off by at most 20%: "
                "benchmarks/results/planner_check.md). --mixed-precision no trains in float32.")


def _short(error: str) -> str:
    first = error.split(". ")[0].split("\n")[0]
    return first if len(first) <= 150 else first[:147] + "..."


FIRST_STEP_NOTE = "peak at the first step"


def _price(plan: Plan, profile: _Profile) -> None:
    row = profile.row
    if row.error:
        return
    row.notes = [n for n in row.notes if not n.startswith(FIRST_STEP_NOTE)]  # a repriced row says it anew
    parts = _parts(plan, profile, plan.device)
    row.weights, row.gradients, row.optimizer_states, row.activations, row.overhead = parts
    row.predicted_peak = sum(parts)
    row.cuda_peak = row.predicted_peak if plan.device == "cuda" else sum(_parts(plan, profile, "cuda"))
    row.fits = None if plan.budget is None else row.predicted_peak <= plan.budget


def _parts(plan: Plan, profile: _Profile, device: str) -> tuple[int, int, int, int, int]:
    """(weights, gradients, optimizer states, activations, overhead) of ``profile`` trained on ``device``."""
    row, structure = profile.row, profile.structure
    cuda = device == "cuda" and plan.device != "cuda"  # the CUDA column of a CPU plan: the CUDA dtypes
    weights = profile.cuda_weights if cuda else profile.weights
    tensors = profile.cuda_trainable_tensors if cuda else profile.trainable_tensors
    dtype = plan._cuda_dtype if cuda else plan._dtype
    # hidden states run in the model's dtype; k-bit preparation keeps norms and embeddings in float32
    act_size = 4 if row.quantization else _dtype_bytes(dtype)
    if plan.adversarial:  # the perturbation is added to the embeddings' output: gradients reach every block
        structure = dataclasses.replace(structure, input_grads=True, first_block=0.0)
    def step_activations(seq_len: int) -> tuple[int, int]:  # (all activations, one pass's)
        one = sum(activation_bytes(structure, plan.batch_size, seq_len, device, act_size, plan.gradient_checkpointing))
        return one + adversarial_bytes(adversarial_passes(plan.adversarial, plan.adv_steps), one, device), one

    activations, one_pass = step_activations(plan.seq_len)
    gradients = sum(n * size for n, size in tensors)
    states = optimizer_bytes(tensors, plan.optimizer)
    if device == "cpu":
        batches = distinct_batches(plan.batch_size, plan.seq_len, plan.train_size, plan.max_steps)
        overhead = cpu_overhead_bytes(batches, one_pass)
        if plan.next_len and plan.next_len < plan.seq_len:
            # peftkit's sampler trains the longest batch first, before the optimizer has made its states (AdamW
            # makes them at its first step, after the backward pass freed the activations): that step needs
            # the runtime beside it, and the blocks it frees then serve the shorter batches. What the allocator
            # keeps after differently shaped batches builds up on the later steps, whose longest padded length
            # is next_len. The peak is the larger of the two.
            later, later_pass = step_activations(plan.next_len)
            later_overhead = cpu_overhead_bytes(batches, later_pass)
            if activations + CPU_RUNTIME_BYTES > states + later + later_overhead:
                states, overhead = 0, CPU_RUNTIME_BYTES
                row.notes.append(f"{FIRST_STEP_NOTE} ({plan.seq_len} tokens, before the optimizer states)")
            else:
                activations, overhead = later, later_overhead
        if row.quantization:
            constant, share = KBIT_RETAINED[row.quantization]
            # a linear fit over two model sizes (its 8-bit constant is negative): retained memory is never below 0
            overhead += max(0, int(constant + share * 4 * structure.quantized_values))
    else:
        overhead = OVERHEAD_BYTES[device]
    return weights, gradients, states, activations, overhead


# --------------------------------------------------------------------------- plan()

def _check_choice(name: str, value: Any, valid: Iterable[Any]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"Unknown {name} {value!r}. Valid values: {', '.join(map(repr, valid))}.")


def _compute_dtype(config, device: str) -> torch.dtype:
    """fp32 on the CPU (what load_model uses); the checkpoint's dtype on CUDA."""
    if device == "cpu":
        return torch.float32
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def _sizes(wrapped, strategy: str, quantization: str | None, dtype: torch.dtype) -> tuple[int, list[tuple[int, int]]]:
    """(weight bytes, trainable tensors as (values, bytes per value)) with the model in ``dtype``."""
    frozen_dtype = torch.float32 if quantization else dtype
    trained_dtype = frozen_dtype if strategy == "full" else torch.float32
    size = _dtype_bytes(trained_dtype)
    return (weight_bytes(wrapped, frozen_dtype, trained_dtype),
            [(p.numel(), size) for p in wrapped.parameters() if p.requires_grad])


def plan(
    model: Any,
    task: str = "classification",
    batch_size: int = 32,
    seq_len: int = 128,
    strategies: Sequence[str] | None = None,
    quantization: Sequence[str | None] | str | None = QUANTIZATIONS,
    gradient_checkpointing: bool = False,
    optimizer: str = "adamw",
    budget: str | int | None = None,
    device: str = "cpu",
    num_labels: int | None = None,
    scores: Mapping[tuple[str, str | None], float] | None = None,
    results_dir: str | os.PathLike | None = None,
    scores_source: str | None = None,
    train_size: int | None = None,
    max_steps: int | None = None,
    adversarial: str | None = None,
    adv_steps: int = 2,
    next_len: int | None = None,
    **strategy_options: dict[str, Any],
) -> Plan:
    """Predict the peak training memory of every strategy x quantization for ``model``.

    ``model``: a hub id, a local directory with config.json, or a transformers config. Nothing
    but the config is read. ``seq_len`` is the padded length of the longest batch (the
    ``max_length`` you tokenize with, when batches reach it). ``quantization``: any of None,
    "8bit", "4bit" (one value or a sequence). ``budget``: bytes or a string like "16GiB";
    rows get ``fits`` and ``plan.recommend`` picks among those that fit. ``device``: "cpu" or
    "cuda" (sets dtypes, attention kernels and the overhead constant). ``strategy_options``:
    per-strategy options for `wrap`, e.g. ``lora={"r": 16}``. ``scores``: measured quality to
    rank strategies by, ``{(strategy, quantization): score}`` with higher better (what
    `benchmark_scores` returns); ``results_dir``: a folder of benchmark results to read them from
    instead. With neither, the recommendation follows `DEFAULT_ORDER` (no file is read).
    ``scores_source``: where the scores were measured, as the recommendation names it (default: the
    results folder read, else "the scores passed in").
    ``train_size`` (examples) and ``max_steps``: how many differently padded batches the run sees,
    which sets what the CPU allocator keeps (`distinct_batches`); unknown: a few hundred steps.
    ``adversarial`` ("fgm", "pgd", "freelb") and ``adv_steps``: the extra passes of adversarial
    training (TrainConfig's options of the same names). ``next_len``: the padded length of the longest
    batch after the first, when known (peftkit's sampler trains the longest batch first; a benchmark
    cell reads it from its data): on the CPU the peak is then the larger of the first step at
    ``seq_len`` and the later steps at ``next_len`` with what the allocator keeps after them.
    Unknown: every step may reach ``seq_len``. Every row also prices the same run on CUDA
    (``Row.cuda_peak``, in the checkpoint's dtype).
    """
    from ..parameters import count_parameters
    from ..strategies import STRATEGIES, wrap

    check_task(task)
    device = str(device).split(":")[0]  # "cuda:0" plans like "cuda"
    _check_choice("device", device, DEVICES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("adv_steps", adv_steps),
                        ("train_size", train_size or 1), ("max_steps", max_steps or 1), ("next_len", 1 if next_len is None else next_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    adversarial = None if adversarial in (None, "", "none") else adversarial
    if adversarial is not None:
        from ..adversarial import METHODS

        _check_choice("adversarial", adversarial, METHODS)
    quants = [quantization] if quantization is None or isinstance(quantization, str) else list(quantization)
    quants = [None if q in (None, "none", "None", "") else q for q in quants]
    for q in quants:
        _check_choice("quantization", q, QUANTIZATIONS)
    names = list(strategies) if strategies else list(STRATEGIES)
    for name in names:
        _check_choice("strategy", name, STRATEGIES)
    unknown = set(strategy_options) - set(names)
    if unknown:
        raise ValueError(f"Options given for strategies not planned: {sorted(unknown)}. Planned: {names}.")
    budget_bytes = parse_budget(budget)
    used = None
    if results_dir is not None:
        if scores is not None:
            raise ValueError("Pass scores= or results_dir= (a folder to read the scores from), not both.")
        scores, files = benchmark_scores(task, results_dir)
        used = ", ".join(files) if scores else None
        scores_source = scores_source or f"the benchmark results under {results_dir}"
    config = load_config(model, task, num_labels)
    label = str(model) if not hasattr(model, "to_dict") else getattr(config, "_name_or_path", "") or config.model_type
    result = Plan(label, task, batch_size, seq_len, device, optimizer, gradient_checkpointing, budget_bytes, [],
                  results_used=used, scores=dict(scores) if scores else None,
                  scores_source=(scores_source or "the scores passed in") if scores else None, train_size=train_size,
                  max_steps=max_steps, adversarial=adversarial, adv_steps=adv_steps, next_len=next_len,
                  _dtype=_compute_dtype(config, device), _cuda_dtype=_compute_dtype(config, "cuda"))
    twin = None
    twin_checked = False
    for q in quants:
        if q:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                for name in names:
                    row = Row(name, q, error='quantization needs bitsandbytes: pip install "bitsandbytes>=0.50"')
                    result.rows.append(row)
                    result._profiles.append(_Profile(row, None))
                continue
        for name in names:
            row = Row(name, q)
            profile = _Profile(row, None)
            options = dict(strategy_options.get(name, {}))
            try:
                skeleton = build_skeleton(config, task, q)
                with _quiet():
                    wrapped = wrap(skeleton, name, task=task, **options)
            except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
                row.error = str(err)
            else:
                if not twin_checked:
                    twin, twin_checked = _probe_twin(config, task), True
                if twin is not None:
                    try:
                        with _quiet():
                            wrap(twin(), name, task=task, **options)
                    except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
                        row.error = str(err)
                elif name in ("prefix", "prompt"):
                    row.notes.append("forward-time checks skipped: no miniature of this architecture could be built")
            if row.error is None:
                counts = count_parameters(wrapped)
                row.trainable, row.total = counts.trainable, counts.total
                profile.weights, profile.trainable_tensors = _sizes(wrapped, name, q, result._dtype)
                profile.cuda_weights, profile.cuda_trainable_tensors = _sizes(wrapped, name, q, result._cuda_dtype)
                profile.structure = read_structure(wrapped, config, task, q)
            result.rows.append(row)
            result._profiles.append(profile)
            _price(result, profile)
    return result
