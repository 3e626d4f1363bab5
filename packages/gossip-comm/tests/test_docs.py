"""Run the gossip-average tutorial for real: its script under torchrun, then its plot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gossip_comm.testing import run_torchrun

PAGE = Path(__file__).parents[3] / "docs" / "tutorials" / "gossip-average.md"


# The pages live in the repository, not in the package: from an sdist there is nothing to
# run. Only a missing repository skips; a missing page in a checkout still fails.
pytestmark = pytest.mark.skipif(
    not (Path(__file__).parents[3] / "mkdocs.yml").is_file(),
    reason="the documentation is not here (not a repository checkout, e.g. an sdist)",
)


@pytest.mark.slow
def test_gossip_average_tutorial_runs_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    text = PAGE.read_text()
    script = re.search(r'```python title="average.py"\n(.*?)```', text, flags=re.S)
    assert script is not None
    (tmp_path / "average.py").write_text(script.group(1))
    command = re.search(r"```bash\n(torchrun .*?)\n```", text)
    assert command is not None and command.group(1).endswith("average.py curves.json")
    args = command.group(1).split()[1:]
    result = run_torchrun(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    plots = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(plots) == 1
    exec(compile(plots[0], f"{PAGE.name}[plot]", "exec"), {"__name__": "__tutorial__"})
    assert (tmp_path / "gossip_average.png").stat().st_size > 10_000


SCRIPT = """
import sys
from pathlib import Path
runs = Path("runs.txt")
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
if sys.argv[1] == "abort-once" and n == 1:
    sys.stderr.write("terminate called without an active exception\\n")
    sys.exit(134)
if sys.argv[1] == "broken":
    raise SystemExit("a real failure")
"""


def test_run_torchrun_retries_only_the_known_gloo_exit_abort(tmp_path: Path) -> None:
    for mode, code, runs in [("abort-once", 0, "2"), ("broken", 1, "1"), ("fine", 0, "1")]:
        folder = tmp_path / mode
        folder.mkdir()
        (folder / "script.py").write_text(SCRIPT)
        result = run_torchrun(["--standalone", "--nproc-per-node", "1", "script.py", mode], folder)
        assert (result.returncode == 0) == (code == 0), (mode, result.stderr[-500:])
        assert (folder / "runs.txt").read_text() == runs, mode
