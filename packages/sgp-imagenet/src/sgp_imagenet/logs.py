"""Training logs: a per-rank CSV in the 2019 layout, and a JSON summary.

The CSV keeps the 2019 scripts' columns, so plotting scripts written for them still
parse it: per iteration, batch time (``BT``), communication-inclusive step time
(``NT``), data time (``DT``), loss and top-1/top-5 precision, each with its running
average (and standard deviation for times); validation rows carry ``val`` in the last
column and the validation loss and precisions.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["CSV_COLUMNS", "CsvLog", "Meter", "write_summary"]

CSV_COLUMNS = [
    "Epoch",
    "itr",
    "BT(s)",
    "avg:BT(s)",
    "std:BT(s)",
    "NT(s)",
    "avg:NT(s)",
    "std:NT(s)",
    "DT(s)",
    "avg:DT(s)",
    "std:DT(s)",
    "Loss",
    "avg:Loss",
    "Prec@1",
    "avg:Prec@1",
    "Prec@5",
    "avg:Prec@5",
    "val",
]
"""The header of every rank's CSV log: the 2019 scripts' columns, in their order."""


class Meter:
    """Running mean and standard deviation of a value (Welford's method).

    Attributes:
        count: Values added so far (a value added with weight ``n`` counts ``n`` times).
        mean: Their running mean.
        last: The value added last.
    """

    def __init__(self) -> None:
        self.count, self.mean, self._m2, self.last = 0, 0.0, 0.0, 0.0

    def update(self, value: float, n: int = 1) -> None:
        """Add ``value`` with weight ``n``."""
        self.last = value
        for _ in range(n):
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (value - self.mean)

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for fewer than two values)."""
        return math.sqrt(self._m2 / (self.count - 1)) if self.count > 1 else 0.0


class CsvLog:
    """Append rows to ``DIR/rankR.csv`` (header written once; resumed runs append).

    Args:
        directory: The folder of the log; created if missing.
        rank: This rank, which names the file.
        name: The file's name without ``.csv``, instead of ``rank{rank}`` (a
            fault-tolerant job names it by the member id, which never changes).

    Attributes:
        path: The CSV file, ``directory/rank{rank}.csv`` (or ``directory/{name}.csv``).
    """

    def __init__(self, directory: str | Path, rank: int, *, name: str | None = None) -> None:
        self.path = Path(directory) / f"{name or f'rank{rank}'}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._file)
        if fresh:
            self._writer.writerow(CSV_COLUMNS)
            self._file.flush()

    def train_row(
        self,
        epoch: int,
        itr: int,
        batch: Meter,
        step: Meter,
        data: Meter,
        loss: Meter,
        top1: Meter,
        top5: Meter,
    ) -> None:
        """One training row."""
        row: list[Any] = [epoch, itr]
        for m in (batch, step, data):
            row += [f"{m.last:.6f}", f"{m.mean:.6f}", f"{m.std:.6f}"]
        for m in (loss, top1, top5):
            row += [f"{m.last:.6f}", f"{m.mean:.6f}"]
        self._writer.writerow([*row, ""])
        self._file.flush()

    def val_row(self, epoch: int, itr: int, loss: float, top1: float, top5: float) -> None:
        """One validation row (times empty, ``val`` in the last column)."""
        timing = [""] * 9
        metrics = [f"{loss:.6f}", f"{loss:.6f}", f"{top1:.6f}", f"{top1:.6f}"]
        self._writer.writerow([epoch, itr, *timing, *metrics, f"{top5:.6f}", f"{top5:.6f}", "val"])
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def write_summary(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write the end-of-run JSON summary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path
