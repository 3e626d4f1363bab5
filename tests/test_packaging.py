"""Every package builds an sdist and a wheel that carry the LICENSE, the metadata users see
on PyPI (URLs, classifiers, the Python and torch floors that are actually tested), and
pass ``twine check``; and each sdist's tests skip the repository-only docs tests cleanly."""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))
URL_LABELS = {"Homepage", "Documentation", "Source", "Issues", "Changelog"}
# A package test that reads the repository's docs/ (absent from an sdist) must skip there.
DOCS_MARKERS = ('/ "docs"', "docs/hooks", '"mkdocs.yml"', '.. / ".." / "docs"')


def _docs_tests(package: str) -> list[str]:
    tests = sorted((ROOT / "packages" / package / "tests").glob("test_*.py"))
    return [f"tests/{t.name}" for t in tests if any(m in t.read_text() for m in DOCS_MARKERS)]


def _pyproject(package: str) -> dict[str, object]:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())


def _pin(name: str) -> tuple[int, int]:
    text = (ROOT / "constraints" / "ci.txt").read_text()
    match = re.search(rf"^{name}==(\d+)\.(\d+)", text, flags=re.M)
    assert match, f"constraints/ci.txt pins no {name}"
    return int(match.group(1)), int(match.group(2))


def _floor(requirement: str) -> tuple[int, int]:
    match = re.search(r">=\s*(\d+)\.(\d+)", requirement)
    assert match, f"{requirement!r} states no lower bound"
    return int(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Build every package's sdist and wheel once, with hatchling, without network."""
    pytest.importorskip("hatchling")
    out: dict[str, tuple[Path, Path]] = {}
    for package in PACKAGES:
        dist = tmp_path_factory.mktemp(package)
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-d", str(dist)],
            cwd=ROOT / "packages" / package, check=True, capture_output=True,
        )  # fmt: skip
        (sdist,) = dist.glob("*.tar.gz")
        (wheel,) = dist.glob("*.whl")
        out[package] = (sdist, wheel)
    return out


def test_every_package_has_the_repository_license() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    for package in PACKAGES:
        assert (ROOT / "packages" / package / "LICENSE").read_text() == license_text, package
        assert _pyproject(package)["project"]["license"] == "MIT"  # type: ignore[index]


@pytest.mark.parametrize("package", PACKAGES)
def test_sdist_and_wheel_ship_the_license_and_full_metadata(
    package: str, built: dict[str, tuple[Path, Path]]
) -> None:
    sdist, wheel = built[package]
    license_text = (ROOT / "LICENSE").read_text()
    with tarfile.open(sdist) as tar:
        (member,) = [
            m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/LICENSE")
        ]
        handle = tar.extractfile(member)
        assert handle is not None and handle.read().decode() == license_text
    with zipfile.ZipFile(wheel) as whl:
        (lic,) = [n for n in whl.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert whl.read(lic).decode() == license_text
        (meta_name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(whl.read(meta_name).decode())
    assert meta["License-Expression"] == "MIT"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) >= URL_LABELS, sorted(urls)
    assert urls["Changelog"].endswith(f"/packages/{package}/CHANGELOG.md")
    assert urls["Documentation"] == "https://gossip-nn.github.io/gossip/"
    classifiers = meta.get_all("Classifier")
    for prefix in ("Development Status ::", "Intended Audience ::", "Topic ::"):
        assert any(c.startswith(prefix) for c in classifiers), prefix
    python_floor = _floor(meta["Requires-Python"])
    assert f"Programming Language :: Python :: {python_floor[0]}.{python_floor[1]}" in classifiers


def test_python_and_torch_floors_are_what_is_tested() -> None:
    """The floors are the versions the checks run against: the Python of mypy and ruff
    (the root pyproject) and the torch and torchvision of constraints/ci.txt."""
    workspace = tomllib.loads((ROOT / "pyproject.toml").read_text())
    checked = tuple(int(x) for x in workspace["tool"]["mypy"]["python_version"].split("."))
    assert workspace["tool"]["ruff"]["target-version"] == f"py{checked[0]}{checked[1]}"
    assert sys.version_info[:2] >= checked
    for package in PACKAGES:
        project = _pyproject(package)["project"]
        assert _floor(project["requires-python"]) == checked, package  # type: ignore[index]
        for dep in project["dependencies"]:  # type: ignore[index]
            name = re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0]
            if name in ("torch", "torchvision"):
                assert _floor(dep) == _pin(name), (
                    f"{package}: {dep} but CI tests {name} {_pin(name)}"
                )


def test_plot_extras_bring_matplotlib() -> None:
    for package in ("gossip-topology", "sgp-imagenet"):
        extras = _pyproject(package)["project"]["optional-dependencies"]  # type: ignore[index]
        assert any(req.startswith("matplotlib") for req in extras["plot"]), package


def test_distributions_pass_twine_check(built: dict[str, tuple[Path, Path]]) -> None:
    pytest.importorskip("twine")
    files = [str(f) for pair in built.values() for f in pair]
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == len(files), proc.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_docs_tests_skip_cleanly_from_an_sdist(
    package: str, built: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    sdist, _ = built[package]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (unpacked,) = tmp_path.iterdir()
    found = _docs_tests(package)
    assert found, f"{package}: no test reads docs/? then this check tests nothing"
    tests = [str(unpacked / t) for t in found]
    for test in tests:
        assert Path(test).is_file(), f"the sdist lacks {test}"
        assert not (Path(test).parents[3] / "mkdocs.yml").exists()  # what the tests look for
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],
        cwd=unpacked, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\d+ skipped", proc.stdout) and "passed" not in proc.stdout, proc.stdout
    assert "failed" not in proc.stdout and "error" not in proc.stdout.lower(), proc.stdout
    shutil.rmtree(unpacked)
