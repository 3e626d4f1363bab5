"""Run the tutorial's code blocks, in order, so the documentation cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[3] / "docs" / "tutorials"
TUTORIALS = ["topologies.md"]


# The pages live in the repository, not in the package: from an sdist there is nothing to
# run. Only a missing repository skips; a missing page in a checkout still fails.
pytestmark = pytest.mark.skipif(
    not (Path(__file__).parents[3] / "mkdocs.yml").is_file(),
    reason="the documentation is not here (not a repository checkout, e.g. an sdist)",
)


@pytest.mark.parametrize("page", TUTORIALS)
def test_tutorial_code_runs(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"no python blocks in {page}"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__tutorial__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page}[block {i}]", "exec"), namespace)
    assert (tmp_path / "consensus.png").stat().st_size > 10_000
