"""The "Moving from DDP" page's own code: its two scripts run, and its diff is theirs.

The claims the page makes are tested in test_from_ddp.py, which needs no docs.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from gossip_comm.testing import run_torchrun

PAGE = Path(__file__).parents[3] / "docs" / "guides" / "from-ddp.md"

# The page lives in the repository, not in the package: from an sdist there is nothing
# to run. Only a missing repository skips; a missing page in a checkout still fails.
_needs_page = pytest.mark.skipif(
    not (Path(__file__).parents[3] / "mkdocs.yml").is_file(),
    reason="the documentation is not here (not a repository checkout, e.g. an sdist)",
)


def _block(text: str, lang: str, title: str | None = None) -> str:
    head = f'```{lang} title="{title}"' if title else f"```{lang}"
    found = re.findall(rf"^{re.escape(head)}\n(.*?)^```$", text, flags=re.S | re.M)
    assert len(found) == 1, f"{PAGE.name}: expected one {head} block, found {len(found)}"
    return str(found[0])


@_needs_page
def test_the_diff_on_the_page_is_the_diff_of_its_two_scripts() -> None:
    text = PAGE.read_text()
    before, after = (
        _block(text, "python", "train_ddp.py"),
        _block(text, "python", "train_gossip.py"),
    )
    diff = difflib.unified_diff(
        before.splitlines(), after.splitlines(), "train_ddp.py", "train_gossip.py", n=1, lineterm=""
    )
    # (an editor may strip the one space of a blank context line)
    assert [line.rstrip() for line in _block(text, "diff").splitlines()] == [
        line.rstrip() for line in diff
    ]


@_needs_page
@pytest.mark.slow
def test_both_scripts_on_the_page_train(tmp_path: Path) -> None:
    text = PAGE.read_text()
    for script in ("train_ddp.py", "train_gossip.py"):
        (tmp_path / script).write_text(_block(text, "python", script))
        (command,) = re.findall(rf"^torchrun (.* {script})$", text, flags=re.M)
        result = run_torchrun(
            command.replace("--nproc-per-node 4", "--nproc-per-node 2").split(), tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        match = re.search(r"^test accuracy ([0-9.]+)$", result.stdout, flags=re.M)
        assert match is not None, result.stdout
        assert float(match.group(1)) > 0.9, result.stdout  # a linearly separable task
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [
        "checkpoint.pt",
        "checkpoint.rank0.pt",
        "checkpoint.rank1.pt",
        "model.pt",
    ]
