"""What rank 0 shows while training: a tqdm bar or progress lines, and TensorBoard scalars.

Only rank 0 reports, so a job's output holds one progress display, not one per rank.
``--progress auto`` draws a tqdm bar when stderr is a terminal and prints lines
otherwise (a SLURM log file); ``--progress off`` prints only the epoch summaries.
TensorBoard scalars go to ``LOG_DIR/tensorboard`` when the ``tensorboard`` package is
installed (``pip install tensorboard``, or the ``tensorboard`` extra of sgp-imagenet).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "open_tensorboard"]


class Progress:
    """Rank 0's per-iteration display for one epoch at a time.

    Args:
        mode: ``"auto"``, ``"bar"``, ``"lines"`` or ``"off"``.
        enabled: ``False`` on every rank but 0: then nothing is shown.
        print_freq: Iterations between two lines (the bar updates every iteration).
        stream: Where lines and the bar go; stderr for the bar, stdout for lines.

    Attributes:
        MODES: The accepted values of ``mode``.
        mode: ``"bar"``, ``"lines"`` or ``"off"``: ``"auto"`` resolved, and ``"off"`` on
            every rank but 0.
        print_freq: Iterations between two lines.
        stream: Where lines and the bar go; ``None`` for the default streams.

    Raises:
        ValueError: If ``mode`` is not one of the four.
    """

    MODES = ("auto", "bar", "lines", "off")

    def __init__(
        self, mode: str, *, enabled: bool, print_freq: int, stream: TextIO | None = None
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"--progress must be one of {', '.join(self.MODES)}; got {mode!r}")
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "off"
        self.print_freq = print_freq
        self.stream = stream
        self._bar: Any = None

    def start_epoch(self, epoch: int, total: int, done: int) -> None:
        """A new epoch of ``total`` iterations, ``done`` of which ran before a resume."""
        if self.mode == "bar":
            from tqdm import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(
                total=total,
                initial=done,
                desc=f"epoch {epoch}",
                unit="it",
                file=self.stream or sys.stderr,
                dynamic_ncols=True,
            )

    def update(
        self, epoch: int, itr: int, total: int, *, loss: float, top1: float, lr: float,
        images_per_s: float, eta_s: float,
    ) -> None:  # fmt: skip
        """After iteration ``itr`` (0-based) of ``total``."""
        if self.mode == "bar" and self._bar is not None:
            self._bar.set_postfix(
                loss=f"{loss:.4f}", top1=f"{top1:.1f}%", lr=f"{lr:.4g}",
                img_s=f"{images_per_s:.0f}", refresh=False,
            )  # fmt: skip
            self._bar.update(1)
        elif self.mode == "lines" and (itr % self.print_freq == 0 or itr == total - 1):
            print(
                f"epoch {epoch} [{itr + 1}/{total}] loss {loss:.4f} top-1 {top1:.1f}% "
                f"lr {lr:.4g} {images_per_s:.0f} img/s eta {eta_s:.0f}s",
                file=self.stream or sys.stdout,
                flush=True,
            )

    def end_epoch(self) -> None:
        """Close the epoch's bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def open_tensorboard(log_dir: str | Path | None, *, enabled: bool) -> tuple[Any, str]:
    """A ``SummaryWriter`` on ``LOG_DIR/tensorboard``, or ``None`` with the reason.

    Args:
        log_dir: ``--log-dir``; no writer without one.
        enabled: ``--tensorboard`` on this rank (rank 0 only).

    Returns:
        ``(writer or None, a one-line note for the log)``.
    """
    if not enabled or log_dir is None:
        return None, ""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None, (
            "TensorBoard scalars are off: the tensorboard package is not installed "
            "(pip install tensorboard, or pass --no-tensorboard)"
        )
    path = Path(log_dir) / "tensorboard"
    return SummaryWriter(log_dir=str(path)), f"TensorBoard scalars in {path}"
