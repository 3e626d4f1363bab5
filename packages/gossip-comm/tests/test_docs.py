"""Run the gossip-average tutorial for real: its script under torchrun, then its plot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).parents[3] / "docs" / "tutorials" / "gossip-average.md"


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
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    plots = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(plots) == 1
    exec(compile(plots[0], f"{PAGE.name}[plot]", "exec"), {"__name__": "__tutorial__"})
    assert (tmp_path / "gossip_average.png").stat().st_size > 10_000
