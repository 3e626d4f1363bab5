"""Run the home page's example for real: ``quickstart.py`` under torchrun, two ranks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gossip_comm.testing import run_torchrun

PAGE = Path(__file__).parents[3] / "docs" / "index.md"

# The pages live in the repository, not in the package: from an sdist there is nothing to
# run. Only a missing repository skips; a missing page in a checkout still fails.
pytestmark = pytest.mark.skipif(
    not (Path(__file__).parents[3] / "mkdocs.yml").is_file(),
    reason="the documentation is not here (not a repository checkout, e.g. an sdist)",
)


@pytest.mark.slow
def test_home_page_example_runs(tmp_path: Path) -> None:
    text = PAGE.read_text()
    block = re.search(r'```python title="quickstart.py"\n(.*?)```', text, flags=re.S)
    assert block is not None, "docs/index.md has no quickstart.py block"
    (tmp_path / "quickstart.py").write_text(block.group(1))
    (command,) = re.findall(r"`torchrun (.*?quickstart\.py)`", text)
    args = command.replace("--nproc-per-node 4", "--nproc-per-node 2").split()
    result = run_torchrun(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # the two ranks share torchrun's stdout, where their lines can interleave
    losses = re.findall(r"rank (\d): loss (\d+\.\d+)", result.stdout)
    assert sorted(rank for rank, _ in losses) == ["0", "1"], result.stdout
    assert all(float(loss) < 0.01 for _, loss in losses), result.stdout  # y = sum(x): exact
