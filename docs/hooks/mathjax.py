"""mkdocs hook: ship MathJax with the site instead of loading it from a CDN.

The site must show its formulas on an offline mirror, so MathJax's browser build is copied
into ``site/javascripts/mathjax/``. It comes from the npm registry's tarball of a pinned
version, checked against the registry's published sha512 digest, and is cached in
``.cache/mathjax-<version>/`` at the repository root (or ``$GOSSIP_MATHJAX_CACHE``), so it
is downloaded once per machine. ``$GOSSIP_MATHJAX_TARBALL`` names a local copy of the
tarball for machines with no registry access; its digest is checked the same way.

Only the pieces the site can use are shipped (about 7 MB): the TeX-to-HTML component
``tex-chtml.js``, its web fonts, the TeX extensions it autoloads, and the accessibility
and menu components it loads when a reader turns them on. The page configuration lives in
``docs/javascripts/mathjax.js``. It imports no mkdocs module at import time, so tests can
load it by path.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["MATHJAX_SHA512", "MATHJAX_VERSION", "ensure_mathjax", "on_files"]

MATHJAX_VERSION = "3.2.2"
"""The MathJax release the site ships (npm package ``mathjax``)."""

MATHJAX_SHA512 = (
    "Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
)
"""The npm registry's ``dist.integrity`` digest (base64 sha512) of that release's tarball."""

_TARBALL_URL = f"https://registry.npmjs.org/mathjax/-/mathjax-{MATHJAX_VERSION}.tgz"
_ROOT = Path(__file__).resolve().parents[2]
# Paths inside the tarball's package/es5/ directory that the site ships.
_KEEP = (
    "tex-chtml.js",
    "output/chtml/fonts/woff-v2/",
    "input/tex/extensions/",
    "a11y/",
    "ui/",
    "sre/",
)
_SITE_DIR = "javascripts/mathjax"


def _cache_dir() -> Path:
    base = os.environ.get("GOSSIP_MATHJAX_CACHE")
    root = Path(base) if base else _ROOT / ".cache"
    return root / f"mathjax-{MATHJAX_VERSION}"


def _tarball() -> bytes:
    local = os.environ.get("GOSSIP_MATHJAX_TARBALL")
    if local:
        data = Path(local).read_bytes()
        source = local
    else:
        try:
            with urllib.request.urlopen(_TARBALL_URL, timeout=120) as response:
                data = response.read()
        except OSError as exc:
            raise RuntimeError(
                f"could not download MathJax {MATHJAX_VERSION} from {_TARBALL_URL} ({exc}); "
                "set GOSSIP_MATHJAX_TARBALL to a local copy of that tarball"
            ) from exc
        source = _TARBALL_URL
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != MATHJAX_SHA512:
        raise RuntimeError(
            f"MathJax tarball from {source} has sha512 {digest}, expected {MATHJAX_SHA512}"
        )
    return data


def ensure_mathjax() -> Path:
    """Return the cached ``es5`` directory, downloading and unpacking it if needed.

    Returns:
        A directory holding ``tex-chtml.js`` and the files it loads, plus MathJax's LICENSE.

    Raises:
        RuntimeError: If the tarball cannot be fetched or its digest does not match.
    """
    target = _cache_dir()
    done = target / ".complete"
    if done.is_file():
        return target
    data = _tarball()
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            name = member.name.removeprefix("package/")
            if name == "LICENSE":
                rel = "LICENSE"
            elif name.startswith("es5/") and name[4:].startswith(_KEEP):
                rel = name[4:]
            else:
                continue
            source = archive.extractfile(member)
            assert source is not None
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(source.read())
    (staging / ".complete").write_text(MATHJAX_VERSION + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(target)
    except OSError:  # another build finished first
        shutil.rmtree(staging, ignore_errors=True)
        if not done.is_file():
            raise
    return target


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    """Add the cached MathJax files to the site under ``javascripts/mathjax/``."""
    from mkdocs.structure.files import File

    es5 = ensure_mathjax()
    for path in sorted(es5.rglob("*")):
        if path.is_file() and path.name != ".complete":
            rel = path.relative_to(es5).as_posix()
            files.append(File.generated(config, f"{_SITE_DIR}/{rel}", abs_src_path=str(path)))
    return files
