"""Checkpoints never lose a user's files: safe saves, stale temporaries, clear load errors,
portable base records, real labels after merging, a quiet load."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import build_tiny, perturb_trainable, tiny_config
from helpers_loading import tiny_model_dir, word_tokenizer

import peftkit
from peftkit import checkpoint
from peftkit.checkpoint import (
    BaseModelNotFoundError,
    CheckpointError,
    OverwriteRefusedError,
    clean_stale_temporaries,
)

LABELS = ["neg", "mid", "pos"]
DEAD_PID = 999_999_999  # above any pid_max: no such process


def trained(base_dir: Path, strategy: str = "lora"):
    """A base loaded with real label names, wrapped and moved off its initial weights."""
    model = peftkit.load_model(str(base_dir), "classification", labels=LABELS)[0]
    wrapped = peftkit.wrap(model, strategy)
    perturb_trainable(wrapped)
    return wrapped.eval()


def saved(base_parent: Path, target: Path, strategy: str = "lora"):
    """(base folder, checkpoint saved from it, the trained model's logits on `batch`)."""
    base_dir = tiny_model_dir(base_parent, "bert", "classification", pad_token=True)
    wrapped = trained(base_dir, strategy)
    return base_dir, peftkit.save(wrapped, target), wrapped(**batch()).logits


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def batch():
    return {"input_ids": torch.tensor([[5, 9, 12, 7]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}


@pytest.fixture
def adapter_model():
    return peftkit.wrap(build_tiny("bert", "classification"), "adapter")


# ---- 1. save overwrites only what peftkit wrote


def test_save_refuses_an_existing_file(tmp_path, adapter_model):
    target = tmp_path / "results.csv"
    target.write_text("precious\n")
    with pytest.raises(OverwriteRefusedError, match="results.csv exists and is a file"):
        peftkit.save(adapter_model, target)
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # not hidden as .results.csv.old-PID


def test_save_refuses_a_directory_of_other_files(tmp_path, adapter_model):
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "chapter1.tex").write_text("text")
    with pytest.raises(OverwriteRefusedError, match=r"peftkit did not write \(it holds chapter1.tex\)"):
        peftkit.save(adapter_model, target)
    assert sorted(p.name for p in target.iterdir()) == ["chapter1.tex"]
    assert leftovers(tmp_path) == []


def test_save_into_an_empty_directory(tmp_path, adapter_model):
    (tmp_path / "empty").mkdir()
    path = peftkit.save(adapter_model, tmp_path / "empty")
    assert (path / "peftkit_config.json").is_file()


def test_resave_keeps_files_peftkit_did_not_write(tmp_path, adapter_model):
    path = peftkit.save(adapter_model, tmp_path / "ckpt")
    (path / "notes.txt").write_text("my notes")
    (path / "plots").mkdir()
    (path / "plots" / "loss.png").write_bytes(b"png")
    before = (path / "adapter_model.safetensors").read_bytes()
    perturb_trainable(adapter_model)
    peftkit.save(adapter_model, path)
    assert (path / "notes.txt").read_text() == "my notes"
    assert (path / "plots" / "loss.png").read_bytes() == b"png"
    assert (path / "adapter_model.safetensors").read_bytes() != before  # the checkpoint itself was replaced
    manifest = json.loads((path / ".peftkit-files.json").read_text())
    assert "notes.txt" not in manifest["files"] and "peftkit_config.json" in manifest["files"]
    peftkit.save(adapter_model, path)  # and again: still the user's, still kept
    assert (path / "notes.txt").read_text() == "my notes"
    assert leftovers(tmp_path) == []


def test_resave_refuses_a_user_file_with_the_name_of_a_new_output(tmp_path, adapter_model):
    path = peftkit.save(adapter_model, tmp_path / "ckpt")  # no tokenizer the first time
    (path / "tokenizer_config.json").write_text('{"mine": true}')
    with pytest.raises(OverwriteRefusedError, match="tokenizer_config.json, which peftkit did not write"):
        peftkit.save(adapter_model, path, tokenizer=word_tokenizer(pad=True))
    assert (path / "tokenizer_config.json").read_text() == '{"mine": true}'
    assert leftovers(tmp_path) == []


def test_overwrite_false_refuses_an_existing_checkpoint(tmp_path, adapter_model):
    path = peftkit.save(adapter_model, tmp_path / "ckpt")
    with pytest.raises(OverwriteRefusedError, match="overwrite=False"):
        peftkit.save(adapter_model, path, overwrite=False)


def test_checkpoint_from_before_manifests_is_replaced_keeping_user_files(tmp_path, tiny_base):
    base, _ = tiny_base("bert", "classification")
    wrapped = peftkit.wrap(base, "lora")
    path = peftkit.save(wrapped, tmp_path / "ckpt")
    (path / ".peftkit-files.json").unlink()  # as an older peftkit wrote it
    (path / "notes.txt").write_text("mine")
    peftkit.save(wrapped, path)
    assert (path / "notes.txt").read_text() == "mine"
    assert {"README.md", "adapter_config.json", ".peftkit-files.json"} <= {p.name for p in path.iterdir()}


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_directories_and_files_get_the_users_umask(tmp_path, adapter_model, umask):
    old = os.umask(umask)
    try:
        path = peftkit.save(adapter_model, tmp_path / "runs" / "ckpt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (tmp_path / "runs").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (path / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


# ---- 7. failed saves and stale temporaries


def test_failed_save_pretrained_keeps_the_old_checkpoint_and_leaves_no_temporary(tmp_path, tiny_base, monkeypatch):
    from peft import PeftModel

    wrapped = peftkit.wrap(tiny_base("bert", "classification")[0], "lora")
    path = peftkit.save(wrapped, tmp_path / "ckpt")
    (path / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        peftkit.save(wrapped, path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base-bert-classification", "ckpt"]


def test_clean_stale_temporaries_removes_only_peftkits_leftovers(tmp_path):
    def folder(name: str, *files: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        for file in files:
            (path / file).write_text(file)
        return path

    folder("best", "peftkit_config.json")
    stale = [folder(f".best.tmp-{DEAD_PID}-0a1b2c3d", "adapter_model.safetensors"),
             folder(".best.tmp-k3j_h5g6", "peftkit_config.json")]  # tempfile.mkdtemp's names, no pid
    live = folder(f".best.tmp-{os.getpid()}-00ff00ff")  # a save in progress
    interrupted = folder(f".final.old-{DEAD_PID}-deadbeef", "peftkit_config.json")  # died between the renames
    foreign = [folder(".cache", "x"), folder(".best.tmpfoo"), folder("best.tmp-1")]
    (tmp_path / f".final.tmp-{DEAD_PID}").write_text("a file, not a directory")

    done = clean_stale_temporaries(tmp_path)
    assert sorted(done) == sorted(stale + [interrupted])
    assert not any(p.exists() for p in stale) and live.is_dir() and not interrupted.exists()
    assert (tmp_path / "final" / "peftkit_config.json").is_file()  # restored, not deleted
    assert all(p.is_dir() for p in foreign) and (tmp_path / f".final.tmp-{DEAD_PID}").is_file()
    assert clean_stale_temporaries(tmp_path / "missing") == []


def test_clean_stale_temporaries_keeps_an_old_copy_holding_user_files(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "peftkit_config.json").write_text("{}")
    old = tmp_path / f".best.old-{DEAD_PID}-12345678"
    old.mkdir()
    (old / "peftkit_config.json").write_text("{}")
    (old / "notes.txt").write_text("only copy")
    with pytest.warns(UserWarning, match="Kept .*notes.txt, which peftkit did not write"):
        assert clean_stale_temporaries(tmp_path) == []
    assert (old / "notes.txt").read_text() == "only copy"
    shutil.copy(old / "notes.txt", tmp_path / "best" / "notes.txt")
    assert clean_stale_temporaries(tmp_path) == [old]


# ---- 9. damaged checkpoints and a base that moved


def test_truncated_weights_name_the_file(tmp_path, tiny_base):
    base, _ = tiny_base("bert", "classification")
    path = peftkit.save(peftkit.wrap(base, "lora"), tmp_path / "ckpt")
    weights = path / "adapter_model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors is damaged .*truncated or corrupted"):
        peftkit.load(path)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors is missing: the checkpoint .* is incomplete"):
        peftkit.load(path)


def test_damaged_peft_config_and_full_weights_name_the_file(tmp_path, tiny_base):
    base, _ = tiny_base("bert", "classification")
    lora = peftkit.save(peftkit.wrap(base, "lora"), tmp_path / "lora")
    (lora / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"adapter_config.json is damaged \(JSONDecodeError"):
        peftkit.load(lora)
    full = peftkit.save(peftkit.wrap(build_tiny("bert", "classification"), "full"), tmp_path / "full")
    (full / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match=r"model.safetensors is damaged \(SafetensorError"):
        peftkit.load(full)


def test_corrupt_config_names_the_file(tmp_path, adapter_model):
    path = peftkit.save(adapter_model, tmp_path / "ckpt")
    (path / "peftkit_config.json").write_text('{"strategy": "adapter", "form')
    with pytest.raises(CheckpointError, match=r"peftkit_config.json is damaged \(JSONDecodeError"):
        peftkit.load(path)
    (path / "peftkit_config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="peftkit_config.json is damaged: it lacks the 'strategy'"):
        checkpoint.read_config(path)


def test_moved_base_says_what_was_tried_and_how_to_pass_it(tmp_path):
    base_dir, path, expected = saved(tmp_path / "models", tmp_path / "runs" / "ckpt")
    moved = base_dir.rename(tmp_path / "elsewhere")
    with pytest.raises(BaseModelNotFoundError, match=rf"{base_dir}, which is not there any more. Tried: {base_dir}, "
                       r".*base_model=PATH_OR_HUB_ID.*--base-model PATH_OR_HUB_ID"):
        peftkit.load(path)
    loaded = peftkit.load(path, base_model=moved)
    torch.testing.assert_close(loaded(**batch()).logits, expected)
    assert peftkit.wrap_info(loaded).base_model == str(moved)  # a re-save records where it is now


def test_a_base_model_edited_by_hand_in_the_config_is_used(tmp_path):
    base_dir, path, expected = saved(tmp_path / "models", tmp_path / "runs" / "ckpt")
    moved = base_dir.rename(tmp_path / "elsewhere")
    meta = json.loads((path / "peftkit_config.json").read_text())
    (path / "peftkit_config.json").write_text(json.dumps({**meta, "base_model": str(moved)}))  # the record still says base_dir
    loaded = peftkit.load(path)
    torch.testing.assert_close(loaded(**batch()).logits, expected)
    assert peftkit.wrap_info(loaded).base_model == str(moved)


def test_hub_id_that_cannot_be_loaded_says_how_to_pass_the_base(tmp_path, adapter_model):
    path = peftkit.save(adapter_model, tmp_path / "ckpt")
    meta = json.loads((path / "peftkit_config.json").read_text())
    meta.update(base_model="someorg/not-cached", base_model_source={"kind": "hub", "id": "someorg/not-cached"})
    (path / "peftkit_config.json").write_text(json.dumps(meta))
    with pytest.raises(BaseModelNotFoundError, match=r"recorded in .*'someorg/not-cached', could not be loaded.*base_model="):
        peftkit.load(path)


# ---- 12. portable checkpoints


def test_copied_checkpoint_finds_its_base_next_to_it(tmp_path):
    base_dir, path, expected = saved(tmp_path / "machine-a", tmp_path / "machine-a" / "ckpt")
    source = json.loads((path / "peftkit_config.json").read_text())["base_model_source"]
    assert source["kind"] == "local" and source["path"] == str(base_dir) and source["folder_name"] == base_dir.name
    assert source["fingerprint"].startswith("sha256:")
    (tmp_path / "machine-a").rename(tmp_path / "machine-b")  # both copied elsewhere, side by side
    loaded = peftkit.load(tmp_path / "machine-b" / "ckpt")
    torch.testing.assert_close(loaded(**batch()).logits, expected)


def test_hub_ids_are_recorded_as_ids(tmp_path, adapter_model):
    adapter_model.peftkit_info.base_model = "prajjwal1/bert-tiny"  # not a local path
    path = peftkit.save(adapter_model, tmp_path / "ckpt")
    meta = json.loads((path / "peftkit_config.json").read_text())
    assert meta["base_model"] == "prajjwal1/bert-tiny"
    assert meta["base_model_source"] == {"kind": "hub", "id": "prajjwal1/bert-tiny"}


def test_other_base_warns_but_loads(tmp_path):
    base_dir = tiny_model_dir(tmp_path, "bert", "classification", pad_token=True)
    path = peftkit.save(trained(base_dir), tmp_path / "ckpt")
    other = tmp_path / "other-bert"
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_config(tiny_config("bert", hidden_dropout_prob=0.3)).save_pretrained(other)
    with pytest.warns(UserWarning, match=f"{other} differs from the one .* was trained on"):
        peftkit.load(path, base_model=other)
    with pytest.warns(UserWarning, match=f"{other} differs from the one"):  # a model object: its folder is read
        peftkit.load(path, base_model=AutoModelForSequenceClassification.from_pretrained(other, num_labels=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peftkit.load(path, base_model=base_dir)  # the same base: no warning


def test_checkpoint_with_only_base_model_still_loads(tmp_path):
    base_dir, path, expected = saved(tmp_path, tmp_path / "ckpt", "bitfit")
    meta = json.loads((path / "peftkit_config.json").read_text())
    del meta["base_model_source"]
    (path / "peftkit_config.json").write_text(json.dumps(meta))
    (path / ".peftkit-files.json").unlink()
    torch.testing.assert_close(peftkit.load(path)(**batch()).logits, expected)
    shutil.rmtree(base_dir)
    with pytest.raises(BaseModelNotFoundError, match="no fingerprint recorded"):
        peftkit.load(path)


def test_merged_model_shows_real_labels_in_a_pipeline(tmp_path):
    from transformers import pipeline

    base_dir = tiny_model_dir(tmp_path, "bert", "classification", pad_token=True)
    path = peftkit.save(trained(base_dir), tmp_path / "ckpt", tokenizer=word_tokenizer(pad=True))
    merged = peftkit.merge(peftkit.load(path))
    merged.save_pretrained(tmp_path / "merged")
    word_tokenizer(pad=True).save_pretrained(tmp_path / "merged")
    classify = pipeline("text-classification", model=str(tmp_path / "merged"), top_k=None)
    assert sorted(row["label"] for row in classify(["w1 w2 w3"])[0]) == sorted(LABELS)


def test_auto_peft_model_needs_the_labels_passed(tmp_path):
    """AutoPeftModel builds the base from the base's own config; no checkpoint file changes that."""
    from peft import AutoPeftModelForSequenceClassification

    base_dir = tiny_model_dir(tmp_path, "bert", "classification", pad_token=True)
    path = peftkit.save(trained(base_dir), tmp_path / "ckpt")
    labels = dict(enumerate(LABELS))
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=labels, label2id={v: k for k, v in labels.items()})
    assert model.config.id2label == labels


# ---- 14. a quiet load


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    handler, logger = Collect(), logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.WARNING)  # what a user sees by default (an earlier test may have lowered it)
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def headless_base(folder: Path, drop: str | None = None) -> Path:
    """A tiny BERT backbone without a classification head (as on the hub), optionally missing a weight."""
    from safetensors.torch import load_file, save_file

    build_tiny("bert", "classification").bert.save_pretrained(folder)
    word_tokenizer(pad=True).save_pretrained(folder)
    if drop:
        tensors = load_file(folder / "model.safetensors")
        del tensors[drop]
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("strategy", ["lora", "bitfit"])
def test_load_does_not_print_the_false_missing_head_report(tmp_path, transformers_log, strategy):
    base_dir = headless_base(tmp_path / "backbone")
    path = peftkit.save(trained(base_dir, strategy), tmp_path / "ckpt")
    assert any("LOAD REPORT" in m and "classifier.weight" in m for m in transformers_log)  # training showed it
    transformers_log.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peftkit.load(path)
    assert not any("LOAD REPORT" in m or "MISSING" in m for m in transformers_log)
    assert not any("is_gradient_checkpointing" in str(w.message) for w in caught)


def test_load_still_shows_a_report_about_weights_the_checkpoint_does_not_restore(tmp_path, transformers_log):
    base_dir = headless_base(tmp_path / "backbone")
    path = peftkit.save(trained(base_dir), tmp_path / "ckpt")
    broken = headless_base(tmp_path / "broken", drop="encoder.layer.0.output.dense.weight")
    transformers_log.clear()
    with pytest.warns(UserWarning, match="differs from the one"):  # its fingerprint differs, too
        peftkit.load(path, base_model=broken)
    assert any("LOAD REPORT" in m and "bert.encoder.layer.0.output.dense.weight" in m for m in transformers_log)
