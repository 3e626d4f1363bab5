"""Turn a release tag ``<package>-v<version>`` into GitHub Actions outputs.

Prints ``package=<name>`` and ``version=<version>`` lines for ``$GITHUB_OUTPUT``. Exits
with a message naming the rule if the tag names no package of this repository, or if its
version is not the one in that package's ``pyproject.toml`` (so a release can never
publish something other than what the tag says).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_TAG = re.compile(r"^(?P<package>[a-z][a-z0-9-]*)-v(?P<version>\d+\.\d+\.\d+(?:[.-]?\w+)*)$")


def parse_tag(tag: str, root: Path = ROOT) -> tuple[str, str]:
    """Return ``(package, version)`` for a release tag.

    Args:
        tag: The git tag, for example ``gossip-nn-v0.2.0``.
        root: The repository root holding ``packages/``.

    Raises:
        ValueError: If the tag is malformed, names no package, or disagrees with the
            package's version.
    """
    match = _TAG.match(tag)
    if match is None:
        raise ValueError(f"tag {tag!r} must look like <package>-v<version>, e.g. gossip-nn-v0.2.0")
    package, version = match.group("package"), match.group("version")
    pyproject = root / "packages" / package / "pyproject.toml"
    if not pyproject.is_file():
        known = sorted(p.parent.name for p in (root / "packages").glob("*/pyproject.toml"))
        raise ValueError(f"tag {tag!r} names package {package!r}; the packages are {known}")
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    if declared != version:
        raise ValueError(
            f"tag {tag!r} says version {version} but {pyproject.relative_to(root)} says "
            f"{declared}; bump the version (and its CHANGELOG) first"
        )
    return package, version


def main(argv: list[str]) -> int:
    """Print the outputs for ``argv[1]``; return the exit status."""
    if len(argv) != 2:
        print("usage: release_tag.py TAG", file=sys.stderr)
        return 2
    try:
        package, version = parse_tag(argv[1])
    except ValueError as exc:
        print(f"release_tag.py: {exc}", file=sys.stderr)
        return 1
    print(f"package={package}")
    print(f"version={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
