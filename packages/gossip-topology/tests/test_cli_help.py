"""``python -m gossip_topology --help``: every option explained, in plain text."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

# reStructuredText that a terminal would print verbatim: ``literals``, :func:`roles`,
# `interpreted text`_ links and .. directives.
RST = re.compile(r"``|:[a-z]+:`|`_|^\s*\.\. \w", re.MULTILINE)


@pytest.fixture(scope="module")
def help_text() -> str:
    env = {**os.environ, "COLUMNS": "100"}  # argparse wraps to the terminal's width
    result = subprocess.run(
        [sys.executable, "-m", "gossip_topology", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def option_help(text: str) -> dict[str, str]:
    """Each option's help in the ``options:`` section, by its first flag."""
    section = text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    helps: dict[str, str] = {}
    flag = ""
    for line in section.splitlines():
        match = re.match(r"  (-[^ ,]+)(?:[^ ]| (?! ))*(?: {2,}(.*))?$", line)
        if match:
            flag = match.group(1)
            helps[flag] = match.group(2) or ""
        elif flag and line.startswith("   "):
            helps[flag] = (helps[flag] + " " + line.strip()).strip()
    return helps


def test_every_option_has_help(help_text: str) -> None:
    helps = option_help(help_text)
    assert {"--world-size", "--peers-per-itr", "--topologies", "--steps", "--eps", "--plot"} <= set(
        helps
    )
    assert not [flag for flag, text in helps.items() if not text], helps


def test_help_has_no_restructuredtext(help_text: str) -> None:
    assert not RST.findall(help_text), help_text


def test_option_help_parser_sees_a_missing_help() -> None:
    text = "usage: x\n\noptions:\n  -h, --help  show help\n  --bare BARE\n  --next N    has help\n"
    assert option_help(text) == {"-h": "show help", "--bare": "", "--next": "has help"}
