"""``python -m gossip_topology``: compare topologies by schedule, spectrum and consensus speed."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from gossip_topology.mixing import mixing_matrix
from gossip_topology.registry import TOPOLOGY_NAMES, make_topology
from gossip_topology.simulate import simulate_push_sum
from gossip_topology.spectral import (
    is_strongly_connected,
    period_product,
    rounds_to_consensus,
    second_singular_value,
)
from gossip_topology.topology import Topology

__all__ = ["consensus_curve", "main"]


_DESCRIPTION = """\
Compare gossip topologies by schedule, spectrum and consensus speed. Prints one row
per graph family with uniform mixing; with --plot, also saves each family's push-sum
consensus curve."""

_EPILOG = """\
columns:
  period       steps after which the graph sequence repeats
  regular      whether, at every step, every rank has the same in- and out-degree
  bipart.      whether the ranks split into passive and active sets (AD-PSGD needs this)
  sigma2 W(0)  second-largest singular value of the mixing matrix at step 0
  sigma2/step  the same for the product over one period, per step; lower mixes faster
  rounds       fewest steps until every rank is within --eps of the mean, for any input
               (push-sum, de-biased); "never" if the graph is not strongly connected

topology names:
""" + textwrap.fill(
    ", ".join(TOPOLOGY_NAMES),
    width=88,
    initial_indent="  ",
    subsequent_indent="  ",
    break_on_hyphens=False,
)


def consensus_curve(topology: Topology, steps: int, seed: int = 0) -> NDArray[np.float64]:
    """Relative consensus error ``||z(t) - mean|| / ||z(0) - mean||`` for ``t = 0 .. steps``.

    Push-sum from a random start (8 values per rank), de-biased, as ``main`` plots it.

    Args:
        topology: The graph, with uniform mixing.
        steps: Number of gossip steps to simulate.
        seed: Seed of the random start.

    Returns:
        ``steps + 1`` errors: the first is 1 (0 for a single rank).
    """
    n = topology.world_size
    x0 = np.random.default_rng(seed).normal(size=(n, 8))
    z = simulate_push_sum(topology, x0, steps).debiased
    err = np.linalg.norm(z - x0.mean(axis=0), axis=(1, 2))
    rel: NDArray[np.float64] = err / max(float(err[0]), np.finfo(float).tiny)
    return rel


def _build(names: Sequence[str], n: int, k: int) -> list[Topology]:
    topos = []
    for name in names:
        try:
            topos.append(make_topology(name, n, k))
        except ValueError as exc:
            print(f"skipping {name}: {exc}")
    return topos


def main(argv: Sequence[str] | None = None) -> int:
    """Print a comparison table and, with ``--plot``, save consensus curves as a PNG.

    Args:
        argv: The command-line arguments, without the program name; ``sys.argv[1:]``
            when ``None``. ``python -m gossip_topology --help`` lists them.

    Returns:
        The process exit code (0 on success; argparse exits with 2 on a usage error).
    """
    parser = argparse.ArgumentParser(
        prog="python -m gossip_topology",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=16,
        help="number of ranks in every graph (default: %(default)s)",
    )
    parser.add_argument(
        "--peers-per-itr",
        type=int,
        default=1,
        help="out-peers per rank and step; graphs that cannot use this many are skipped "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--topologies",
        nargs="+",
        default=list(TOPOLOGY_NAMES),
        choices=TOPOLOGY_NAMES,
        metavar="NAME",
        help="graph families to compare, by the names listed below (default: all)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=30,
        help="steps of the consensus curves (default: %(default)s)",
    )
    parser.add_argument(
        "--eps",
        type=float,
        default=1e-6,
        help="tolerance on the consensus error, in (0, 2), for the rounds column "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="also write the consensus curves to this PNG file (needs matplotlib)",
    )
    args = parser.parse_args(argv)
    if args.world_size < 1:
        parser.error(f"--world-size must be >= 1; got {args.world_size}")

    topos = _build(args.topologies, args.world_size, args.peers_per_itr)
    print(f"world_size={args.world_size}, peers_per_itr={args.peers_per_itr}, uniform mixing\n")
    header = (
        f"{'topology':36} {'period':>6} {'regular':>7} {'bipart.':>7} "
        f"{'sigma2 W(0)':>11} {'sigma2/step':>11} {'rounds':>7}"
    )
    print(header)
    print("-" * len(header))
    curves: dict[str, NDArray[np.float64]] = {}
    for topo in topos:
        s2 = second_singular_value(mixing_matrix(topo, 0))
        per_step = second_singular_value(period_product(topo)) ** (1 / topo.period)
        rounds = (
            str(rounds_to_consensus(topo, args.eps, max_steps=10_000))
            if is_strongly_connected(topo)
            else "never"
        )
        print(
            f"{topo.name:36} {topo.period:>6} {topo.is_regular!s:>7} "
            f"{topo.is_bipartite!s:>7} {s2:>11.4f} {per_step:>11.4f} {rounds:>7}"
        )
        curves[topo.name] = consensus_curve(topo, args.steps)
    print(
        f"\nrounds: fewest steps until every rank is within eps={args.eps:g} of the mean "
        "for any input (push-sum, de-biased)"
    )
    if args.plot is not None:
        _plot(curves, args.plot, args.world_size)
        print(f"wrote {args.plot}")
    return 0


def _same_curves(
    curves: dict[str, NDArray[np.float64]],
) -> list[tuple[list[str], NDArray[np.float64]]]:
    """``curves`` with equal ones drawn once: (every name with that curve, the curve).

    Two graphs can mix identically (the one-peer exponential graph and the 2019 graph 5
    with one peer are the same graph), and a plot that draws both hides one under the
    other; the legend names them together instead.
    """
    groups: list[tuple[list[str], NDArray[np.float64]]] = []
    for name, curve in curves.items():
        for names, seen in groups:
            if seen.shape == curve.shape and np.allclose(seen, curve, rtol=1e-9, atol=1e-15):
                names.append(name)
                break
        else:
            groups.append(([name], curve))
    return groups


def _plot(curves: dict[str, NDArray[np.float64]], path: Path, n: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    floor = 1e-16
    cmap = plt.get_cmap("tab10")
    markers = "os^vD<>ph*"
    for i, (names, curve) in enumerate(_same_curves(curves)):
        ax.semilogy(
            np.maximum(curve, floor),
            label=" = ".join(names),
            color=cmap(i % cmap.N),
            linestyle=("-", "--", ":", "-.")[i % 4],
            marker=markers[i % len(markers)],
            markevery=max(1, len(curve) // 8),
            markersize=4,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("relative consensus error")
    ax.set_title(f"Push-sum consensus, n = {n}")
    ax.set_ylim(floor, 2)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
