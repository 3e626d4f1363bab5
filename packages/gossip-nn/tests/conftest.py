"""Make the helper modules (``nn_oracles``, ``ft_helpers``) importable under
``--import-mode=importlib``; the store fixture of the fault-tolerance tests."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gossip_comm.testing import store_server

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def store_port() -> Iterator[int]:
    """The port of a TCPStore served by the test process (the membership store)."""
    with store_server() as port:
        yield port
