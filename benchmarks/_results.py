"""The one results writer the benchmarks share: JSON plus a markdown table.

Each benchmark calls ``write_results`` once at the end. The JSON holds the
benchmark's own payload under its own keys, next to a ``"meta"`` block describing the
machine and the run; the markdown holds a titled table for ``docs/benchmarks.md``.
Benchmarks run as scripts (``python benchmarks/bench_x.py``), whose directory Python
puts on ``sys.path``, so they import this module as ``from _results import ...``.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

__all__ = ["RESULTS", "machine_meta", "markdown_table", "write_results"]

RESULTS = Path(__file__).resolve().parent / "results"


def _version(dist: str) -> str | None:
    """The installed version of ``dist``, without importing it; ``None`` if absent."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_meta(*, quick: bool) -> dict[str, object]:
    """Describe this machine and run: platform, Python, numpy, torch, CPUs, UTC time.

    Args:
        quick: Whether the benchmark ran in ``--quick`` mode (small sizes, for CI).

    Returns:
        A JSON-serialisable dict.
    """
    return {
        "machine": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "cpu_count": os.cpu_count(),
        "utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render ``rows`` under ``header`` as a markdown table; each cell through ``str``.

    Args:
        header: Column titles.
        rows: One sequence of cells per row, each as long as ``header``. Format numbers
            before passing them if ``str`` is not the wanted rendering.

    Returns:
        The table, one line per row, ending in a newline.

    Raises:
        ValueError: If ``header`` is empty or a row's length differs from it.
    """
    if not header:
        raise ValueError("header must name at least one column")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells; the header has {len(header)}")

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"

    lines = [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]
    return "\n".join(lines) + "\n"


def write_results(
    name: str,
    payload: Mapping[str, object],
    *,
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    title: str,
    quick: bool,
    notes: str = "",
    meta: Mapping[str, object] | None = None,
    directory: Path = RESULTS,
) -> tuple[Path, Path]:
    """Write ``<directory>/<name>.json`` and ``<name>.md``, and print the table.

    A ``--quick`` run writes ``<name>_quick.json`` and ``<name>_quick.md`` instead, so a
    smoke run never overwrites the reference figures that ``docs/benchmarks.md`` embeds.
    The markdown starts with the title in bold (not a heading), so the docs can include
    it under their own heading.

    Args:
        name: File stem, e.g. ``"simulator"``.
        payload: The measurements, JSON-serialisable; written as the JSON's top-level
            keys beside ``"meta"``.
        header: Column titles of the markdown table.
        rows: The markdown table's rows (see ``markdown_table``).
        title: Heading of the markdown file.
        quick: Whether the run used ``--quick``; recorded in the metadata and flagged
            in the markdown.
        notes: A paragraph printed under the title, if any.
        meta: Benchmark-specific settings added to the ``"meta"`` block (backend,
            topology...).
        directory: Where to write; created if missing.

    Returns:
        The JSON path and the markdown path.

    Raises:
        ValueError: If ``payload`` has a ``"meta"`` key, or ``meta`` repeats a key of
            the machine metadata, or the table is malformed.
    """
    if "meta" in payload:
        raise ValueError("payload must not have a 'meta' key; pass settings as meta=")
    info = machine_meta(quick=quick)
    clash = sorted(set(info) & set(meta or {}))
    if clash:
        raise ValueError(f"meta repeats machine metadata keys: {', '.join(clash)}")
    info.update(meta or {})
    table = markdown_table(header, rows)
    parts = [f"**{title}**\n"]
    if quick:
        parts.append("Quick run (`--quick`): small sizes, a smoke test; not reference figures.\n")
    if notes:
        parts.append(notes.strip() + "\n")
    parts.append(table)
    parts.append(
        f"Machine: {info['machine']}, {info['cpu_count']} CPUs, Python {info['python']}, "
        f"numpy {info['numpy']}, torch {info['torch']}; "
        f"{info.get('measured_utc', info['utc'])}.\n"
    )
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_quick" if quick and not name.endswith("_quick") else name
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    json_path.write_text(json.dumps({"meta": info, **payload}, indent=2) + "\n")
    md_path.write_text("\n".join(parts))
    print(table, end="")
    print(f"wrote {json_path} and {md_path}", flush=True)
    return json_path, md_path
