"""``--legacy-schedule`` reaches gossip-topology's 2019 phone books through the CLI.

gossip-topology tests those books against a hand-written statement of the 2019 rules
(graphs 0-5, n = 4..64, k = 1..3); here the command line must select exactly them, and
without the flag the corrected schedule."""

from __future__ import annotations

import re

import pytest

from gossip_nn import GossipOptions
from gossip_topology import PhoneBookTopology, Topology, make_topology
from sgp_imagenet.cli import build_parser
from sgp_imagenet.options import wrapper_options


def _args(graph: int, k: int, legacy: bool) -> object:
    argv = ["train", "--dataset", "digits", "--algorithm", "sgp", "--topology", str(graph),
            "--peers-per-itr-schedule", f"0:{k}"]  # fmt: skip
    return build_parser().parse_args(argv + (["--legacy-schedule"] if legacy else []))


def _topology(args: object, n: int, k: int) -> Topology:
    """The graph the ranks build from the command line: flags -> options -> gossip-nn."""
    options = GossipOptions(**wrapper_options(args, peers_per_itr=k))
    return options.build_topology(n)


def _books(topo: object, n: int) -> list[list[int]]:
    assert isinstance(topo, PhoneBookTopology)
    return [topo.phone_book(r) for r in range(n)]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("graph", range(6))
def test_the_flag_selects_the_2019_books_for_every_graph_and_size(graph: int, k: int) -> None:
    differ = 0
    for n in range(4, 65):
        for legacy in (True, False):
            try:
                expected = make_topology(graph, n, k, legacy_phone_book=legacy)
            except ValueError as exc:
                with pytest.raises(ValueError, match=re.escape(str(exc))):
                    _topology(_args(graph, k, legacy), n, k)
                continue
            got = _topology(_args(graph, k, legacy), n, k)
            assert _books(got, n) == _books(expected, n), (graph, n, k, legacy)
            assert got.period == expected.period
            if legacy:
                try:
                    corrected = make_topology(graph, n, k)
                except ValueError:
                    continue
                differ += _books(got, n) != _books(corrected, n)
    if graph == 0:  # the duplicates the 2019 membership test kept change the books
        assert differ > 0


def test_the_float_logarithm_of_2019_at_244_ranks() -> None:
    legacy = _topology(_args(5, 2, True), 244, 2)
    exact = _topology(_args(5, 2, False), 244, 2)
    assert len(_books(legacy, 244)[0]) == 2 * 5  # levels 0..4 of base 3, two peers each
    assert len(_books(exact, 244)[0]) == 2 * 6  # the exact floor(log3(243)) = 5
