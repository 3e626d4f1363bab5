"""mkdocs hook: link the Python, NumPy and PyTorch names in the API reference to their docs.

Registered under ``hooks:`` in ``mkdocs.yml``. mkdocstrings renders each name in a
signature, a type column or a base class as an optional cross-reference: a link when
autorefs knows a URL for it, plain text otherwise. This hook gives autorefs the URLs of
the external names the public API uses, from ``EXTERNAL_URLS`` below.

Why not mkdocstrings' ``inventories`` option: it downloads each ``objects.inv`` when the
build starts, and this site is built where docs.python.org, numpy.org and pytorch.org
cannot be reached. A failed download is logged as an error, which fails
``mkdocs build --strict``. A local file does load (a ``file:docs/...`` URL, relative to
the working directory), but mkdocs caches every inventory URL for a day under
``~/.cache/mkdocs``, so an edited file would be ignored until the cache expires. This
hook registers the same URLs, the same way mkdocstrings registers a downloaded
inventory's items (``autorefs.register_url`` in ``on_env``, before cross-references are
resolved), with no network and no cache.

``EXTERNAL_URLS`` holds the external names that the public API's type annotations, base
classes and ``Raises:`` sections refer to, plus a few from default values:
``external_names`` collects them from the sources with griffe, and the build fails
(``on_config``) when one has no URL, naming it. ``tests/test_api_docs.py`` checks the
same, and that no entry has gone stale. The URLs follow the anchors Sphinx gives each
object (``#torch.Tensor``); where the upstream docs have no entry for a name, such as
``torch.distributed.ProcessGroup``, the link goes to the page that describes it.

The module imports no mkdocs module at import time, so tests can load it with only
griffe installed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import griffe

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from api_packages import build_packages, exports, public_modules  # noqa: E402

__all__ = ["EXTERNAL_URLS", "external_names", "missing_urls", "on_config", "on_env"]

_PYTHON = "https://docs.python.org/3/"
_NUMPY = "https://numpy.org/doc/stable/"
_TORCH = "https://docs.pytorch.org/docs/stable/"
_LIGHTNING = "https://lightning.ai/docs/pytorch/stable/"


def _python(names: str, page: str, *, anchor: bool = True) -> dict[str, str]:
    """Names documented on one page of docs.python.org; the anchor is the name itself."""
    url = f"{_PYTHON}library/{page}"
    return {name: f"{url}#{name}" if anchor else url for name in names.split()}


EXTERNAL_URLS: dict[str, str] = {
    # built-in types and exceptions, on the pages Python's own objects.inv puts them
    **_python("bool float int object", "functions.html"),
    **_python("dict frozenset list set str tuple", "stdtypes.html"),
    **_python(
        "BaseException Exception FileNotFoundError ImportError OSError RuntimeError TypeError "
        "UserWarning ValueError",
        "exceptions.html",
    ),
    # standard-library modules (their pages) and classes
    **_python("abc.ABC", "abc.html"),
    **_python("argparse", "argparse.html", anchor=False),
    **_python("argparse.ArgumentParser argparse.Namespace", "argparse.html"),
    **_python(
        "collections.abc.Callable collections.abc.Iterable collections.abc.Iterator "
        "collections.abc.Mapping "
        "collections.abc.Sequence",
        "collections.abc.html",
    ),
    **_python("concurrent.futures.Future", "concurrent.futures.html"),
    **_python("datetime.timedelta", "datetime.html"),
    **_python("contextlib.AbstractContextManager", "contextlib.html"),
    **_python("importlib.metadata.version", "importlib.metadata.html"),
    **_python("os", "os.html", anchor=False),
    **_python("os.PathLike", "os.html"),
    **_python("pathlib.Path", "pathlib.html"),
    **_python("signal", "signal.html", anchor=False),
    **_python("signal.Signals", "signal.html"),
    **_python("subprocess", "subprocess.html", anchor=False),
    **_python("subprocess.CompletedProcess", "subprocess.html"),
    **_python("threading", "threading.html", anchor=False),
    **_python("threading.Lock", "threading.html"),
    **_python(
        "typing.Any typing.Generic typing.Literal typing.Protocol typing.TextIO", "typing.html"
    ),
    # NumPy
    "numpy": f"{_NUMPY}reference/index.html",
    "numpy.float64": f"{_NUMPY}reference/arrays.scalars.html#numpy.float64",
    "numpy.int64": f"{_NUMPY}reference/arrays.scalars.html#numpy.int64",
    "numpy.intp": f"{_NUMPY}reference/arrays.scalars.html#numpy.intp",
    "numpy.random.Generator": f"{_NUMPY}reference/random/generator.html#numpy.random.Generator",
    "numpy.typing.ArrayLike": f"{_NUMPY}reference/typing.html#numpy.typing.ArrayLike",
    "numpy.typing.NDArray": f"{_NUMPY}reference/typing.html#numpy.typing.NDArray",
    # PyTorch
    "torch": f"{_TORCH}torch.html",
    "torch.Tensor": f"{_TORCH}tensors.html#torch.Tensor",
    "torch.Size": f"{_TORCH}size.html#torch.Size",
    "torch.device": f"{_TORCH}tensor_attributes.html#torch.device",
    "torch.dtype": f"{_TORCH}tensor_attributes.html#torch.dtype",
    "torch.bfloat16": f"{_TORCH}tensor_attributes.html#torch.dtype",
    "torch.float16": f"{_TORCH}tensor_attributes.html#torch.dtype",
    "torch.distributed": f"{_TORCH}distributed.html",
    "torch.distributed.ProcessGroup": f"{_TORCH}distributed.html",
    "torch.distributed.distributed_c10d.Store": f"{_TORCH}distributed.html#torch.distributed.Store",
    "torch.nn": f"{_TORCH}nn.html",
    "torch.nn.Module": f"{_TORCH}generated/torch.nn.Module.html",
    "torch.nn.Parameter": f"{_TORCH}generated/torch.nn.parameter.Parameter.html",
    "torch.optim": f"{_TORCH}optim.html",
    "torch.optim.Optimizer": f"{_TORCH}optim.html#torch.optim.Optimizer",
    "torch.utils.data.DataLoader": f"{_TORCH}data.html#torch.utils.data.DataLoader",
    "torch.utils.data.Dataset": f"{_TORCH}data.html#torch.utils.data.Dataset",
    "torch.utils.data.distributed.DistributedSampler": (
        f"{_TORCH}data.html#torch.utils.data.distributed.DistributedSampler"
    ),
    # PyTorch Lightning, for gossip_nn.lightning (the API pages of its stable docs)
    "lightning.pytorch": f"{_LIGHTNING}api_references.html",
    "lightning.pytorch.LightningModule": f"{_LIGHTNING}common/lightning_module.html",
    "lightning.pytorch.Trainer": f"{_LIGHTNING}common/trainer.html",
    "lightning.pytorch.accelerators": f"{_LIGHTNING}extensions/accelerator.html",
    "lightning.pytorch.accelerators.Accelerator": f"{_LIGHTNING}extensions/accelerator.html",
    "lightning.pytorch.plugins.precision.Precision": f"{_LIGHTNING}extensions/plugins.html",
    "lightning.pytorch.strategies.DDPStrategy": (
        f"{_LIGHTNING}api/lightning.pytorch.strategies.DDPStrategy.html"
    ),
    "lightning.fabric.plugins.CheckpointIO": f"{_LIGHTNING}extensions/plugins.html",
    "lightning.fabric.plugins.ClusterEnvironment": f"{_LIGHTNING}extensions/plugins.html",
}
"""Documentation URL of each external name the public API refers to, by the identifier
mkdocstrings gives it (the name's resolved path, such as ``torch.nn.Module``)."""


def _references(expr: str | griffe.Expr | None) -> Iterator[str]:
    """The cross-reference targets mkdocstrings renders for an expression.

    Each name is one: ``torch.nn.Module`` written out renders as three links, ``torch``,
    ``torch.nn`` and ``torch.nn.Module``; ``Module`` imported from ``torch.nn`` as one.
    """
    if expr is None or isinstance(expr, str):
        return
    names = [expr] if isinstance(expr, griffe.ExprName) else expr.iterate(flat=True)
    for name in names:
        if isinstance(name, griffe.ExprName) and (path := name.reference_path) is not None:
            yield path


def _object_expressions(obj: griffe.Object, *, values: bool) -> Iterator[str | griffe.Expr | None]:
    if isinstance(obj, griffe.Function):
        for parameter in obj.parameters:
            yield parameter.annotation
            if values:
                yield parameter.default
        yield obj.returns
    elif isinstance(obj, griffe.Attribute):
        yield obj.annotation
        if values:
            yield obj.value
    elif isinstance(obj, griffe.Class):
        yield from obj.bases
    if obj.docstring is not None:
        for section in griffe.parse_google(obj.docstring, warnings=False):
            if section.kind is griffe.DocstringSectionKind.raises:
                yield from (item.annotation for item in section.value)


def _walk(
    obj: griffe.Object, seen: set[str], *, values: bool
) -> Iterator[str | griffe.Expr | None]:
    if obj.path in seen:
        return
    seen.add(obj.path)
    yield from _object_expressions(obj, values=values)
    if isinstance(obj, griffe.Class):
        for name, member in obj.members.items():
            if (name == "__init__" or not name.startswith("_")) and not member.is_alias:
                yield from _walk(member, seen, values=values)  # type: ignore[arg-type]


def external_names(packages: Iterable[griffe.Module], *, values: bool = False) -> set[str]:
    """The names outside ``packages`` that their reference pages would link to.

    Walks what the reference renders: each public module's ``__all__``, and the public
    members of each class there; collects the names in type annotations (of parameters,
    return values and attributes), base classes and ``Raises:`` sections.

    Args:
        packages: Packages loaded by ``api_packages.load_packages``.
        values: Also collect the names in default values and attribute values
            (``field(...)``, ``torch.bfloat16``). They link when ``EXTERNAL_URLS`` has
            them, but need not.

    Returns:
        Every such name, as mkdocstrings' cross-reference identifier; names that resolve
        into ``packages`` are left out.
    """
    packages = list(packages)
    ours = tuple(f"{package.path}." for package in packages)
    seen: set[str] = set()
    found: set[str] = set()
    for package in packages:
        for module in public_modules(package):
            for _, obj in exports(module):
                if obj is not None:
                    for expr in _walk(obj, seen, values=values):
                        found.update(_references(expr))
    return {name for name in found if not f"{name}.".startswith(ours)}


def missing_urls(packages: Iterable[griffe.Module]) -> list[str]:
    """External names the reference uses that ``EXTERNAL_URLS`` has no URL for.

    Args:
        packages: Packages loaded by ``api_packages.load_packages``.

    Returns:
        The names, sorted.
    """
    return sorted(external_names(packages) - set(EXTERNAL_URLS))


def on_config(config: Any) -> None:
    """mkdocs event: fail the build if a name the reference links to has no URL.

    Raises:
        PluginError: Naming each such name.
    """
    from mkdocs.exceptions import PluginError

    missing = missing_urls(build_packages(config).values())
    if missing:
        raise PluginError(
            "external_links: no documentation URL for "
            + ", ".join(missing)
            + "; add them to EXTERNAL_URLS in docs/hooks/external_links.py"
        )


def on_env(env: Any, config: Any, files: Any) -> Any:
    """mkdocs event: register every URL with autorefs before it resolves cross-references."""
    autorefs = config.plugins["autorefs"]
    for identifier, url in EXTERNAL_URLS.items():
        autorefs.register_url(identifier, url)
    return env


on_env.mkdocs_priority = 50  # type: ignore[attr-defined]  # as mkdocstrings' inventories
