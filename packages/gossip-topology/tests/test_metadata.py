"""Packaging checks for gossip-topology: version source and dependency policy."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import gossip_topology

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
SIBLINGS = {"gossip-topology", "gossip-nn", "sgp-imagenet"}


def test_version_comes_from_installed_metadata() -> None:
    assert gossip_topology.__version__ == importlib.metadata.version("gossip-topology")
    assert gossip_topology.__version__ == PYPROJECT["project"]["version"]


def test_siblings_are_ranges_and_torch_is_not_pinned() -> None:
    for dep in PYPROJECT["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0]
        assert "==" not in dep, f"{dep!r} is an exact pin; state a range"
        if name in SIBLINGS:
            assert ">=" in dep and "<" in dep, f"{dep!r} needs a lower and an upper bound"
