"""Run the "Wrap your model" tutorial for real: every torchrun command on the page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gossip_comm.testing import run_torchrun, store_server

PAGE = Path(__file__).parents[3] / "docs" / "tutorials" / "wrap-your-model.md"


# The pages live in the repository, not in the package: from an sdist there is nothing to
# run. Only a missing repository skips; a missing page in a checkout still fails.
pytestmark = pytest.mark.skipif(
    not (Path(__file__).parents[3] / "mkdocs.yml").is_file(),
    reason="the documentation is not here (not a repository checkout, e.g. an sdist)",
)


def _script(page: Path, title: str, into: Path) -> str:
    """Write the page's ``title`` code block to ``into / title``; return the page's text."""
    text = page.read_text()
    script = re.search(rf'```python title="{re.escape(title)}"\n(.*?)```', text, flags=re.S)
    assert script is not None, f"{page.name} has no {title} block"
    (into / title).write_text(script.group(1))
    return text


@pytest.mark.slow
def test_wrap_your_model_tutorial_runs_every_command(tmp_path: Path) -> None:
    text = _script(PAGE, "train.py", tmp_path)
    commands = re.findall(r"^torchrun (.*)$", text, flags=re.M)
    assert len(commands) == 6  # five algorithms, then a resume
    for command in commands:
        args = command.replace("--nproc-per-node 4", "--nproc-per-node 2").split()
        result = run_torchrun(args, tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        algorithm = args[args.index("--algorithm") + 1]
        match = re.search(
            rf"^{algorithm}: loss of the averaged model ([0-9.]+)$", result.stdout, flags=re.M
        )
        assert match is not None, result.stdout
        assert float(match.group(1)) < 0.05, result.stdout  # noise variance is 0.01
    saved = sorted(p.name for p in tmp_path.glob("checkpoint.*.pt"))
    assert saved == [
        f"checkpoint.{a}.rank{r}.pt"
        for a in ("adpsgd", "ar", "dpsgd", "osgp", "sgp")
        for r in (0, 1)
    ]


REAL = Path(__file__).parents[3] / "docs" / "tutorials" / "real-training.md"


@pytest.mark.slow
def test_real_training_tutorial_runs(tmp_path: Path) -> None:
    text = _script(REAL, "train_amp.py", tmp_path)
    (command,) = re.findall(r"^torchrun (.*)$", text, flags=re.M)
    result = run_torchrun(command.split(), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"^accuracy of the averaged model ([0-9.]+)$", result.stdout, flags=re.M)
    assert match is not None, result.stdout
    assert float(match.group(1)) > 0.85, result.stdout  # a linearly separable task


FAILURES_PAGE = Path(__file__).parents[3] / "docs" / "guides" / "surviving-failures.md"


@pytest.mark.slow
def test_surviving_failures_guide_script_runs(tmp_path: Path) -> None:
    _script(FAILURES_PAGE, "train_ft.py", tmp_path)
    with store_server() as port:
        env = {**os.environ, "COORDINATOR": f"127.0.0.1:{port}", "WORKERS": "2"}
        workers = [
            subprocess.Popen(
                [sys.executable, "train_ft.py"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [w.communicate(timeout=240) for w in workers]
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err[-3000:]
        match = re.search(r"^member (\d): loss ([0-9.]+), generation 0$", out, flags=re.M)
        assert match is not None, out
        assert float(match.group(2)) < 0.05, out  # y = sum(x) is linear: learnt exactly
