"""What an export did and checked (`ExportReport`), the refusal it raises (`ExportRefused`), and the
guard that keeps an export from replacing anything peftkit did not write."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARKER = "peftkit_export.json"  # written into every export; marks the directory as replaceable


@dataclass
class ExportReport:
    """The outcome of `peftkit.export.export`: the checks run on the written files, and numbers.

    ``checks`` holds ``{"check", "ok", "detail"}`` rows; a failed check is also a line of
    ``problems`` (an export with problems is refused, so a returned report has none). ``metrics``
    holds the measured numbers (largest logit difference, eval accuracies); ``serve`` how to use it.
    """

    format: str
    checkpoint: str
    output: str
    strategy: str | None = None
    task: str | None = None
    written: bool = False
    checks: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    serve: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record one check; a failed one becomes a problem."""
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        if not ok:
            self.problems.append(f"{name}: {detail}" if detail else name)
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def text(self) -> str:
        """The lines `peftkit export` prints."""
        head = "written to" if self.written else "NOT written to"
        lines = [f"peftkit export: {self.format} export of {self.checkpoint} ({self.strategy}, {self.task}) {head} {self.output}"]
        lines += [f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}" + (f": {c['detail']}" if c["detail"] else "") for c in self.checks]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  serve: {s}" for s in self.serve]
        return "\n".join(lines)


class ExportRefused(ValueError):
    """An export that cannot be written, or that failed its checks; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], report: ExportReport | None = None, what: str = "") -> None:
        self.problems = list(problems)
        self.report = report
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{what or 'export refused'}; nothing was written:\n{lines}")


def guard_output(output: Path, checkpoint: Path) -> None:
    """Refuse an output path that holds anything but an earlier peftkit export (or an empty directory)."""
    if output.resolve() == checkpoint.resolve() or checkpoint.resolve() in output.resolve().parents:
        raise ExportRefused([f"the output {output} is the checkpoint itself or lies inside it; choose a separate directory"])
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise ExportRefused([f"{output} exists and is not a directory; peftkit never overwrites a file it did not write. "
                             "Choose another output path or remove it yourself"])
    if output.is_dir() and any(output.iterdir()) and not (output / MARKER).is_file():
        raise ExportRefused([f"{output} exists and was not written by peftkit export (it has no {MARKER}); "
                             "peftkit never overwrites it. Choose a new output directory or remove it yourself"])


def write_marker(folder: Path, report: ExportReport) -> None:
    report.files = sorted(p.name for p in folder.iterdir()) + [MARKER]
    (folder / MARKER).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
