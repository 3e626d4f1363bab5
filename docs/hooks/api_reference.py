"""mkdocs hook: the API reference's summary tables, and a build that fails on undocumented names.

Registered under ``hooks:`` in ``mkdocs.yml``. It reads the packages' sources with griffe,
as mkdocstrings does, and imports none of them (statically, as the site documents them); the
load is shared with ``external_links`` through ``api_packages``.

- A package's overview page asks for its summary with a marker comment on a line of its
  own, ``<!-- api-summary: gossip_comm -->``. The marker becomes a table of every name in
  the package's ``__all__`` (name, kind, the docstring's summary, the module page it is
  documented on), followed by a ``:::`` block for each name that no public module
  exports (one defined in a private ``_x.py`` module), so that it is documented on the
  overview itself.
- Before anything is rendered, the build fails with a ``PluginError`` naming each public
  object without a docstring (see ``undocumented``) and each public module without a
  reference page (see ``missing_pages``).

Public, for the check, means: every package and every public module (a name without a
leading underscore, ``__main__`` excluded); every name in their ``__all__``; and the
members of each public class whose names have no leading underscore: methods,
properties, nested classes and attributes (class attributes, dataclass fields and the
``self.x`` attributes that ``__init__`` sets). Dunder methods such as ``__init__`` are
left out: the class docstring documents the constructor (``merge_init_into_class``).
A method or property counts as documented if it, or the member of the same name that it
overrides in a base class, has a docstring (``inspect.getdoc`` inherits docstrings the
same way). An attribute counts as documented if it has a docstring of its own, if the
class docstring's ``Attributes:`` section lists it, or if a base class documents it.

The module imports no mkdocs module at import time, so tests can load it by path with
only griffe installed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import griffe

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from api_packages import build_packages, exports, public_modules  # noqa: E402

__all__ = [
    "member_aliases",
    "missing_pages",
    "on_config",
    "on_files",
    "on_page_content",
    "on_page_markdown",
    "summary_markdown",
    "undocumented",
]

_MARKER = re.compile(r"^<!--\s*api-summary:\s*([\w.]+)\s*-->[ \t]*$", re.MULTILINE)
_DIRECTIVE = re.compile(r"^:::\s*([\w.]+)\s*$", re.MULTILINE)
_HTML_ID = re.compile(r'\bid="([A-Za-z_][\w.]*(?:\([\w*]+\))?)"')


def _has_docstring(obj: griffe.Object | griffe.Alias) -> bool:
    return obj.docstring is not None and bool(obj.docstring.value.strip())


def _documented_attributes(cls: griffe.Class) -> set[str]:
    """Names listed in the ``Attributes:`` section of ``cls``'s docstring."""
    if cls.docstring is None:
        return set()
    sections = griffe.parse_google(cls.docstring, warnings=False)
    return {
        item.name
        for section in sections
        if section.kind is griffe.DocstringSectionKind.attributes
        for item in section.value
    }


def _bases(cls: griffe.Class) -> list[griffe.Class]:
    """``cls``'s base classes that the packages define, nearest first."""
    try:
        return cls.mro()
    except (griffe.AliasResolutionError, griffe.CyclicAliasError, ValueError):
        return []


def _member_documented(cls: griffe.Class, name: str) -> bool:
    for owner in (cls, *_bases(cls)):
        member = owner.members.get(name)
        if member is None or member.is_alias:
            continue
        if _has_docstring(member):
            return True
        if member.is_attribute and name in _documented_attributes(owner):
            return True
    return False


def _class_problems(cls: griffe.Class, path: str) -> Iterator[str]:
    for name, member in cls.members.items():
        if name.startswith("_") or member.is_alias:
            continue
        if not _member_documented(cls, name):
            yield f"{path}.{name}"


def undocumented(packages: Iterable[griffe.Module]) -> list[str]:
    """Public objects of ``packages`` that have no docstring.

    What counts as public and as documented is in this module's docstring. Each object is
    reported once, by the first public path that reaches it (the package's own
    ``__all__`` before a module's).

    Args:
        packages: Packages loaded by ``api_packages.load_packages``.

    Returns:
        One line per problem, such as ``gossip_comm.WIRE_DTYPES`` or
        ``gossip_comm.PushSum.step``; a name in an ``__all__`` that the module does not
        define is reported as ``gossip_comm.Name (in __all__ but not found)``.
    """
    problems: list[str] = []
    seen: set[str] = set()
    for package in packages:
        for module in public_modules(package):
            if not _has_docstring(module):
                problems.append(f"{module.path} (module)")
            for name, obj in exports(module):
                path = f"{module.path}.{name}"
                if obj is None:
                    problems.append(f"{path} (in __all__ but not found)")
                    continue
                if obj.path in seen:
                    continue
                seen.add(obj.path)
                if not _has_docstring(obj):
                    problems.append(path)
                if isinstance(obj, griffe.Class):
                    problems.extend(_class_problems(obj, path))
    return problems


def missing_pages(packages: Iterable[griffe.Module], directives: Iterable[str]) -> list[str]:
    """Public modules that no reference page renders with ``::: module``.

    Args:
        packages: Packages loaded by ``api_packages.load_packages``.
        directives: The identifiers of every ``:::`` block on the reference pages.

    Returns:
        The dotted paths of the public submodules that no block names.
    """
    rendered = set(directives)
    return [
        module.path
        for package in packages
        for module in public_modules(package)
        if module is not package and module.path not in rendered
    ]


def member_aliases(packages: Iterable[griffe.Module]) -> dict[str, list[str]]:
    """The public paths of each class that a package or module re-exports.

    mkdocstrings knows that ``gossip_comm.PushSum`` is ``gossip_comm.push_sum.PushSum``,
    but not that ``gossip_comm.PushSum.send`` is ``gossip_comm.push_sum.PushSum.send``;
    ``on_page_content`` registers those member paths with autorefs from this map.

    Args:
        packages: Packages loaded by ``api_packages.load_packages``.

    Returns:
        For each class reached through an export under another path, its canonical path
        mapped to those other paths.
    """
    aliases: dict[str, list[str]] = {}
    for package in packages:
        for module in public_modules(package):
            for name, obj in exports(module):
                path = f"{module.path}.{name}"
                if isinstance(obj, griffe.Class) and path != obj.path:
                    aliases.setdefault(obj.path, []).append(path)
    return aliases


def _kind(obj: griffe.Object) -> str:
    if isinstance(obj, griffe.Class):
        return "class"
    if isinstance(obj, griffe.Function):
        return "function"
    if isinstance(obj, griffe.TypeAlias) or "type_alias" in obj.labels:
        return "type alias"
    if isinstance(obj, griffe.Attribute):
        annotation = str(obj.annotation or "")
        value = str(obj.value or "")
        if annotation.endswith("TypeAlias") or re.match(r"(typing\.)?(Literal|Union)\[", value):
            return "type alias"
        return "constant"
    return obj.kind.value


def _summary(obj: griffe.Object) -> str:
    """The docstring's summary: its first paragraph, on one line, safe in a table cell."""
    if obj.docstring is None:
        return ""
    first = obj.docstring.value.strip().split("\n\n", 1)[0]
    return " ".join(first.split()).replace("|", r"\|")


def _home_module(package: griffe.Module, obj: griffe.Object) -> griffe.Module | None:
    """The public module whose page documents ``obj``, or ``None`` for the overview."""
    for module in public_modules(package):
        if module is package:
            continue
        for _, exported in exports(module):
            if exported is not None and exported.path == obj.path:
                return module
    return None


def summary_markdown(package: griffe.Module) -> str:
    """The summary table of ``package``'s ``__all__``, as markdown.

    Each name links to its documentation (an autorefs link, so a name documented on no page
    fails the strict build). Names that no public module exports get a ``:::`` block after
    the table, so the overview documents them.

    Args:
        package: A package loaded by ``api_packages.load_packages``.

    Returns:
        The table, then a section for the names documented on the overview, if any.
    """
    rows = ["| name | kind | summary | module |", "|---|---|---|---|"]
    here: list[str] = []
    for name, obj in sorted(exports(package), key=lambda i: (i[0].startswith("__"), i[0].lower())):
        if obj is None:
            raise ValueError(f"{package.path}.{name} is in __all__ but not defined")
        home = _home_module(package, obj)
        if home is None:
            here.append(name)
            where = "[below](#other-names)"
        else:
            where = f"[`{home.name}`]({home.name}.md)"
        identifier = f"{package.path}.{name}"
        rows.append(f"| [`{name}`][{identifier}] | {_kind(obj)} | {_summary(obj)} | {where} |")
    lines = [*rows, ""]
    if here:
        lines += [
            "## Other names",
            "",
            "Exported by the package and by none of its modules.",
            "",
        ]
        for name in here:
            lines += [f"::: {package.path}.{name}", "    options:", "      heading_level: 3", ""]
    return "\n".join(lines)


_STATE: dict[str, Any] = {}


def on_config(config: Any) -> None:
    """mkdocs event: load the packages (``api_packages.build_packages``) and their aliases."""
    _STATE["packages"] = build_packages(config)
    _STATE["aliases"] = member_aliases(_STATE["packages"].values())


def on_files(files: Any, config: Any) -> None:
    """mkdocs event: fail the build on undocumented public names and unrendered modules.

    Raises:
        PluginError: Listing every problem, one per line.
    """
    from mkdocs.exceptions import PluginError

    packages = list(_STATE["packages"].values())
    directives: list[str] = []
    for file in files.documentation_pages():
        if file.src_uri.startswith("reference/") and file.abs_src_path:
            directives += _DIRECTIVE.findall(Path(file.abs_src_path).read_text(encoding="utf-8"))
    problems = [f"no docstring: {p}" for p in undocumented(packages)]
    problems += [
        f"no reference page (a docs/reference page with '::: {p}'): {p}"
        for p in missing_pages(packages, directives)
    ]
    if problems:
        raise PluginError(
            "api_reference: the public API is not fully documented:\n  " + "\n  ".join(problems)
        )


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs event: replace each ``api-summary`` marker with its package's summary.

    Raises:
        ValueError: For a marker naming a package that is not in ``packages/``.
    """
    packages: dict[str, griffe.Module] = _STATE["packages"]

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in packages:
            raise ValueError(f"api-summary: unknown package {name!r}; known: {', '.join(packages)}")
        return summary_markdown(packages[name])

    return _MARKER.sub(fill, markdown)


def on_page_content(html: str, page: Any, config: Any, **kwargs: Any) -> str:
    """mkdocs event: make ``gossip_comm.PushSum.send`` resolve like ``gossip_comm.PushSum``.

    For every anchor that mkdocstrings rendered under a re-exported class, register the
    same anchor under the class's public paths, as secondary URLs (see ``member_aliases``).
    """
    aliases: dict[str, list[str]] = _STATE["aliases"]
    autorefs = config.plugins["autorefs"]
    for anchor in _HTML_ID.findall(html):
        for canonical, public in aliases.items():
            rest = anchor[len(canonical) :]
            if anchor.startswith(canonical) and rest[:1] in (".", "("):
                for path in public:
                    autorefs.register_anchor(page, path + rest, anchor, primary=False)
    return html
