"""``sgp-imagenet plot`` on summaries written as ``train`` writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgp_imagenet.cli import main


def _summary(
    directory: Path, algorithm: str, world: int, top1: list[float], sent: float | None = None
) -> Path:
    directory.mkdir(parents=True)
    epochs = [
        {"epoch": e, "average_top1": t, "own_top1": t - 1.0, "elapsed_s": 10.0 * (e + 1)}
        for e, t in enumerate(top1)
    ]
    summary = {"algorithm": algorithm, "world_size": world, "epochs": epochs,
               "wall_s": 10.0 * len(top1), "s_per_iter": 0.05 * world}  # fmt: skip
    if sent is not None:
        summary["bytes_per_iter"] = sent
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def test_plot_writes_the_figure_and_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _summary(tmp_path / "sgp", "sgp", 4, [50.0, 80.0, 90.0], sent=1_234_567.0)
    b = _summary(tmp_path / "ar", "ar", 2, [55.0, 85.0])
    out, table = tmp_path / "fig.png", tmp_path / "table.md"
    assert main(["plot", str(a), str(b), "--out", str(out), "--table", str(table)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    text = table.read_text()
    assert "| sgp (4 ranks) | 3 | 90.00% | 89.00% | 30.0 | 0.2000 | 1.235 |" in text
    # a summary from before bytes were recorded: the figure still draws, the table says so
    assert "| ar (2 ranks) | 2 | 85.00% | 84.00% | 20.0 | 0.1000 | n/a |" in text
    assert text.strip() in capsys.readouterr().out


def test_plot_names_a_directory_without_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert f"{tmp_path}: no summary.json" in capsys.readouterr().err


def test_runs_of_one_algorithm_and_size_get_their_own_bars(tmp_path: Path) -> None:
    from sgp_imagenet.plot import _bar_labels, load_runs

    a = _summary(tmp_path / "eth", "sgp", 4, [90.0])
    b = _summary(tmp_path / "ib", "sgp", 4, [91.0])
    c = _summary(tmp_path / "ar", "ar", 4, [92.0])
    labels = _bar_labels(load_runs([a, b, c]))
    assert labels == ["sgp (4 ranks) eth", "sgp (4 ranks) ib", "ar (4 ranks)"]
