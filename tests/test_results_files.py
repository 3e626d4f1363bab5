"""The shipped benchmark results say nothing about the machine's own folders."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# where a checkout, a home or a virtual environment lives on the machine that ran them
_MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|opt|usr/local|Users)/[\w.-]+")


def machine_paths(text: str) -> list[str]:
    """The absolute paths of a machine's folders in ``text``."""
    return _MACHINE_PATH.findall(text)


def test_no_results_file_names_a_path_of_the_machine_it_ran_on() -> None:
    found = {
        p.name: machine_paths(p.read_text(errors="replace"))
        for p in sorted(RESULTS.iterdir())
        if p.suffix in (".md", ".json", ".log") and not p.is_symlink()
    }
    assert {name: paths for name, paths in found.items() if paths} == {}


def test_the_check_finds_a_machine_path() -> None:
    assert machine_paths("rootdir: /work/main\nplatform -- /opt/torch/.venv/bin/python3") == [
        "/work/main",
        "/opt/torch",
    ]
    assert machine_paths("see packages/gossip-nn/src and https://example.org/home/x") == []
