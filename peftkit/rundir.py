"""The output directory of a training run: one run at a time, no silent overwrite, no leftovers.

- `output_lock(dir)`: an exclusive ``fcntl.flock`` on ``dir/.peftkit.lock`` (the file holds the
  holder's PID). A second run on the same directory fails at once naming that PID; the kernel
  drops the lock when its process dies, so a killed run never blocks the next one.
- `prepare_output_dir(dir, resume=..., overwrite=...)`: under the lock, removes what interrupted
  saves left behind (`clean_temporaries`), then refuses to train over an earlier run
  (``metrics.json``, ``best/``, ``final/``, ``checkpoints/step-N``) unless told to resume it or
  to replace it; replacing removes only the files and folders peftkit writes (`OWN_FILES`,
  `OWN_DIRS`), never anything else in the directory.
- `run_identity` / `identity_differences`: what a checkpoint records about its run, and the
  settings in which a resumed run differs from it (`NOT_COMPARED` may change on resume).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

LOCK_NAME = ".peftkit.lock"
# Files and folders that a training run writes at the top of its output directory.
OWN_FILES = ("metrics.json", "train_log.jsonl", "train_log.csv", "train_log.png", "run_config.yaml")
OWN_DIRS = ("best", "final")
# Temporary name of an unfinished `_Run.save_checkpoint` (atomic_directory's are safe_write's).
CHECKPOINT_TEMPORARY = ".tmp-step-*"
# TrainConfig fields a resumed run may change: where and how it reports, how it keeps
# checkpoints, where it runs. Every other field (seed, lr, epochs, max_steps, batch size, schedule,
# evaluation and early stopping, max_length, precision...) must match the checkpoint's run.
NOT_COMPARED = frozenset({
    "output_dir", "resume_from_checkpoint", "overwrite", "progress", "log_every", "eval_batch_size", "report_to",
    "sample_generations", "save_steps", "save_total_limit", "device", "cpu", "gradient_checkpointing",
    "compile", "fast_dropout",
})


class OutputDirBusy(RuntimeError):
    """Another process is training into the same output directory."""


class OutputDirNotEmpty(RuntimeError):
    """The output directory holds an earlier run, and neither resume nor overwrite was asked for."""


class ResumeMismatch(ValueError):
    """The checkpoint to resume was written by a run with other settings, model or data."""


# --------------------------------------------------------------------------- the lock


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextmanager
def output_lock(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``output_dir`` (created, with the umask's mode, if missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; run unlocked
        yield Path(output_dir)
        return
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"The output directory {folder} is a file. Choose a directory (--output DIR).")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputDirBusy(
                f"{folder} is in use by another peftkit run (process {holder}, see {path}). Wait for it to end, "
                f"stop it (kill {holder}), or train into another output directory (--output DIR)."
            ) from None
        try:  # the previous holder may have removed the file between our open and our lock
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        path.unlink(missing_ok=True)  # removed while still held: a waiting opener sees the inode change
        os.close(fd)


# --------------------------------------------------------------------------- what is there


def clean_temporaries(output_dir: str | os.PathLike) -> list[str]:
    """Remove what interrupted saves left in ``output_dir``; returns what was removed or restored.

    The model folders' leftovers (``.best.tmp-*``, ``.best.old-*``, likewise for ``final``) go
    through `peftkit.safe_write.clean_stale_temporaries`, which restores an ``.old`` folder whose
    target is missing (a save killed between its two renames); then ``checkpoints/.tmp-step-*``.
    Nothing else is touched. Call it only while holding `output_lock`.
    """
    from .safe_write import clean_stale_temporaries

    folder = Path(output_dir)
    done = [p.name for p in clean_stale_temporaries(folder, names=OWN_DIRS)]
    for path in sorted((folder / "checkpoints").glob(CHECKPOINT_TEMPORARY)):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        done.append(str(path.relative_to(folder)))
    return done


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "trainer_state.json").is_file()


def _is_saved_model(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("peftkit_config.json", "config.json"))


def _step_number(path: Path) -> int:
    number = path.name.split("-", 1)[1]
    return int(number) if number.isdigit() else -1


def earlier_run(output_dir: str | os.PathLike) -> dict[str, list[str]]:
    """peftkit's outputs in ``output_dir``: ``finished`` (metrics, models), ``checkpoints``, ``logs``."""
    folder = Path(output_dir)
    steps = sorted((p for p in (folder / "checkpoints").glob("step-*") if _is_checkpoint(p)), key=_step_number)
    return {
        "finished": [n for n in ("metrics.json",) if (folder / n).is_file()] + [f"{n}/" for n in OWN_DIRS if (folder / n).exists()],
        "checkpoints": [f"checkpoints/{p.name}" for p in steps],
        "logs": [n for n in OWN_FILES if n != "metrics.json" and (folder / n).is_file()],
    }


def remove_earlier_run(output_dir: str | os.PathLike) -> list[str]:
    """Remove peftkit's own outputs from ``output_dir`` (never other files); returns what went."""
    folder, removed = Path(output_dir), []
    for name in OWN_DIRS:
        path = folder / name
        if path.exists() and not _is_saved_model(path):
            raise OutputDirNotEmpty(
                f"{path} exists but is not a model peftkit saved (no peftkit_config.json or config.json), so "
                "peftkit leaves it alone. Move it away, or train into another output directory (--output DIR)."
            )
    for name in OWN_DIRS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
            removed.append(f"{name}/")
    for path in sorted((folder / "checkpoints").glob("step-*"), key=_step_number):
        if _is_checkpoint(path):
            shutil.rmtree(path)
            removed.append(f"checkpoints/{path.name}")
    try:
        (folder / "checkpoints").rmdir()  # only when nothing else is in it
    except OSError:
        pass
    for name in OWN_FILES:
        if (folder / name).is_file():
            (folder / name).unlink()
            removed.append(name)
    return removed


def prepare_output_dir(output_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> list[str]:
    """Make ``output_dir`` ready for a run (hold `output_lock` first); returns notes to print.

    Refuses (`OutputDirNotEmpty`) to start a new run where an earlier one left a model, metrics or
    checkpoints, unless ``resume`` (go on from a checkpoint) or ``overwrite`` (remove peftkit's
    outputs first). Logs alone (a run stopped before it saved anything) are replaced.
    """
    folder, notes = Path(output_dir), []
    cleaned = clean_temporaries(folder)
    if cleaned:
        notes.append(f"removed what an interrupted save left in {folder}: {', '.join(cleaned)}")
    if resume:
        return notes
    found = earlier_run(folder)
    if (found["finished"] or found["checkpoints"]) and not overwrite:
        there = ", ".join(found["finished"] + found["checkpoints"])
        if found["checkpoints"]:
            what = "a finished run" if found["finished"] else "an unfinished run"
            fix = ("Continue it with --resume (resume_from_checkpoint=True; or --resume CHECKPOINT for one of them), "
                   "replace it with --overwrite (overwrite=True)")
        else:
            what, fix = "a finished run", "Replace it with --overwrite (overwrite=True)"
        raise OutputDirNotEmpty(
            f"{folder} already holds {what} ({there}); peftkit will not train over it. {fix}, "
            "or train into another output directory (--output DIR)."
        )
    removed = remove_earlier_run(folder)
    if removed and overwrite and (found["finished"] or found["checkpoints"]):
        notes.append(f"overwrite: removed the earlier run's {', '.join(removed)} from {folder}")
    return notes


# --------------------------------------------------------------------------- run identity


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_digest(dataset) -> dict[str, Any]:
    """Rows and a sha256 of a `datasets.Dataset`'s content (column names and values, in order)."""
    digest = hashlib.sha256(json.dumps(sorted(dataset.column_names)).encode())
    for batch in dataset.with_format(None).iter(batch_size=4096):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return {"rows": len(dataset), "sha256": digest.hexdigest()}


def model_identity(model) -> dict[str, Any]:
    """Base model, class, strategy and options of a (wrapped) model."""
    from .strategies import wrap_info

    info = wrap_info(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = (info.base_model if info else None) or getattr(getattr(base, "config", None), "_name_or_path", None) or None
    return {
        "base_model": str(name) if name else None,
        "model_class": type(base).__name__,
        "strategy": info.strategy if info else "full",
        "options": json.loads(json.dumps(info.options if info else {}, default=str)),
    }


def run_identity(config, model, task, data) -> dict[str, Any]:
    """What decides a run's result: the compared TrainConfig fields, model, strategy, options,
    task, and each data split's content digest. Saved with every checkpoint."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_COMPARED}
    splits = {name: dataset_digest(data[name]) for name in ("train", "validation", "test") if name in data}
    return json.loads(json.dumps({
        "config": settings, **model_identity(model), "task": getattr(task, "name", str(task)), "data": splits,
    }, default=str))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if key == "config":
            out.update(_flatten(value))
        elif key == "data" and isinstance(value, dict):
            out.update({f"data.{split}": v for split, v in value.items()})
        else:
            out[prefix + key] = value
    return out


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every compared setting that differs."""
    old, new = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if key in NOT_COMPARED or old.get(key) == new.get(key):
            continue
        if key.startswith("data."):
            a, b = old.get(key) or {}, new.get(key) or {}
            lines.append(f"{key}: {a.get('rows')} rows (sha256 {str(a.get('sha256'))[:12]}) -> "
                         f"{b.get('rows')} rows (sha256 {str(b.get('sha256'))[:12]})")
        else:
            lines.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return lines


def check_resume_identity(folder: Path, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse (`ResumeMismatch`) a checkpoint written by a run that differs from this one."""
    if saved is None:
        return  # written before checkpoints recorded their run: trust the user
    differences = identity_differences(saved, current)
    if differences:
        raise ResumeMismatch(
            f"Checkpoint {folder} belongs to another run: {'; '.join(differences)}. Resume with the settings, model "
            "and data of the run that wrote it, or start a new run (--overwrite to replace it, or another --output). "
            f"Settings that may change on resume: {', '.join(sorted(NOT_COMPARED))}."
        )
