"""mkdocs hook: the Changelog page, built from every package's own CHANGELOG.md.

A page asks for it with ``<!-- changelog: all -->`` on a line of its own. The hook writes
a table of contents (one line per package: its latest version, a link to its section and
a link to the file in the repository), then each CHANGELOG with its headings moved one
level down, so the page has one title and each package is a section of its own. It
imports no mkdocs module, so tests can load it by path.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "changelog_markdown", "on_page_markdown"]

PACKAGES = ("gossip-topology", "gossip-comm", "gossip-nn", "sgp-imagenet")
"""The packages, in dependency order."""

_ROOT = Path(__file__).resolve().parents[2]
_MARKER = re.compile(r"^<!--\s*changelog:\s*all\s*-->[ \t]*$", re.MULTILINE)
_HEADING = re.compile(r"^(#{1,5}) ", re.MULTILINE)
_REPO_FILE = "https://github.com/gossip-nn/gossip/blob/main/packages/{name}/CHANGELOG.md"


def _demote(text: str) -> str:
    """Drop the file's title line and move every other heading one level down."""
    lines = text.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    body = "\n".join(lines).strip()
    return _HEADING.sub(lambda m: "#" + m.group(1) + " ", body)


def changelog_markdown(root: Path = _ROOT) -> str:
    """Return the Markdown for every package's changelog, with a table of contents.

    Args:
        root: The repository root, holding ``packages/<name>/CHANGELOG.md``.

    Returns:
        The table of contents followed by one ``## <package>`` section per package.

    Raises:
        FileNotFoundError: If a package has no CHANGELOG.md.
    """
    toc = ["| package | version | changelog in the repository |", "|---|---|---|"]
    sections = []
    for name in PACKAGES:
        folder = root / "packages" / name
        version = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["version"]
        text = (folder / "CHANGELOG.md").read_text()
        url = _REPO_FILE.format(name=name)
        toc.append(f"| [{name}](#{name}) | {version} | [CHANGELOG.md]({url}) |")
        sections.append(f"## {name}\n\n{_demote(text)}\n")
    return "\n".join(toc) + "\n\n" + "\n".join(sections)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the changelog marker with the generated changelog."""
    return _MARKER.sub(lambda _m: changelog_markdown(), markdown)
