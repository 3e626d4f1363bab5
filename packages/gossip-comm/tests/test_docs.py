"""The docs' code, run for real: the gossip-average tutorial under torchrun (then its
plot), and the user-defined compressor of the "Sending less" page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm import GossipConfig, PushSum
from gossip_comm.testing import run_distributed, run_torchrun
from gossip_topology import make_topology

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


@pytest.mark.slow
def test_gossip_average_tutorial_runs_with_a_world_size_not_a_power_of_two(
    tmp_path: Path,
) -> None:
    script = re.search(r'```python title="average.py"\n(.*?)```', PAGE.read_text(), flags=re.S)
    assert script is not None
    (tmp_path / "average.py").write_text(script.group(1))
    args = ["--standalone", "--nproc-per-node", "3", "average.py", "curves.json"]
    result = run_torchrun(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]  # the script asserts its estimate
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert curves["one-peer-exponential"][-1] < curves["one-peer-exponential"][0]


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


COMPRESSION_PAGE = Path(__file__).parents[3] / "docs" / "concepts" / "compression.md"
D = 48


def _x0(n: int) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((n, D))


def _page_compressor() -> Any:
    """The ``Sign`` compressor of the "Sending less" page, executed from the page."""
    blocks = re.findall(r"```python\n(.*?)```", COMPRESSION_PAGE.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "class Sign(Compressor)" in b]
    code = code.split("\ndp = ")[0]  # the last line wraps a model the page assumes
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    exec(compile(code, f"{COMPRESSION_PAGE.name}[Sign]", "exec"), namespace)
    return namespace["Sign"]()


def _sign_worker(rank: int, n: int) -> Any:
    x = torch.from_numpy(_x0(n)[rank].copy())
    topo = make_topology("npeer-dynamic-directed-exponential", n, 1)
    ps = PushSum(topo, x, config=GossipConfig(timeout=60, compression=_page_compressor()))
    w = 1.0
    for _ in range(60):
        x, w = ps.mix(x, w)
    return x.numpy().copy(), w, ps.bytes_sent


def test_the_docs_user_defined_compressor_works() -> None:
    res = run_distributed(_sign_worker, 4, timeout=120)
    x0 = _x0(4)
    xs = np.stack([r[0] for r in res])
    np.testing.assert_allclose(xs.sum(0), x0.sum(0), atol=1e-11)  # the sum is exact
    z = xs / np.array([r[1] for r in res])[:, None]
    spread0 = np.linalg.norm(x0 - x0.mean(0))
    assert np.linalg.norm(z - x0.mean(0)) < 0.1 * spread0  # and the ranks come together
    assert res[0][2] == 60 * (D + 8)  # one int8 per element and a float64 scale
