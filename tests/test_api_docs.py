"""The API reference's build-time checks, in docs/hooks/, on the real packages and on fakes.

``api_reference`` fails the docs build on public names without docstrings and public
modules without a reference page; ``external_links`` on annotations whose Python, NumPy
or PyTorch documentation URL is unknown. Each check is run here on a fake package that
breaks it, so a check that can no longer fail is noticed.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("griffe")  # installed with mkdocstrings in the docs environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

import api_packages  # noqa: E402
import api_reference  # noqa: E402
import external_links  # noqa: E402


@pytest.fixture(scope="module")
def packages() -> list[Any]:
    return list(api_packages.load_packages(ROOT).values())


def write_package(root: Path, files: dict[str, str]) -> list[Any]:
    """A package ``fake_pkg`` under ``root/packages/fake-pkg/src``, loaded with griffe."""
    src = root / "packages" / "fake-pkg" / "src" / "fake_pkg"
    src.mkdir(parents=True)
    for name, text in files.items():
        (src / name).write_text(textwrap.dedent(text))
    return list(api_packages.load_packages(root).values())


FAKE = {
    "__init__.py": '''
        """A fake package."""

        from fake_pkg._impl import hidden_home
        from fake_pkg.core import Child, Thing, helper

        __all__ = ["LIMIT", "Child", "Thing", "helper", "hidden_home", "missing"]

        LIMIT = 3
        ''',
    "_impl.py": '''
        def hidden_home() -> int:
            """Defined in a private module, documented."""
            return 1
        ''',
    "core.py": '''
        __all__ = ["Child", "Thing", "helper", "undocumented_function"]


        class Thing:
            """A thing.

            Attributes:
                size: Listed in the class docstring, so documented.
            """

            label: str = "thing"

            def __init__(self) -> None:
                self.size = 1
                self.colour = "red"
                self._secret = 0

            def run(self) -> None:
                pass

            def stop(self) -> None:
                """Documented."""

            @property
            def weight(self) -> int:
                return 1

            def _private(self) -> None:
                pass


        class Child(Thing):
            """Overrides without docstrings of its own."""

            def stop(self) -> None:
                pass


        def helper() -> None:
            """Documented."""


        def undocumented_function() -> None:
            pass
        ''',
}


def test_the_check_reports_each_kind_of_undocumented_name(tmp_path: Path) -> None:
    problems = api_reference.undocumented(write_package(tmp_path, FAKE))
    assert sorted(problems) == [
        "fake_pkg.LIMIT",
        "fake_pkg.Thing.colour",
        "fake_pkg.Thing.label",
        "fake_pkg.Thing.run",
        "fake_pkg.Thing.weight",
        "fake_pkg.core (module)",
        "fake_pkg.core.undocumented_function",
        "fake_pkg.missing (in __all__ but not found)",
    ]


def test_the_real_packages_have_no_undocumented_public_name(packages: list[Any]) -> None:
    assert api_reference.undocumented(packages) == []


def test_a_public_module_without_a_reference_page_is_reported(tmp_path: Path) -> None:
    fake = write_package(tmp_path, FAKE)
    assert api_reference.missing_pages(fake, ["fake_pkg"]) == ["fake_pkg.core"]
    assert api_reference.missing_pages(fake, ["fake_pkg.core"]) == []


def test_every_public_module_has_a_reference_page(packages: list[Any]) -> None:
    directives = [
        identifier
        for page in (ROOT / "docs" / "reference").rglob("*.md")
        for identifier in api_reference._DIRECTIVE.findall(page.read_text())
    ]
    assert api_reference.missing_pages(packages, directives) == []


def test_summary_links_each_name_to_its_module_page(tmp_path: Path) -> None:
    files = {**FAKE, "__init__.py": FAKE["__init__.py"].replace(', "missing"', "")}
    (fake,) = write_package(tmp_path, files)
    table = api_reference.summary_markdown(fake)
    assert "| [`Thing`][fake_pkg.Thing] | class | A thing. | [`core`](core.md) |" in table
    assert "| [`helper`][fake_pkg.helper] | function | Documented. | [`core`](core.md) |" in table
    assert "| [`LIMIT`][fake_pkg.LIMIT] | constant |  | [below](#other-names) |" in table
    # a name from a private module is documented on the overview itself
    assert "::: fake_pkg.hidden_home" in table
    assert "::: fake_pkg.Thing" not in table


def test_external_names_have_urls_and_no_url_is_stale(packages: list[Any]) -> None:
    assert external_links.missing_urls(packages) == []
    used = external_links.external_names(packages, values=True)
    assert sorted(set(external_links.EXTERNAL_URLS) - used) == []


def test_a_new_external_annotation_is_reported(tmp_path: Path) -> None:
    fake = write_package(
        tmp_path,
        {
            "__init__.py": '''
                """A fake package."""

                import decimal

                import torch

                __all__ = ["scale"]


                def scale(x: torch.Tensor, by: decimal.Decimal) -> torch.Tensor:
                    """Documented.

                    Raises:
                        ZeroDivisionError: Never.
                    """
                    return x
                ''',
        },
    )
    assert external_links.external_names(fake) == {
        "decimal",
        "decimal.Decimal",
        "torch",
        "torch.Tensor",
        "ZeroDivisionError",
    }
    assert external_links.missing_urls(fake) == ["ZeroDivisionError", "decimal", "decimal.Decimal"]


def test_external_urls_point_at_the_python_numpy_and_pytorch_docs() -> None:
    sites = (
        "https://docs.python.org/3/",
        "https://numpy.org/doc/stable/",
        "https://docs.pytorch.org/docs/stable/",
        "https://lightning.ai/docs/pytorch/stable/",
    )
    assert [url for url in external_links.EXTERNAL_URLS.values() if not url.startswith(sites)] == []
