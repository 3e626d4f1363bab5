"""Measured numbers in the docs are quoted from the benchmarks' own output, never typed.

Every decimal number in the prose and tables of the pages below (code blocks and
formulas aside) must appear in a results file that a benchmark wrote
(``benchmarks/results/*``, ``docs/results/*``), unless ``NOT_MEASURED`` lists it for
that page with what it is. A figure edited by hand, or left behind when a benchmark is
re-run, fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_DOCS = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / "docs").rglob("*.md")
    if not {"results", "reference"} & set(p.relative_to(ROOT / "docs").parts)
)
PAGES = ["README.md", *_DOCS]
# Numbers that are not measurements, per page, with what they are.
NOT_MEASURED = {
    "README.md": {"1811.10792": "the paper's arXiv id"},
    "docs/index.md": {"1811.10792": "the paper's arXiv id"},
    "docs/guides/from-2019.md": {"1811.10792": "the paper's arXiv id"},
    "docs/concepts/compression.md": {
        "1902.00340": "CHOCO-SGD's arXiv id",
        "1905.13727": "PowerSGD's arXiv id",
        "2008.01425": "PowerGossip's arXiv id",
    },
    "docs/benchmarks.md": {
        "0.9": "the link self-check's pass threshold (a fraction of the rate)",
        "25.6": "ResNet-50's parameter count in millions (the buffer the mix benchmark sends)",
        "1.32": "the loopback benchmark's MLP size in millions of parameters",
    },
    "docs/guides/cluster.md": {"22.05": "the Slurm release that changed srun's defaults"},
    "docs/guides/choosing.md": {"2311.08105": "DiLoCo's arXiv id"},
    "docs/contributing.md": {"0.2": "a version bound in a dependency range"},
    "docs/tutorials/lightning.md": {
        "2.6": "the lowest Lightning release the extra allows",
        "1811.10792": "the paper's arXiv id",
    },
}
_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def _results() -> str:
    files = [
        p
        for folder in ("benchmarks/results", "docs/results")
        for p in sorted((ROOT / folder).glob("*"))
        # smoke and partial runs are not committed (.gitignore), so they are no source
        if p.suffix in (".md", ".json") and not any(tag in p.stem for tag in ("_quick", "_partial"))
    ]
    assert files, "no benchmark results found"
    return "\n".join(p.read_text() for p in files)


def _prose(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code and its printed output
    return re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", "", text, flags=re.S)  # formulas


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_on_the_page_comes_from_a_results_file(page: str) -> None:
    results = _results()
    figures = set(_NUMBER.findall(_prose((ROOT / page).read_text())))
    unsourced = sorted(
        n
        for n in figures - NOT_MEASURED.get(page, {}).keys()
        if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", results)
    )
    assert not unsourced, f"{page}: figures found in no results file: {unsourced}"


def test_the_check_catches_a_typed_figure() -> None:
    page = "The ring took 0.123456 s per iteration, against 1.544 s for DDP."
    results = _results()
    figures = set(_NUMBER.findall(_prose(page)))
    unsourced = {n for n in figures if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", results)}
    assert unsourced == {"0.123456"}
