"""Every ``pip install`` line a user can read must work today, from a clone.

The packages are not on PyPI yet, so a line like ``pip install gossip-nn`` fails at once.
Each line in the READMEs, the documentation and the messages the packages print may name
only local paths (``packages/gossip-nn``, with extras) or packages that the pinned
toolchain (``constraints/ci.txt``) takes from the index.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints" / "ci.txt"

# options of `pip install` that take a value, and those that take none
_VALUED = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url",
           "--extra-index-url", "-t", "--target", "--prefix", "--root"}  # fmt: skip
_FLAGS = {"-U", "--upgrade", "-q", "--quiet", "--no-deps", "--pre", "--user", "-e",
          "--editable", "--no-build-isolation", "--force-reinstall"}  # fmt: skip
_LINE = re.compile(r"pip install ([^`\n)]*)")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?([<>=!~].*)?$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_names(constraints: Path = CONSTRAINTS) -> set[str]:
    """The distributions ``constraints`` pins (``name==version`` lines)."""
    names = set()
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            names.add(_normalise(line.split("==", 1)[0]))
    return names


def pages() -> list[Path]:
    """What a user reads: the READMEs, the docs (not generated results) and the sources."""
    found = [ROOT / "README.md", *sorted((ROOT / "packages").glob("*/README.md"))]
    found += sorted((ROOT / "packages").glob("*/job_scripts/*"))
    found += sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.parts)
    found += sorted((ROOT / "packages").glob("*/src/**/*.py"))
    return [p for p in found if p.is_file()]


def install_lines(text: str) -> list[str]:
    """The arguments of every ``pip install`` in ``text`` (up to a backtick, bracket
    or end of line; ``&&``, ``;`` or a comma in prose ends the command)."""
    lines = []
    for match in _LINE.finditer(text):
        args = re.split(r"&&|;|\|\||, ", match.group(1))[0]
        args = args.split(" #", 1)[0].strip()
        for quote in "'\"":  # a message's own quotes around the command, not the arguments'
            if args.count(quote) % 2:
                args = args.strip(quote)
        lines.append(args)
    return lines


def problems(args: str, pinned: set[str]) -> list[str]:
    """Why the ``pip install`` of ``args`` would not work from a clone today."""
    try:
        tokens = shlex.split(args)
    except ValueError as err:
        return [f"cannot be parsed ({err})"]
    found: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token in _VALUED:
            skip = True
        elif token in _FLAGS or token.startswith("--index-url="):
            continue
        elif token.startswith("-"):
            found.append(f"an option this check does not know: {token}")
        elif "://" in token or token.startswith("git+") or " @ " in token:
            found.append(f"{token!r} is a URL: install from a clone instead")
        elif "/" in token or token.startswith("."):
            path = token.split("[", 1)[0]
            if path.startswith("packages/") and not (ROOT / path).is_dir():
                found.append(f"{token!r}: no such package in the repository")
        else:
            name = _NAME.match(token)
            if name is None:
                found.append(f"{token!r} is neither a path nor a requirement")
            elif _normalise(name.group(1)) not in pinned:
                found.append(
                    f"{token!r} is not in constraints/ci.txt: not on the index as pinned "
                    "(our own packages are not on PyPI yet: use packages/<name>)"
                )
    return found


def test_every_install_line_names_paths_or_pinned_packages() -> None:
    pinned = pinned_names()
    assert {"torch", "matplotlib", "nox"} <= pinned
    bad = []
    for page in pages():
        for args in install_lines(page.read_text(errors="replace")):
            where = f"{page.relative_to(ROOT)}: pip install {args}"
            bad += [f"{where}: {problem}" for problem in problems(args, pinned)]
    assert not bad, "\n".join(bad)


def test_the_pages_hold_install_lines_to_check() -> None:
    """The scan finds what it is meant to (a regex gone wrong would find nothing)."""
    found = {p.relative_to(ROOT).as_posix(): install_lines(p.read_text()) for p in pages()}
    assert "packages/gossip-topology packages/gossip-comm packages/gossip-nn" in found["README.md"]
    assert any(found[p] for p in found if p.startswith("docs/tutorials/"))


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("pip install gossip-nn", "not in constraints/ci.txt"),
        ('pip install "sgp-imagenet[digits,tensorboard]"', "not in constraints/ci.txt"),
        ("pip install gossip-comm matplotlib", "not in constraints/ci.txt"),
        ('pip install "gossip-nn @ git+https://github.com/x/y#subdirectory=a"', "is a URL"),
        ("pip install packages/no-such-package", "no such package"),
        ("pip install --frobnicate torch", "does not know"),
    ],
)
def test_the_check_catches_a_line_that_fails(line: str, why: str) -> None:
    (args,) = install_lines(f"run `{line}` first")
    assert any(why in p for p in problems(args, pinned_names())), problems(args, pinned_names())


@pytest.mark.parametrize(
    "line",
    [
        "pip install packages/gossip-topology packages/gossip-comm matplotlib",
        'pip install "packages/sgp-imagenet[digits,plot]"',
        "pip install torch --index-url https://download.pytorch.org/whl/cpu",
        "pip install nox && nox -s tests",
        "pip install -c constraints/ci.txt mkdocs  # the docs tools",
    ],
)
def test_the_check_accepts_lines_that_work(line: str) -> None:
    (args,) = install_lines(line)
    assert problems(args, pinned_names()) == []
