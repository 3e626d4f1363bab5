"""Run the getting-started script for real, and check what it prints against the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gossip_comm.testing import run_torchrun

ROOT = Path(__file__).parents[3]
PAGE = ROOT / "docs" / "getting-started.md"
SCRIPT = ROOT / "docs" / "examples" / "getting_started.py"
TRUE_WEIGHTS = [1.0, -2.0, 3.0, 0.5]  # what the script's synthetic data is made from

# The page lives in the repository, not in the package: from an sdist there is nothing to
# run. Only a missing repository skips; a missing page in a checkout still fails.
pytestmark = pytest.mark.skipif(
    not (Path(__file__).parents[3] / "mkdocs.yml").is_file(),
    reason="the documentation is not here (not a repository checkout, e.g. an sdist)",
)

LOSS = re.compile(r"^step +(\d+)  loss on rank 0: ([0-9.]+)$", re.M)
ROW = re.compile(r"^(rank \d+|average) weights +((?:[+-][0-9.]+ *){4})$", re.M)


def _rows(text: str) -> dict[str, list[float]]:
    return {label: [float(v) for v in values.split()] for label, values in ROW.findall(text)}


def _shape(text: str) -> list[list[str]]:
    """Each printed line with its numbers blanked: what must match between page and run."""
    return [re.sub(r"[+-]?\d+\.\d+", "#", line).split() for line in text.strip().splitlines()]


@pytest.mark.slow
def test_getting_started_script_runs_and_prints_what_the_page_shows(tmp_path: Path) -> None:
    page = PAGE.read_text()
    assert f'--8<-- "{SCRIPT.relative_to(ROOT)}"' in page  # the page shows this very file
    assert re.search(r"^torchrun --nproc-per-node 4 train\.py$", page, flags=re.M)
    # --standalone: a free port, so the test never collides with another job's 29500
    result = run_torchrun(["--standalone", "--nproc-per-node", "4", str(SCRIPT)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout

    shown = re.search(r"```text\n(step +0 .*?)```", page, flags=re.S)
    assert shown is not None, "the page's 'what it prints' block is missing"
    assert _shape(out) == _shape(shown.group(1)), out

    losses = [(int(s), float(v)) for s, v in LOSS.findall(out)]
    assert [s for s, _ in losses] == [0, 25, 50, 75, 100], out
    assert losses[-1][1] < losses[0][1] / 100, out  # the loss falls by two orders
    assert losses[-1][1] < 0.05, out  # the noise's variance is 0.01

    rows = _rows(out)
    own = [rows[f"rank {r}"] for r in range(4)]
    average = rows["average"]
    # SGP on a regular graph keeps every push-sum weight at 1, so the network average is
    # the plain mean of the ranks' models; the printed figures are rounded to 1e-4
    mean = [sum(column) / 4 for column in zip(*own, strict=True)]
    assert average == pytest.approx(mean, abs=1.5e-4), out
    assert average == pytest.approx(TRUE_WEIGHTS, abs=0.05), out
    for weights in own:  # gossip has kept the ranks close to one another
        assert weights == pytest.approx(average, abs=0.02), out
