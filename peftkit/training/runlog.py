"""What a run tells as it trains: the rows of train_log.jsonl / .csv / the trackers (`RunLog`),
and the loss and throughput window between two rows (`Window`)."""

from __future__ import annotations

import csv
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class RunLog:
    """Rows of loss / lr / throughput / metrics: train_log.jsonl (appended), train_log.csv, trackers."""

    def __init__(self, output_dir: Path, accelerator, resumed: bool):
        self.rows: list[dict[str, Any]] = []
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.jsonl = output_dir / "train_log.jsonl"
        self.csv = output_dir / "train_log.csv"
        if self.main and not resumed:
            self.jsonl.unlink(missing_ok=True)

    def restore(self, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)
        if self.main:  # drop rows written after the checkpoint by the run that was killed
            self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.main:
            with self.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self._write_csv()
        if self.accelerator.trackers:
            scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(scalars, step=row["step"])

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k, v in row.items() if k not in columns and not isinstance(v, (dict, list))]
        with self.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)


class Window:
    """Mean loss and samples/s over the steps since the last log row, pauses excluded; and
    ``seconds()``: the time since the window was made, pauses excluded (the run's time in steps)."""

    def __init__(self):
        self.began, self.pauses = time.perf_counter(), 0.0
        self._reset()

    def _reset(self) -> None:
        self.loss, self.batches, self.samples, self.start = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: float, samples: int) -> None:
        self.loss, self.batches, self.samples = self.loss + loss, self.batches + 1, self.samples + samples

    def take(self) -> dict[str, float | None]:
        seconds = time.perf_counter() - self.start
        row = {
            "loss": self.loss / max(1, self.batches),
            "samples_per_second": round(self.samples / seconds, 2) if seconds > 0 else None,
        }
        self._reset()
        return row

    def seconds(self) -> float:
        return time.perf_counter() - self.began - self.pauses

    @contextmanager
    def paused(self):
        began = time.perf_counter()
        yield
        paused = time.perf_counter() - began
        self.start += paused
        self.pauses += paused
