"""The site's navigation: every page title is unique, so a search result names one page."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def titles(nav: list[Any]) -> list[tuple[str, str]]:
    """(title, page) for every page of a mkdocs ``nav`` (sections recursed into)."""
    found: list[tuple[str, str]] = []
    for item in nav:
        if isinstance(item, str):
            found.append((item, item))
            continue
        ((title, value),) = item.items()
        if isinstance(value, list):
            found += titles(value)
        else:
            found.append((title, value))
    return found


def repeated(nav: list[Any]) -> list[str]:
    """The titles that more than one page of ``nav`` has."""
    counts = Counter(title for title, _ in titles(nav))
    return sorted(title for title, count in counts.items() if count > 1)


def test_no_two_pages_share_a_title() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert len(titles(config["nav"])) > 60  # the reference pages are in the nav
    assert repeated(config["nav"]) == []


def test_the_check_finds_a_repeated_title() -> None:
    nav = [
        {"a": [{"report": "a/report.md"}, {"Overview": "a/index.md"}]},
        {"b": [{"report": "b/report.md"}, {"Overview of b": "b/index.md"}]},
    ]
    assert repeated(nav) == ["report"]
