"""Run the "Wrap your model" tutorial for real: every torchrun command on the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gossip_comm.testing import run_torchrun

PAGE = Path(__file__).parents[3] / "docs" / "tutorials" / "wrap-your-model.md"


# The pages live in the repository, not in the package: from an sdist there is nothing to
# run. Only a missing repository skips; a missing page in a checkout still fails.
pytestmark = pytest.mark.skipif(
    not (Path(__file__).parents[3] / "mkdocs.yml").is_file(),
    reason="the documentation is not here (not a repository checkout, e.g. an sdist)",
)


@pytest.mark.slow
def test_wrap_your_model_tutorial_runs_every_command(tmp_path: Path) -> None:
    text = PAGE.read_text()
    script = re.search(r'```python title="train.py"\n(.*?)```', text, flags=re.S)
    assert script is not None
    (tmp_path / "train.py").write_text(script.group(1))
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
    text = REAL.read_text()
    script = re.search(r'```python title="train_amp.py"\n(.*?)```', text, flags=re.S)
    assert script is not None
    (tmp_path / "train_amp.py").write_text(script.group(1))
    (command,) = re.findall(r"^torchrun (.*)$", text, flags=re.M)
    result = run_torchrun(command.split(), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"^accuracy of the averaged model ([0-9.]+)$", result.stdout, flags=re.M)
    assert match is not None, result.stdout
    assert float(match.group(1)) > 0.85, result.stdout  # a linearly separable task
