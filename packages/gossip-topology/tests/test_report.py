"""The ``python -m gossip_topology`` tour, run through its real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gossip_topology import Complete, OnePeerExponential, Ring, make_topology
from gossip_topology.report import consensus_curve, main


def test_main_prints_a_row_per_topology_with_exact_rounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--world-size", "8", "--topologies", "complete", "one-peer-exponential"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line}
    assert rows["complete"][-1] == "1"
    assert rows["one-peer-exponential"][-1] == "3"


def test_module_entry_point_writes_the_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gossip_topology",
            "--world-size",
            "6",
            "--steps",
            "5",
            "--topologies",
            "ring",
            "star",
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_world_size_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--world-size", "0"])
    assert exc.value.code == 2


def test_consensus_curve_reaches_zero_where_averaging_is_exact() -> None:
    curve = consensus_curve(OnePeerExponential(8), 4)
    assert curve[0] == 1.0 and curve[3] < 1e-14
    np.testing.assert_allclose(consensus_curve(Complete(5), 1)[1], 0.0, atol=1e-15)
    assert np.all(np.diff(consensus_curve(Ring(6, 2), 10)) <= 1e-12)


def test_the_plot_draws_graphs_that_mix_alike_once_under_both_names() -> None:
    from gossip_topology.report import _same_curves

    n, steps = 16, 8
    names = ["one-peer-exponential", "npeer-dynamic-directed-exponential", "ring"]
    curves = {name: consensus_curve(make_topology(name, n), steps) for name in names}
    groups = _same_curves(curves)
    # the one-peer exponential graph is the 2019 graph 5 with one peer: equal curves
    assert [g[0] for g in groups] == [names[:2], ["ring"]]
    np.testing.assert_array_equal(groups[1][1], curves["ring"])
