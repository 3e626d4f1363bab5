"""Run the code of the "Choosing an algorithm and a topology" guide and check what it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).parents[3] / "docs" / "guides" / "choosing.md"


# The page lives in the repository, not in the package: from an sdist there is nothing to
# run. Only a missing repository skips; a missing page in a checkout still fails.
pytestmark = pytest.mark.skipif(
    not (Path(__file__).parents[3] / "mkdocs.yml").is_file(),
    reason="the documentation is not here (not a repository checkout, e.g. an sdist)",
)
# a python block, then "prints", then the text block it must print
EXAMPLE = re.compile(r"```python\n(.*?)```\n\nprints\n\n```text\n(.*?)```", re.S)


def _tokens(text: str) -> list[str | float]:
    out: list[str | float] = []
    for token in re.findall(r"[^\s\[\],]+", text):
        try:
            out.append(float(token))
        except ValueError:
            out.append(token)
    return out


def test_every_printed_example_prints_what_the_page_shows() -> None:
    examples = EXAMPLE.findall(PAGE.read_text())
    assert len(examples) == 2  # the spectral comparison and the learning-rate schedule
    for code, shown in examples:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{PAGE.name}[example]", "exec"), {"__name__": "__guide__"})
        got, want = _tokens(printed.getvalue()), _tokens(shown)
        assert len(got) == len(want), printed.getvalue()
        for g, w in zip(got, want, strict=True):
            if isinstance(w, float):  # the last printed digit may differ across BLAS builds
                assert g == pytest.approx(w, abs=1.1e-3), printed.getvalue()
            else:
                assert g == w, printed.getvalue()
