"""The GitHub workflows, the release-tag script and ``.ci/run``: they cannot run here, so
their content is checked: valid YAML, the right triggers, commands and permissions."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
PACKAGES = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    # YAML 1.1 reads the key `on` as True; accept either spelling.
    if True in data:
        data["on"] = data.pop(True)
    return data


def _runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def _uses(job: dict[str, Any]) -> list[str]:
    return [step["uses"] for step in job["steps"] if "uses" in step]


def test_docs_workflow_builds_with_the_nox_session_and_publishes_to_pages() -> None:
    wf = _load("docs.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    runs = _runs(build)
    assert "nox -s docs" in runs, runs
    assert "nox -s docs_browser" in runs, runs
    assert any(u.startswith("actions/upload-pages-artifact@") for u in _uses(build))
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages"))
    assert upload["with"]["path"].rstrip("/") == "site"  # where `nox -s docs` writes
    assert any(u.startswith("actions/deploy-pages@") for u in _uses(deploy))
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert "refs/heads/main" in deploy["if"] and "pull_request" in deploy["if"]
    assert wf["permissions"] == {"contents": "read"}  # write only where deploying


def test_the_docs_session_writes_the_directory_the_workflow_uploads() -> None:
    noxfile = (ROOT / "noxfile.py").read_text()
    assert re.search(r'"--site-dir", str\(ROOT / "site"\)', noxfile)


def test_release_workflow_builds_checks_and_publishes_one_package_per_tag() -> None:
    wf = _load("release.yml")
    tags = wf["on"]["push"]["tags"]
    assert sorted(tags) == sorted(f"{p}-v*" for p in PACKAGES)
    build, publish = wf["jobs"]["build"], wf["jobs"]["publish"]
    runs = "\n".join(_runs(build))
    assert 'python .github/scripts/release_tag.py "$GITHUB_REF_NAME"' in runs
    assert "-c constraints/ci.txt build twine" in runs
    assert re.search(
        r'python -m build --outdir dist/ "packages/\$\{\{ steps\.tag\.outputs\.package \}\}"', runs
    )
    assert "twine check --strict dist/*" in runs
    assert publish["needs"] == "build"
    assert publish["permissions"] == {"id-token": "write"}  # trusted publishing
    (pypi,) = [
        s for s in publish["steps"] if s.get("uses", "").startswith("pypa/gh-action-pypi-publish@")
    ]
    assert not {"password", "user"} & set(pypi.get("with", {})), "trusted publishing needs no token"
    assert wf["permissions"] == {"contents": "read"}


def _release_tag() -> ModuleType:
    path = ROOT / ".github" / "scripts" / "release_tag.py"
    spec = importlib.util.spec_from_file_location("release_tag", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version_of(package: str) -> str:
    pyproject = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())
    return str(pyproject["project"]["version"])


def test_release_tag_reads_every_package_at_its_current_version() -> None:
    release_tag = _release_tag()
    for package in PACKAGES:
        version = _version_of(package)
        assert release_tag.parse_tag(f"{package}-v{version}") == (package, version)
    version = _version_of("gossip-nn")
    script = ROOT / ".github" / "scripts" / "release_tag.py"
    out = subprocess.run(
        [sys.executable, str(script), f"gossip-nn-v{version}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.splitlines() == ["package=gossip-nn", f"version={version}"]


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("gossip-nn-0.2.0", "must look like <package>-v<version>"),
        ("gossip-nnn-v0.2.0", "names package 'gossip-nnn'; the packages are"),
        ("gossip-nn-v9.9.9", "says version 9.9.9 but packages/gossip-nn/pyproject.toml says"),
    ],
)
def test_release_tag_refuses_bad_tags(tag: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _release_tag().parse_tag(tag)
    proc = subprocess.run(
        [sys.executable, str(ROOT / ".github" / "scripts" / "release_tag.py"), tag],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and message in proc.stderr and proc.stdout == ""


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    (command,) = re.findall(
        r"^(pip install nox && nox -s [^#\n]*?tests(?: faults)?(?: tutorials)?)\s*(?:#.*)?$",
        readme,
        flags=re.M,
    )
    ci_lines = [
        line.strip()
        for line in ci.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert command.strip() in ci_lines, f"{command!r} not a line of .ci/run"
    sessions = command.split("nox -s", 1)[1].split()
    for session in ("lint", "typecheck", "docs", "docs_browser", "tests", "faults", "tutorials"):
        assert session in sessions, f"CI must run nox -s {session}"
    assert "apt-get install -y chromium" in ci  # docs_browser needs a browser on a fresh machine


def test_tools_the_release_installs_are_pinned_by_the_constraints() -> None:
    constraints = (ROOT / "constraints" / "ci.txt").read_text().lower()
    for tool in ("build", "twine"):
        assert re.search(rf"^{tool}==", constraints, flags=re.M), f"pin {tool} in constraints"
