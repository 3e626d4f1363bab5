"""gossip-topology must never import torch, directly or through a dependency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "gossip_topology"


def test_importing_every_module_pulls_in_no_torch() -> None:
    modules = sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__main__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    name = 'gossip_topology' if m == '__init__' else 'gossip_topology.' + m\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_source_file_mentions_a_torch_import() -> None:
    for path in SRC.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import torch", "from torch")), f"{path.name}: {line}"
