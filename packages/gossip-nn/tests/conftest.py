"""Make the helper modules (``nn_oracles``, ``ft_helpers``) importable under
``--import-mode=importlib``; the store fixture of the fault-tolerance tests; the Lightning
scenarios, run once for the ``test_lightning_*`` modules."""

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip_comm.testing import store_server

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def store_port() -> Iterator[int]:
    """The port of a TCPStore served by the test process (the membership store)."""
    with store_server() as port:
        yield port


@pytest.fixture(scope="session")
def lightning_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run ``lightning_worker.py`` once on two processes (torchrun); each rank's record."""
    from gossip_comm.testing import run_torchrun

    tmp = tmp_path_factory.mktemp("lightning")
    worker = Path(__file__).parent / "lightning_worker.py"
    result = run_torchrun(["--nproc-per-node", "2", str(worker), str(tmp)], tmp, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
