r"""Compressed gossip: consensus speed and bytes on the wire, beside uncompressed push-sum.

Two measurements, written by the shared writer to ``benchmarks/results/``:

``compression.{json,md,png}``: consensus curves.
    For n = 16, 256 and 4096 on ``npeer-dynamic-directed-exponential`` (one peer per
    step) and n = 16 and 256 on ``ring``, uniform mixing, d = 64 Gaussian columns (seed
    0), T = 300 steps, it runs gossip-topology's simulator: plain push-sum
    (``simulate_push_sum``) and compressed push-sum (``simulate_compressed_push_sum``) with
    each of ``bf16``, ``int8``, ``topk:0.1``, ``topk:0.01``, ``lowrank:1`` and
    ``lowrank:2``, each at its default consensus step. Every message has the layout
    ``[(8, 8)]`` (one 8 x 8 matrix, which ``lowrank`` compresses; the others ignore it). It
    records the relative consensus error

    $$ e(t) = \|z(t) - \bar x\|_F \,/\, \|z(0) - \bar x\|_F, \qquad t = 0 .. T, $$

    of the de-biased values $z = x / w$, the steps to reach 1e-2 and 1e-4, the error at
    T, the bytes per message (``Compressor.payload_bytes(d, itemsize=4, layout)``: the
    wire size for a float32 buffer; the push-sum weight, one float64 per message, is not
    counted) and the bytes each rank sends until e(t) <= 1e-2 (steps x out-peers per
    step x bytes per message). ``--quick`` runs T = 100 and drops n = 4096.

``compression_bytes.{json,md}``: bytes per message for ResNet-50.
    The parameter shapes of ``torchvision.models.resnet50(num_classes=1000)`` (built on
    the meta device), float32, through gossip-comm's
    ``make_compressor(spec).payload_bytes(MessageSpec(...))`` for each compressor, beside
    torch DDP's communication hooks as closed forms (not measured): the bf16 hook sends
    2 bytes per element, PowerSGD (``powerSGD_hook``, default ``min_compression_rate=2``)
    views each gradient as ``shape[0] x rest`` and sends ``(m + n) r`` floats for the
    matrices its ``_should_compress`` accepts and the rest (vectors) uncompressed.

Run: ``nox -s bench`` or ``python benchmarks/bench_compression.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from _results import write_results
from gossip_topology import (
    Topology,
    make_topology,
    parse_compressor,
    simulate_compressed_push_sum,
    simulate_push_sum,
)

Row = dict[str, Any]

SIZES = (16, 256, 4096)
QUICK_SIZES = (16, 256)
STEPS = 300
QUICK_STEPS = 100
D = 64
LAYOUT = ((8, 8),)  # one 8 x 8 matrix per message, so that lowrank has a matrix to compress
SEED = 0
ITEMSIZE = 4  # bytes per element of a float32 buffer: what the wire sizes assume
THRESHOLDS = (1e-2, 1e-4)
BUDGET_EPS = 1e-2  # bytes sent per rank are counted up to this error
# (graph, largest n it runs at): a ring at 4096 would need ~n^2 steps, far beyond T.
GRAPHS = (("npeer-dynamic-directed-exponential", 4096), ("ring", 256))
NONE = "none"  # plain push-sum, the uncompressed baseline
COMPRESSIONS = (NONE, "bf16", "int8", "topk:0.1", "topk:0.01", "lowrank:1", "lowrank:2")
PLOT_FLOOR = 1e-17

RESNET_SPECS = ("bf16", "int8", "topk:0.01", "topk:0.1", "lowrank:1", "lowrank:2", "lowrank:4")
POWERSGD_RANKS = (1, 2, 4)
POWERSGD_MIN_COMPRESSION_RATE = 2  # torch's PowerSGDState default


def relative_error(z: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """e(t) for a trace of de-biased values ``z`` of shape ``(T + 1, n, d)``."""
    err = np.sqrt(((z - mean) ** 2).sum(axis=(1, 2)))
    return err / max(float(err[0]), np.finfo(float).tiny)


def steps_to(curve: np.ndarray, eps: float) -> int | None:
    """First t with e(t) <= eps, or None within the simulated steps."""
    hit = np.flatnonzero(curve <= eps)
    return int(hit[0]) if hit.size else None


def messages_per_rank(topo: Topology) -> list[float]:
    """Messages one rank sends at each phase of the schedule, averaged over ranks."""
    n = topo.world_size
    return [sum(len(topo.out_peers(i, t)) for i in range(n)) / n for t in range(topo.period)]


def sent_by(per_phase: Sequence[float], steps: int) -> float:
    """Messages one rank has sent after ``steps`` steps (the schedule repeats)."""
    full, rest = divmod(steps, len(per_phase))
    return full * sum(per_phase) + sum(per_phase[:rest])


def simulate(topo: Topology, x0: np.ndarray, steps: int, compression: str) -> np.ndarray:
    """The de-biased trace ``(steps + 1, n, d)`` of plain or compressed push-sum."""
    if compression == NONE:
        return simulate_push_sum(topo, x0, steps).debiased
    trace = simulate_compressed_push_sum(
        topo, x0, steps, compression=compression, layout=LAYOUT, seed=SEED
    )
    return trace.debiased


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def run(topo: Topology, graph: str, x0: np.ndarray, steps: int, compression: str) -> Row:
    t0 = time.perf_counter()
    curve = relative_error(simulate(topo, x0, steps, compression), x0.mean(axis=0))
    seconds = time.perf_counter() - t0
    raw = ITEMSIZE * D
    if compression == NONE:
        per_message, gamma = raw, 1.0
    else:
        compressor = parse_compressor(compression)
        assert compressor is not None
        per_message = compressor.payload_bytes(D, itemsize=ITEMSIZE, layout=LAYOUT)
        gamma = compressor.default_consensus_step
    per_phase = messages_per_rank(topo)
    hits = {f"{eps:g}": steps_to(curve, eps) for eps in THRESHOLDS}
    budget = hits[f"{BUDGET_EPS:g}"]
    return {
        "graph": graph,
        "n": topo.world_size,
        "compression": compression,
        "consensus_step": gamma,
        "d": D,
        "steps": steps,
        "bytes_per_message": per_message,
        "fraction_of_float32": per_message / raw,
        "messages_per_rank_per_step": per_phase,
        "steps_to": hits,
        f"bytes_per_rank_to_{BUDGET_EPS:g}": (
            None if budget is None else sent_by(per_phase, budget) * per_message
        ),
        "final_error": _finite(curve[-1]),
        "diverged": not bool(np.isfinite(curve).all()) or bool(curve[-1] > 1),
        "seconds": round(seconds, 2),
        "curve": [_finite(float(f"{v:.4g}")) for v in curve],
    }


def consensus_rows(sizes: Sequence[int], steps: int) -> list[Row]:
    rows: list[Row] = []
    for graph, largest in GRAPHS:
        for n in (n for n in sizes if n <= largest):
            topo = make_topology(graph, n)
            x0 = np.random.default_rng(SEED).normal(size=(n, D))
            print(f"{graph}, n = {n}, {steps} steps", flush=True)
            for compression in COMPRESSIONS:
                row = run(topo, graph, x0, steps, compression)
                rows.append(row)
                brief = {k: v for k, v in row.items() if k not in ("curve", "graph", "n")}
                print("  " + json.dumps(brief), flush=True)
    return rows


def _steps(row: Row, eps: float) -> str:
    hit = row["steps_to"][f"{eps:g}"]
    return f"> {row['steps']}" if hit is None else str(hit)


def consensus_table_row(r: Row) -> list[object]:
    budget = r[f"bytes_per_rank_to_{BUDGET_EPS:g}"]
    final = "diverged" if r["final_error"] is None else f"{r['final_error']:.1e}"
    return [
        r["graph"],
        r["n"],
        r["compression"],
        f"{r['consensus_step']:g}",
        r["bytes_per_message"],
        f"{r['fraction_of_float32']:.3f}",
        *(_steps(r, eps) for eps in THRESHOLDS),
        final,
        "not reached" if budget is None else f"{budget:.0f}",
    ]


def resnet50_shapes() -> list[tuple[int, ...]]:
    """The parameter shapes of torchvision's ResNet-50 (1000 classes), in order."""
    import torch
    from torchvision.models import resnet50

    with torch.device("meta"):
        model = resnet50(num_classes=1000)
    return [tuple(p.shape) for p in model.parameters()]


def powersgd_floats(shapes: Sequence[tuple[int, ...]], rank: int) -> int:
    """Floats torch's ``powerSGD_hook`` all-reduces per step (P, Q and the uncompressed).

    Follows ``powerSGD_hook``: each tensor is viewed as ``shape[0] x rest``, the rank is
    capped at both sides, and it is compressed when ``_should_compress`` says so.
    """
    total = 0
    for shape in shapes:
        m = shape[0]
        n = math.prod(shape) // m
        r = min(m, n, rank)
        compressed = (m + n) * r
        total += compressed if compressed * POWERSGD_MIN_COMPRESSION_RATE < m * n else m * n
    return total


def bytes_rows() -> tuple[list[Row], int]:
    import torch

    from gossip_comm import MessageSpec, make_compressor

    shapes = resnet50_shapes()
    numel = sum(math.prod(s) for s in shapes)
    raw = 4 * numel
    spec = MessageSpec(
        numel=numel,
        dtype=torch.float32,
        device=torch.device("cpu"),
        layout=tuple(torch.Size(s) for s in shapes),
    )
    rows: list[Row] = [
        {"method": "gossip, uncompressed (float32)", "bytes": raw, "source": "4 bytes x parameters"}
    ]
    for name in RESNET_SPECS:
        rows.append(
            {
                "method": f"gossip, {name}",
                "bytes": make_compressor(name).payload_bytes(spec),
                "source": "gossip_comm Compressor.payload_bytes",
            }
        )
    rows.append(
        {
            "method": "DDP bf16_compress_hook",
            "bytes": 2 * numel,
            "source": "closed form: 2 bytes x parameters",
        }
    )
    for r in POWERSGD_RANKS:
        rows.append(
            {
                "method": f"DDP powerSGD_hook, rank {r}",
                "bytes": 4 * powersgd_floats(shapes, r),
                "source": "closed form: powerSGD_hook's rule, min_compression_rate=2",
            }
        )
    for row in rows:
        row["fraction_of_float32"] = row["bytes"] / raw
    return rows, numel


def _array(values: Sequence[float | None]) -> np.ndarray:
    """A stored curve as floats, a diverged (None) entry as NaN, floored for a log axis."""
    curve = np.array([np.nan if v is None else v for v in values], dtype=float)
    return np.maximum(curve, PLOT_FLOOR)


def _grid(panels: Sequence[tuple[str, int]]) -> tuple[dict[tuple[str, int], Any], Any, Any]:
    """One row per graph, one column per n; the first free cell (or a new column) is spare."""
    import matplotlib.pyplot as plt

    sizes = sorted({n for _, n in panels})
    graphs = [g for g, _ in GRAPHS]
    where = {(g, n): (graphs.index(g), sizes.index(n)) for g, n in panels}
    cells = [(r, c) for r in range(len(graphs)) for c in range(len(sizes))]
    free = [rc for rc in cells if rc not in where.values()]
    cols = len(sizes) + (not free)
    fig, axes = plt.subplots(len(graphs), cols, figsize=(6 * cols, 5 * len(graphs)), squeeze=False)
    spare = axes[free[0]] if free else axes[0, -1]
    for rc in free[1:] if free else [(r, cols - 1) for r in range(1, len(graphs))]:
        axes[rc].axis("off")
    return {key: axes[rc] for key, rc in where.items()}, spare, fig


def plot(rows: Sequence[Row], panels: Sequence[tuple[str, int]], steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {c: plt.get_cmap("tab10")(i) for i, c in enumerate(COMPRESSIONS[1:])}
    colour[NONE] = "black"
    axes, spare, fig = _grid(panels)
    t = np.arange(steps + 1)
    for (graph, n), ax in axes.items():
        for r in (r for r in rows if r["graph"] == graph and r["n"] == n):
            ax.semilogy(
                t, _array(r["curve"]), color=colour[r["compression"]],
                lw=2.6 if r["compression"] == NONE else 1.5,
                label=f"{r['compression']} ($\\gamma$ = {r['consensus_step']:g})",
            )  # fmt: skip
        ax.set_title(f"{graph}, n = {n}", fontsize=10)
        ax.set_xlabel("step t")
        ax.set_xlim(0, steps)
    # Error against bytes: the first graph at its largest n.
    graph, n = max(panels, key=lambda p: (p[0] == panels[0][0], p[1]))
    for r in (r for r in rows if r["graph"] == graph and r["n"] == n):
        sent = np.array([sent_by(r["messages_per_rank_per_step"], s) for s in t[1:]])
        spare.loglog(
            sent * r["bytes_per_message"], _array(r["curve"][1:]),
            color=colour[r["compression"]], lw=2.6 if r["compression"] == NONE else 1.5,
        )  # fmt: skip
    spare.set_title(f"{graph}, n = {n}: error against bytes sent", fontsize=10)
    spare.set_xlabel(f"bytes sent per rank (d = {D}, float32 wire sizes)")
    for ax in [*axes.values(), spare]:
        ax.set_ylabel("relative consensus error e(t)")
        ax.set_ylim(PLOT_FLOOR, 10)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = next(iter(axes.values())).get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(COMPRESSIONS), frameon=False)
    fig.suptitle(
        f"Compressed push-sum, uniform mixing, d = {D} (one 8 x 8 matrix), each compressor "
        "at its default consensus step; black: uncompressed"
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_consensus(
    rows: list[Row], sizes: Sequence[int], steps: int, *, quick: bool, seconds: float
) -> Path:
    json_path, _ = write_results(
        "compression",
        {"rows": rows},
        header=[
            "graph",
            "n",
            "compression",
            "consensus step",
            "bytes/message",
            "fraction of float32",
            *(f"steps to {eps:g}" for eps in THRESHOLDS),
            f"error at t={steps}",
            f"bytes/rank to {BUDGET_EPS:g}",
        ],
        rows=[consensus_table_row(r) for r in rows],
        title="Compressed push-sum: consensus against bytes, beside uncompressed",
        quick=quick,
        notes=(
            f"gossip-topology's simulator, uniform mixing, d = {D} Gaussian columns (seed "
            f"{SEED}) sent as one 8 x 8 matrix, {steps} steps, each compressor at its "
            "default consensus step; error: ||z(t) - mean|| / ||z(0) - mean|| of the "
            "de-biased values. Bytes per message: the wire size for a float32 buffer "
            f"(uncompressed: {ITEMSIZE * D} bytes; the push-sum weight, one float64, not "
            f"counted). Bytes/rank to {BUDGET_EPS:g}: steps x out-peers per step x "
            "bytes per message. Plot: the PNG of the same name."
        ),
        meta={
            "sizes": list(sizes),
            "graphs": {g: [n for n in sizes if n <= m] for g, m in GRAPHS},
            "steps": steps,
            "d": D,
            "layout": [list(s) for s in LAYOUT],
            "itemsize": ITEMSIZE,
            "seed": SEED,
            "mixing": "uniform",
            "thresholds": list(THRESHOLDS),
            "reductions": "none: every case runs at the full d and T",
            "matplotlib": _version("matplotlib"),
            "seconds_measured": round(seconds, 1),
        },
    )
    return json_path


def write_bytes(rows: list[Row], numel: int, quick: bool) -> None:
    write_results(
        "compression_bytes",
        {"numel": numel, "rows": rows},
        header=["method", "bytes per message or step", "MB", "fraction of float32", "source"],
        rows=[
            [
                r["method"],
                r["bytes"],
                f"{r['bytes'] / 1e6:.2f}",
                f"{r['fraction_of_float32']:.4f}",
                r["source"],
            ]
            for r in rows
        ],
        title="Bytes on the wire for ResNet-50 (float32 parameters)",
        quick=quick,
        notes=(
            f"torchvision's resnet50(num_classes=1000), {numel} parameters in float32. "
            "Gossip rows: one message to one out-peer, from gossip-comm's "
            "`Compressor.payload_bytes` with the parameters' shapes as the layout "
            "(push-sum weight not counted). DDP rows are computed, not measured: the "
            "input of the hook's all-reduces per step (PowerSGD: P and Q for each matrix "
            "`_should_compress` accepts, the rest uncompressed); a ring all-reduce sends "
            "about twice its input per rank."
        ),
        meta={"torchvision": _version("torchvision"), "powersgd_min_compression_rate": 2},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"n = {', '.join(map(str, QUICK_SIZES))} and {QUICK_STEPS} steps: a smoke run",
    )
    args = parser.parse_args(argv)
    sizes, steps = (QUICK_SIZES, QUICK_STEPS) if args.quick else (SIZES, STEPS)
    start = time.perf_counter()
    brows, numel = bytes_rows()
    write_bytes(brows, numel, args.quick)
    rows = consensus_rows(sizes, steps)
    seconds = time.perf_counter() - start
    json_path = write_consensus(rows, sizes, steps, quick=args.quick, seconds=seconds)
    panels = [(g, n) for g, m in GRAPHS for n in sizes if n <= m]
    png = json_path.with_suffix(".png")  # follows write_results' naming (_quick suffix)
    plot(rows, panels, steps, png)
    print(f"wrote {png}; total {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
