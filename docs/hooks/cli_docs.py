"""mkdocs hook: write the ``sgp-imagenet`` command-line pages from the code at build time.

Registered under ``hooks:`` in ``mkdocs.yml``. A page asks for generated content with a
marker comment on a line of its own:

- ``<!-- cli-docs: sgp-imagenet -->``: every subcommand of ``sgp_imagenet.cli.build_parser()``
  with each option's default, choices and help, grouped as ``--help`` groups them;
- ``<!-- cli-docs: legacy-flags -->``: the 2019 flag mapping, ``sgp_imagenet.legacy.LEGACY_FLAGS``;
- ``<!-- cli-docs: translate-example -->``: ``translate_2019`` run on a 2019 job's command.

``nox -s docs`` builds the site in the development environment, where the packages and
torch are installed (the parser's choices come from gossip-nn and the modules that own
them); the hook also puts ``packages/sgp-imagenet/src`` on ``sys.path``, so the page always
shows this checkout's parser. It imports no mkdocs module, so tests can load it by path.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import sys
from pathlib import Path
from typing import Any

_SRC = Path(__file__).resolve().parents[2] / "packages" / "sgp-imagenet" / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from sgp_imagenet.cli import build_parser  # noqa: E402
from sgp_imagenet.legacy import LEGACY_FLAGS, SCRIPTS, translate_2019  # noqa: E402

__all__ = [
    "EXAMPLE_2019",
    "cli_reference_markdown",
    "legacy_table_markdown",
    "on_page_markdown",
    "translate_example_markdown",
]

_MARKER = re.compile(r"^<!--\s*cli-docs:\s*([\w-]+)\s*-->[ \t]*$", re.MULTILINE)

EXAMPLE_2019 = (
    "srun python -u gossip_sgd.py --batch_size 256 --lr 0.1 --num_dataloader_workers 16 "
    "--num_epochs 90 --nesterov True --warmup True --push_sum True --graph_type 0 "
    "--schedule 30 0.1 60 0.1 80 0.1 --peers_per_itr_schedule 0 1 --master_port 40100 "
    "--tag SGP_ETH --checkpoint_dir /checkpoints --dataset_dir /datasets/imagenet "
    "--print_freq 100 --verbose False --overlap False"
)
"""A 2019 SGP job's command (the flags of the 2019 Ethernet SGP job script, a few added)."""


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(text.split()).replace("|", r"\|")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order they were added."""
    for action in parser._actions:  # argparse has no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _invocation(action: argparse.Action) -> str:
    """How an option is written, as code spans: `--lr LR`; `--nesterov`, `--no-nesterov`."""
    if action.nargs == 0:
        return ", ".join(_code(option) for option in action.option_strings)
    metavar = str(action.metavar or (action.dest.upper() if action.option_strings else action.dest))
    if action.nargs in ("+", "*"):
        metavar = f"{metavar} [{metavar} ...]"
    elif action.nargs == "?":
        metavar = f"[{metavar}]"
    if not action.option_strings:  # a positional argument
        return _code(metavar)
    return ", ".join(_code(f"{option} {metavar}") for option in action.option_strings)


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, argparse.BooleanOptionalAction):
        return "on" if action.default else "off"
    if action.nargs == 0:  # store_true and friends
        return "off" if not action.default else _code(str(action.default))
    if action.default is None or action.default is argparse.SUPPRESS:
        return "—"
    return _code(str(action.default))


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):  # as argparse does
            text = text % {**vars(action), "prog": prog}
    return _cell(text)


def _subcommand_markdown(name: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `{parser.prog}`", ""]
    if summary:
        lines += [summary[:1].upper() + summary[1:] + ".", ""]
    formatter = argparse.HelpFormatter(parser.prog, width=88)  # not the terminal's width
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    lines += ["```text", formatter.format_help().rstrip(), "```", ""]
    for group in parser._action_groups:  # the groups --help prints, in its order
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = group.title or "options"
        lines += [f"### {title[:1].upper() + title[1:]}", ""]
        lines += ["| option | default | choices | help |", "|---|---|---|---|"]
        for action in actions:
            choices = ", ".join(_code(str(c)) for c in action.choices) if action.choices else ""
            lines.append(
                f"| {_invocation(action)} | {_default(action)} | {choices} "
                f"| {_help(action, parser.prog)} |"
            )
        lines.append("")
    return lines


def cli_reference_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference of every ``sgp-imagenet`` subcommand, as markdown.

    Args:
        parser: The top-level parser; by default ``sgp_imagenet.cli.build_parser()``.

    Returns:
        One ``##`` section per subcommand, one table per argument group.
    """
    parser = parser or build_parser()
    lines = [
        _cell(parser.description or ""),
        "",
        "Generated from `sgp_imagenet.cli.build_parser()` when this site is built. Every "
        "subcommand also takes `-h`, `--help`.",
        "",
    ]
    for name, summary, sub in _subcommands(parser):
        lines += _subcommand_markdown(name, summary, sub)
    return "\n".join(lines).rstrip() + "\n"


def legacy_table_markdown() -> str:
    """The 2019 flag mapping as one markdown table.

    A flag that means the same in both scripts gets one row naming both.

    Returns:
        The table: script(s), 2019 flag, what it took, ``sgp-imagenet train`` options, note.
    """
    rows: dict[tuple[str, str, str | None, str], list[str]] = {}
    for row in LEGACY_FLAGS:
        rows.setdefault((row.flag, row.value, row.equivalent, row.note), []).append(row.script)
    lines = [
        "| 2019 flag | script | 2019 value | `sgp-imagenet train` | note |",
        "|---|---|---|---|---|",
    ]
    for (flag, value, equivalent, note), scripts in rows.items():
        where = ", ".join(_code(s) for s in SCRIPTS if s in scripts)
        new = ", ".join(_code(o) for o in equivalent.split()) if equivalent else "—"
        lines.append(f"| {_code(flag)} | {where} | {value} | {new} | {_cell(note)} |")
    return "\n".join(lines) + "\n"


def _shell_lines(tokens: list[str], width: int = 88) -> str:
    """Shell words packed into lines of at most ``width``, an option kept with its value."""
    words: list[str] = []
    for token in tokens:
        quoted = shlex.quote(token)
        if words and not token.startswith("-") and words[-1].startswith("-"):
            words[-1] += " " + quoted
        else:
            words.append(quoted)
    lines = [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + len(word) + 3 > width:
            lines.append("   ")
        lines[-1] += (" " if lines[-1] else "") + word
    return " \\\n".join(lines)


def translate_example_markdown() -> str:
    """``translate_2019`` on ``EXAMPLE_2019``: the call and what it returns."""
    tokens = shlex.split(EXAMPLE_2019)
    translated = ["sgp-imagenet", "train", *translate_2019(tokens)]
    return "\n".join(
        [
            "```python",
            "import shlex",
            "",
            "from sgp_imagenet.legacy import translate_2019",
            "",
            'command = """',
            _shell_lines(tokens),
            '"""',
            'print("sgp-imagenet train", shlex.join(translate_2019(shlex.split(command))))',
            "```",
            "",
            "prints (wrapped here)",
            "",
            "```bash",
            _shell_lines(translated),
            "```",
            "",
        ]
    )


_GENERATORS = {
    "sgp-imagenet": cli_reference_markdown,
    "legacy-flags": legacy_table_markdown,
    "translate-example": translate_example_markdown,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs event: replace each marker comment with its generated markdown.

    Raises:
        ValueError: For a marker that names no generator (a typo would otherwise leave a
            silent hole in the page).
    """

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _GENERATORS:
            raise ValueError(f"cli-docs: unknown marker {name!r}; known: {', '.join(_GENERATORS)}")
        return _GENERATORS[name]()

    return _MARKER.sub(fill, markdown)
