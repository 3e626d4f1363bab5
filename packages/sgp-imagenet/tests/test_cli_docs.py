"""The docs' generated pages (``docs/hooks/cli_docs.py``, an mkdocs hook): the CLI
reference names every option and the 2019 mapping table every flag. Skipped where the
repository's docs are absent, as in an sdist."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from sgp_imagenet.cli import build_parser
from sgp_imagenet.legacy import LEGACY_FLAGS

HOOKS = Path(__file__).resolve().parents[1] / ".." / ".." / "docs" / "hooks"


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    path = HOOKS / "cli_docs.py"
    if not path.is_file():
        pytest.skip(f"no docs hooks at {HOOKS} (not a repository checkout)")
    spec = importlib.util.spec_from_file_location("cli_docs_hook", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("build_parser() has no subcommands")


def _section(markdown: str, command: str) -> str:
    """The ``## `sgp-imagenet COMMAND` `` section of the reference."""
    match = re.search(rf"^## `sgp-imagenet {command}`$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section for {command}"
    return match.group(1)


def test_reference_mentions_every_option_with_its_default(hook: ModuleType) -> None:
    markdown = hook.cli_reference_markdown()
    subparsers = _subparsers()
    assert {"train", "env", "plot"} <= set(subparsers)
    for name, parser in subparsers.items():
        section = _section(markdown, name)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert re.search(rf"`{re.escape(option)}\b", section), (name, option)
            first = (action.option_strings or [action.metavar or action.dest])[0]
            row = next(line for line in section.splitlines() if line.startswith(f"| `{first}"))
            if action.default not in (None, False, True) and not action.required:
                assert f"| `{action.default}` |" in row, (name, action.dest, row)
    train = _section(markdown, "train")
    for title in ("Algorithm", "Model and optimisation", "Data", "Runtime", "Output"):
        assert f"### {title}" in train
    assert "| `--algorithm ALGORITHM` | `sgp` | `ar`, `sgp`, `osgp`, `dpsgd`, `adpsgd` |" in train
    assert "`LOG_DIR [LOG_DIR ...]`" in _section(markdown, "plot")


def test_mapping_table_lists_every_legacy_flag(hook: ModuleType) -> None:
    rows = [line for line in hook.legacy_table_markdown().splitlines() if line.startswith("| `")]
    for flag in LEGACY_FLAGS:
        assert any(
            line.startswith(f"| `{flag.flag}` |") and f"`{flag.script}`" in line for line in rows
        ), flag
    assert len(rows) < len(LEGACY_FLAGS)  # a flag meaning the same in both scripts: one row


def test_markers_are_filled_and_typos_raise(hook: ModuleType) -> None:
    page = "# t\n\n<!-- cli-docs: translate-example -->\n\ntext\n"
    filled = hook.on_page_markdown(page, page=None, config=None, files=None)
    assert "cli-docs" not in filled and filled.endswith("\ntext\n")
    assert "sgp-imagenet train --algorithm sgp --topology 0" in filled
    with pytest.raises(ValueError, match="legacy-flag"):
        hook.on_page_markdown("<!-- cli-docs: legacy-flag -->\n")


def test_pages_carry_the_markers() -> None:
    docs = HOOKS.parent
    if not docs.is_dir():
        pytest.skip("no docs directory")
    assert (
        "<!-- cli-docs: sgp-imagenet -->"
        in (docs / "reference" / "sgp-imagenet-cli.md").read_text()
    )
    guide = (docs / "guides" / "from-2019.md").read_text()
    assert "<!-- cli-docs: legacy-flags -->" in guide
    assert "<!-- cli-docs: translate-example -->" in guide
