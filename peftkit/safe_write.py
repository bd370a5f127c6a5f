"""Write a directory all at once, and never replace what peftkit did not write.

`atomic_directory` yields a temporary sibling (``.NAME.tmp-PID-HEX``) that is renamed into
place only when the block succeeds. It records the names it wrote in a hidden manifest
(``.peftkit-files.json``), so a later write into the same place knows which files are its own:

- a missing path or an empty directory is simply created;
- a directory peftkit wrote (a manifest, or a ``peftkit_config.json`` from before manifests)
  is replaced, and every entry peftkit did not write is carried into the new directory (hard
  links, else copies); an entry whose name the new content also writes is refused instead (in a
  checkpoint from before manifests, such an entry is taken as peftkit's own and replaced);
- anything else (a file, a symbolic link, a directory of other files) is refused with
  `OverwriteRefusedError`, before any work is done.

A process killed mid-save leaves ``.NAME.tmp-*`` (and, in a narrow window, ``.NAME.old-*``)
behind; `clean_stale_temporaries` removes them (restoring an ``.old`` one whose target is gone).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFEST_NAME = ".peftkit-files.json"
CONFIG_NAME = "peftkit_config.json"
# What a peftkit checkpoint written before manifests can hold (checked only for those).
LEGACY_OUTPUTS = (
    CONFIG_NAME, "adapter_config.json", "adapter_model.*", "config.json", "generation_config.json",
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
    "tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "added_tokens.json", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.*",
)
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<rest>[A-Za-z0-9_-]+)$")


class OverwriteRefusedError(FileExistsError, ValueError):
    """The path holds something peftkit did not write, so peftkit will not replace it."""


def _owned_names(folder: Path) -> set[str] | None:
    """Top-level names peftkit wrote in ``folder``; None when peftkit did not write the folder."""
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        try:
            names = json.loads(manifest.read_text())["files"]
            return {str(n) for n in names} | {MANIFEST_NAME}
        except (ValueError, KeyError, TypeError):
            return None  # a damaged manifest proves nothing: treat the folder as foreign
    if (folder / CONFIG_NAME).is_file():
        return {n.name for n in folder.iterdir() if any(fnmatch.fnmatch(n.name, p) for p in LEGACY_OUTPUTS)}
    return None


def _foreign_entries(target: Path, overwrite: bool) -> tuple[list[Path], bool]:
    """(entries to carry over when ``target`` is replaced, whether it predates manifests);
    raises when ``target`` must not be replaced."""
    if not os.path.lexists(target):
        return [], False
    if target.is_symlink() or not target.is_dir():
        kind = "a symbolic link" if target.is_symlink() else "a file"
        raise OverwriteRefusedError(
            f"{target} exists and is {kind}; peftkit only replaces directories it wrote itself. "
            "Save to another path, or move it away first."
        )
    entries = sorted(target.iterdir())
    if not entries:
        return [], False
    if not overwrite:
        raise OverwriteRefusedError(f"{target} already exists and overwrite=False. Save to another path.")
    owned = _owned_names(target)
    if owned is None:
        listing = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OverwriteRefusedError(
            f"{target} is a directory peftkit did not write (it holds {listing}); peftkit will not "
            "replace it. Save to a new path (or an empty directory), or move its files away first."
        )
    return [e for e in entries if e.name not in owned], not (target / MANIFEST_NAME).is_file()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry(entries: list[Path], into: Path, legacy: bool) -> None:
    """Put ``entries`` (not written by peftkit) into the new directory, refusing a name clash."""
    if legacy:  # no manifest: what the new checkpoint writes again was written by peftkit before
        entries = [e for e in entries if not os.path.lexists(into / e.name)]
    clash = [e.name for e in entries if os.path.lexists(into / e.name)]
    if clash:
        raise OverwriteRefusedError(
            f"{entries[0].parent} holds {', '.join(clash)}, which peftkit did not write, and the new "
            "checkpoint writes a file of the same name. Move it out of the way, or save to another path."
        )
    for entry in entries:
        dst = into / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dst)
        elif entry.is_dir():
            shutil.copytree(entry, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(dst))


def _sibling(target: Path, kind: str) -> Path:
    """A fresh ``.NAME.KIND-PID-HEX`` directory next to target, with the user's umask (not 0700)."""
    while True:
        path = target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    ``path`` may be missing, an empty directory or a directory peftkit wrote (files peftkit did
    not write in it are kept); anything else raises `OverwriteRefusedError` before the block
    runs. ``overwrite=False`` refuses any existing non-empty directory.
    """
    target = Path(path)
    _foreign_entries(target, overwrite)  # refuse early, before the caller does the work
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    try:
        yield tmp
        _umask_modes(tmp)
        written = sorted(p.name for p in tmp.iterdir())
        (tmp / MANIFEST_NAME).write_text(json.dumps({"written_by": "peftkit", "files": written}, indent=1) + "\n")
        foreign, legacy = _foreign_entries(target, overwrite)
        _carry(foreign, tmp, legacy)
        _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask_modes(folder: Path) -> None:
    """Give the files written into ``folder`` the user's umask (writers that go through a private
    temporary file, as safetensors does, leave them 0600)."""
    probe = folder / ".peftkit-mode-probe"
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for file in folder.rglob("*"):
        if file.is_file() and not file.is_symlink() and file.stat().st_mode & 0o777 == 0o600 != mode:
            file.chmod(mode)


def _swap(tmp: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike, names: Collection[str] | None = None) -> list[Path]:
    """Remove the leftovers of interrupted `atomic_directory` writes directly under ``folder``.

    Only directories named ``.NAME.tmp-*`` or ``.NAME.old-*`` are touched (with ``names``, only
    those whose NAME is one of them), and not those of a process still running. An ``.old`` directory whose ``NAME`` is missing (the process died
    between the two renames) is renamed back to ``NAME``; one whose ``NAME`` exists is deleted
    unless it holds files peftkit did not write that ``NAME`` lacks (then it is kept, with a
    warning). Returns the paths removed or restored.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    done: list[Path] = []
    found = [(m, p) for p in sorted(root.iterdir())
             if (m := _TEMPORARY.match(p.name)) and p.is_dir() and not p.is_symlink() and (names is None or m["name"] in names)]
    found.sort(key=lambda mp: mp[0]["kind"] != "old")  # restore .old ones before judging .tmp ones
    for match, path in found:
        pid = re.match(r"\d+", match["rest"])
        if pid and _alive(int(pid.group())):
            continue
        target = root / match["name"]
        if match["kind"] == "old" and not os.path.lexists(target):
            os.replace(path, target)
        elif match["kind"] == "old" and not _safe_to_drop(path, target):
            continue
        else:
            shutil.rmtree(path)
        done.append(path)
    return done


def _safe_to_drop(old: Path, target: Path) -> bool:
    owned = _owned_names(old) or set()
    missing = [p.name for p in old.iterdir() if p.name not in owned and not os.path.lexists(target / p.name)]
    if missing:
        warnings.warn(
            f"Kept {old}: it holds {', '.join(missing)}, which peftkit did not write and {target} lacks. "
            "Move those files out, then delete it.",
            stacklevel=3,
        )
    return not missing
