"""The packages' public API read with griffe, shared by the ``api_reference`` and
``external_links`` hooks.

mkdocs loads each hook file as a module of its own, so one hook cannot see another's
state. Both hooks import this module by name and get the same instance, so
``build_packages`` loads the packages once per build for both. The module imports no
mkdocs module, so tests can load it with only griffe installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe

__all__ = ["ROOT", "build_packages", "exports", "load_packages", "public_modules"]

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: ``packages/*/src`` and ``docs/`` live under it."""


def load_packages(root: Path = ROOT) -> dict[str, griffe.Module]:
    """Load every package under ``root/packages`` with griffe, statically, and resolve the
    aliases between them.

    A package is a ``packages/<dist>/src/<name>/__init__.py``; no module is imported.

    Args:
        root: The repository root.

    Returns:
        Each package's griffe module, by import name, sorted by distribution name.
    """
    inits = sorted(root.glob("packages/*/src/*/__init__.py"))
    loader = griffe.GriffeLoader(
        search_paths=[str(init.parents[1]) for init in inits],
        docstring_parser=griffe.Parser.google,
    )
    modules = {init.parent.name: loader.load(init.parent.name) for init in inits}
    loader.resolve_aliases(implicit=False, external=False)
    return {name: module for name, module in modules.items() if isinstance(module, griffe.Module)}


_LOADED: tuple[Any, dict[str, griffe.Module]] | None = None


def build_packages(config: Any) -> dict[str, griffe.Module]:
    """``load_packages()``, once per build: the hooks of one build share the result.

    Args:
        config: The build's mkdocs config; ``mkdocs serve`` makes a new one for each
            rebuild, which loads the packages afresh.

    Returns:
        As ``load_packages``.
    """
    global _LOADED
    if _LOADED is None or _LOADED[0] is not config:
        _LOADED = (config, load_packages())
    return _LOADED[1]


def public_modules(package: griffe.Module) -> Iterator[griffe.Module]:
    """``package`` and its submodules whose names do not start with an underscore.

    A module that another module imports (``from pkg import graphs``) is an alias there,
    not a submodule of it, and is skipped.

    Args:
        package: A package loaded by ``load_packages``.

    Yields:
        The package itself, then its public submodules, depth first, sorted by name.
    """
    yield package
    for name, module in sorted(package.modules.items()):
        if not name.startswith("_") and not module.is_alias:
            yield from public_modules(module)


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object | None:
    """What an export refers to, or ``None`` when it cannot be found in the packages."""
    if not obj.is_alias:
        return obj  # type: ignore[return-value]
    try:
        return obj.final_target  # type: ignore[union-attr]
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def exports(module: griffe.Module) -> Iterator[tuple[str, griffe.Object | None]]:
    """Each name in ``module.__all__`` and the object it refers to, aliases followed.

    Args:
        module: A module loaded by ``load_packages``.

    Yields:
        ``(name, object)``; the object is ``None`` when the name is not defined in the
        module or refers to something outside the loaded packages.
    """
    for name in module.exports or ():
        member = module.members.get(str(name))
        yield str(name), None if member is None else _target(member)
