r"""Consensus speed of every registry graph: simulated push-sum against the spectral prediction.

For each graph in ``gossip_topology.TOPOLOGY_NAMES`` (uniform mixing, one peer per step
where the graph lets us choose) at n = 32, 256 and 4096, this runs push-sum with the
package's simulator through ``gossip_topology.consensus_curve`` (d = 8 Gaussian columns,
fixed by that function; seed 0) and records the relative consensus error

$$ e(t) = \|z(t) - \bar x\|_F \,/\, \|z(0) - \bar x\|_F, \qquad t = 0 .. T, $$

with T = 200 steps (100 with ``--quick``, which runs n = 32 and 256 only). A graph that
``make_topology`` refuses at some n is skipped there, with the reason in the JSON.

The predicted curve
-------------------
The prediction uses only the package's own spectral quantity: ``P = period_product(topo)``,
the product of the mixing matrices over one schedule period (P steps, ``P =
schedule_period(topo)`` = ``topo.period`` under uniform mixing), and
$\sigma_2(P)$ = ``second_singular_value(P)``. The predicted per-step rate is

$$ \rho = \sigma_2(P)^{1/P}, $$

the "sigma2/step" column of ``python -m gossip_topology``, and the predicted curve is

$$ \hat e(t) = \rho^{\,t} = \sigma_2(P)^{t/P}, $$

i.e. ``C * rho^t`` with ``C = 1`` (the measured e(0), which is 1 by definition). What it
means: when P is doubly stochastic (every regular graph here), push-sum weights return to 1
at period boundaries, $z(kP) - \bar x = (P - J)^k (x_0 - \bar x)$ with $J = \mathbf 1
\mathbf 1^\top / n$, and $\sigma_2(P) = \|P - J\|_2$, so $e(kP) \le \sigma_2(P)^k$: the
curve is a worst-case upper bound at t = kP, geometrically interpolated in between (there
it is a guide, not a bound). A Gaussian start puts little weight on the slowest mode, so the
simulated curve lies below the prediction early on and approaches its slope only once the
slowest mode dominates (for a ring or torus that takes ~n^2 or ~n steps, beyond T at large
n). For the star, P is only column-stochastic, no bound follows and the line is a heuristic.

Exact averaging: when $\sigma_2(P) \le 10^{-12}$ the period product is J to round-off and
every input is averaged exactly by t = P. $\sigma_2(P)^{t/P}$ would then interpolate a
round-off number, so the predicted curve is instead drawn as 1 for t < P and 0 (plotted at
the floor) from t = P on, which is $\sigma_2(P)^{\lfloor t/P \rfloor}$; the table says
"exact by t=P" rather than a rate.

Cost at n = 4096. A dense SVD of a 4096 x 4096 period product takes tens of seconds on two
cores, too slow for a dozen graphs, so for n > 1024 the same $\sigma_2(P)$ is obtained more
cheaply, and the JSON records which way (``prediction.method``):

1. ``frobenius-bound``: $\sigma_2(P) \le \|P - J\|_F$ for any P (Weyl's inequality, J has
   rank one). When that is at most $10^{-12}$ the graph averages exactly in one period; the
   bound is recorded as $\sigma_2(P)$.
2. ``arpack-svds``: otherwise the two largest singular values of P by
   ``scipy.sparse.linalg.svds`` (ARPACK, P as a sparse matrix when it is sparse). At n = 256
   the same computation runs beside the dense one and the difference is recorded
   (``sigma2_arpack_check``) as evidence that the two agree.
3. skipped: when forming P itself is too costly (a dynamic linear graph's period is n / 2
   steps, 2048 dense 4096 x 4096 steps; the complete graph's 16.7 M edges make
   ``period_product`` re-plan them one by one and multiply a dense 4096 x 4096 block, about
   as slow as its whole simulation) or ARPACK does not converge (a ring's clustered
   singular values), no prediction is made and ``prediction.skip_reason`` says why.

The fitted empirical rate is $\exp$ of the least-squares slope of $\log e(t)$ over the tail
of the simulated curve: the last max(2P, half of the points) steps before it first drops to
the round-off floor ($10^{-13}$). It is measured, not predicted, and is shown only in the
table and JSON. For exact-averaging graphs the curve never reaches an asymptotic regime and
the fit is just the mean transient rate.

Writes ``benchmarks/results/consensus.json`` and ``consensus.md`` through ``write_results``
and the plot beside them as ``consensus.png`` (one panel per n, log-y, one colour per
graph, solid simulated, dashed predicted). With ``--quick`` all three are
``consensus_quick.*``, as ``write_results`` names smoke runs (git-ignored). Run with
``nox -s bench`` or ``python benchmarks/bench_consensus.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from _results import write_results
from gossip_topology import (
    TOPOLOGY_NAMES,
    Topology,
    consensus_curve,
    is_doubly_stochastic,
    make_topology,
    period_product,
    second_singular_value,
)

SIZES = (32, 256, 4096)
QUICK_SIZES = (32, 256)
STEPS = 200
QUICK_STEPS = 100
#: Columns of the start vector; fixed inside ``gossip_topology.consensus_curve``.
D = 8
SEED = 0
THRESHOLDS = (1e-3, 1e-6)
#: Relative error at or below this is round-off (converged curves sit near 1e-16).
FLOOR = 1e-13
#: sigma_2(P) at or below this means P = J to round-off: exact averaging in one period.
EXACT_TOL = 1e-12
#: Largest n for the package's dense ``second_singular_value`` (O(n^3)).
DENSE_SVD_MAX_N = 1024
#: Largest period * n^2 for which the dense period product is formed (~ a few seconds).
MAX_PRODUCT_WORK = 5e8
#: Most edges per period for which the period product is formed when n > DENSE_SVD_MAX_N.
MAX_PLAN_EDGES = 1e6
ARPACK_NCV = 40
ARPACK_MAXITER = 1000
#: Plot floor on the log axis (exact zeros are drawn here).
PLOT_FLOOR = 1e-17

Row = dict[str, Any]


def _arpack_sigma2(P: NDArray[np.float64]) -> float:
    """sigma_2(P) as the smaller of P's two largest singular values, by ARPACK."""
    from scipy import sparse
    from scipy.sparse.linalg import svds

    n = P.shape[0]
    A: Any = sparse.csr_array(P) if np.count_nonzero(P) < 0.05 * n * n else P
    s = svds(
        A,
        k=2,
        ncv=min(ARPACK_NCV, n - 1),
        maxiter=ARPACK_MAXITER,
        random_state=SEED,
        return_singular_vectors=False,
    )
    return float(np.min(s))


def predict(topo: Topology) -> Row:
    """The spectral prediction for ``topo``: sigma_2 of the period product and its method."""
    n, period = topo.world_size, topo.period
    out: Row = {
        "method": None,
        "sigma2_period": None,
        "rate_per_step": None,
        "exact_averaging": None,
        "doubly_stochastic": None,
        "skip_reason": None,
        "skip_note": None,
        "sigma2_arpack_check": None,
    }
    t0 = time.perf_counter()
    work = period * n * n
    if work > MAX_PRODUCT_WORK:
        out["skip_note"] = "skipped: P*n^2 too large for the dense period product"
        out["skip_reason"] = (
            f"period P={period}: forming the period product takes {period} dense "
            f"{n}x{n} mixing steps (P*n^2 = {work:.1e} > {MAX_PRODUCT_WORK:.0e}), too slow "
            "for this benchmark"
        )
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return out
    edges = sum(len(topo.out_peers(r, step)) for step in range(period) for r in range(n))
    if n > DENSE_SVD_MAX_N and edges > MAX_PLAN_EDGES:
        out["skip_note"] = "skipped: too many edges to re-plan the period product"
        out["skip_reason"] = (
            f"{edges} edges per period (> {MAX_PLAN_EDGES:.0e}): period_product builds its "
            "own mixing plan edge by edge in Python and then multiplies a dense "
            f"{n}x{n} hub block into the identity, as slow as the simulation itself"
        )
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return out
    P = period_product(topo)
    out["doubly_stochastic"] = is_doubly_stochastic(P)
    if n <= DENSE_SVD_MAX_N:
        sigma2 = second_singular_value(P)
        out["method"] = "dense-svd"
        if n > 2 * ARPACK_NCV:  # validate the cheaper method used at larger n
            try:
                arpack = _arpack_sigma2(P)
                out["sigma2_arpack_check"] = {"arpack": arpack, "abs_diff": abs(arpack - sigma2)}
            except Exception as exc:  # ArpackNoConvergence, or no scipy
                out["sigma2_arpack_check"] = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        fro = float(np.linalg.norm(P - 1.0 / n))
        if fro <= EXACT_TOL:
            sigma2, out["method"] = fro, "frobenius-bound"
        else:
            try:
                sigma2, out["method"] = _arpack_sigma2(P), "arpack-svds"
            except Exception as exc:  # ArpackNoConvergence, or no scipy
                out["skip_note"] = "skipped: ARPACK did not converge, dense SVD too slow"
                out["skip_reason"] = (
                    f"dense SVD of the {n}x{n} period product is O(n^3) (tens of seconds); "
                    f"ARPACK svds failed instead: {type(exc).__name__}: {exc}"
                )
                out["seconds"] = round(time.perf_counter() - t0, 3)
                return out
    out["sigma2_period"] = sigma2
    out["rate_per_step"] = sigma2 ** (1.0 / period)
    out["exact_averaging"] = sigma2 <= EXACT_TOL
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def predicted_curve(prediction: Row, period: int, steps: int) -> NDArray[np.float64] | None:
    """The predicted e(t), t = 0 .. steps (see the module docstring), or None if skipped."""
    if prediction["sigma2_period"] is None:
        return None
    t = np.arange(steps + 1)
    if prediction["exact_averaging"]:
        return np.where(t < period, 1.0, 0.0)
    return np.asarray(prediction["rate_per_step"] ** t, dtype=np.float64)


def fit_rate(curve: NDArray[np.float64], period: int) -> tuple[float | None, list[int] | None]:
    """Per-step rate fitted to the tail of ``curve`` before round-off, and its window."""
    below = np.flatnonzero(curve <= FLOOR)
    last = int(below[0]) - 1 if below.size else len(curve) - 1
    if last < 1:
        return None, None
    first = max(0, last + 1 - max(2 * period, (last + 1) // 2))
    t = np.arange(first, last + 1)
    slope = float(np.polyfit(t, np.log(curve[first : last + 1]), 1)[0])
    return float(np.exp(slope)), [first, last]


def steps_to(curve: NDArray[np.float64], eps: float) -> int | None:
    """First t with e(t) <= eps, or None within the simulated steps."""
    hit = np.flatnonzero(curve <= eps)
    return int(hit[0]) if hit.size else None


def run(name: str, n: int, steps: int) -> Row:
    t0 = time.perf_counter()
    topo = make_topology(name, n)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    curve = consensus_curve(topo, steps, seed=SEED)
    sim_s = time.perf_counter() - t0
    prediction = predict(topo)
    fitted, window = fit_rate(curve, topo.period)
    return {
        "n": n,
        "graph": name,
        "period": topo.period,
        "peers_per_itr": topo.peers_per_itr,
        "steps": steps,
        "steps_to": {f"{eps:g}": steps_to(curve, eps) for eps in THRESHOLDS},
        "final_error": float(curve[-1]),
        "fitted_rate_per_step": fitted,
        "fit_window": window,
        "prediction": prediction,
        "seconds": {"build": round(build_s, 3), "simulate": round(sim_s, 3)},
        "curve": [float(f"{v:.4g}") for v in curve],
    }


def _fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.6f}"


def table_row(r: Row) -> list[object]:
    p = r["prediction"]
    hits = [
        "> " + str(r["steps"]) if r["steps_to"][f"{eps:g}"] is None else r["steps_to"][f"{eps:g}"]
        for eps in THRESHOLDS
    ]
    if p["skip_reason"] is not None:
        predicted, note = "skipped", p["skip_note"]
    elif p["exact_averaging"]:
        predicted = f"0 (exact by t={r['period']})"
        note = f"{p['method']}, sigma2(P) = {p['sigma2_period']:.1e}"
    else:
        predicted, note = _fmt_rate(p["rate_per_step"]), p["method"]
        if not p["doubly_stochastic"]:
            note += ", P not doubly stochastic: heuristic"
    fitted = _fmt_rate(r["fitted_rate_per_step"])
    if p["exact_averaging"] and r["fitted_rate_per_step"] is not None:
        fitted += " (transient)"
    return [r["n"], r["graph"], r["period"], *hits, predicted, fitted, note]


def plot(rows: Sequence[Row], sizes: Sequence[int], steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    palette = [*plt.get_cmap("tab10").colors, "black", "#d4a017"]
    colour = {name: palette[i % len(palette)] for i, name in enumerate(TOPOLOGY_NAMES)}
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.2 * len(sizes), 6.2), sharey=True)
    t = np.arange(steps + 1)
    for ax, n in zip(np.atleast_1d(axes), sizes, strict=True):
        here = [r for r in rows if r["n"] == n]
        for i, r in enumerate(here):
            c = colour[r["graph"]]
            # A curve that a later graph repeats exactly is drawn wide and pale underneath.
            hidden = any(np.array_equal(r["curve"], q["curve"]) for q in here[i + 1 :])
            style = {"lw": 4.5, "alpha": 0.45} if hidden else {"lw": 1.6}
            ax.semilogy(t, np.maximum(r["curve"], PLOT_FLOOR), color=c, **style)
            pred = predicted_curve(r["prediction"], r["period"], steps)
            if pred is not None:
                ax.semilogy(t, np.maximum(pred, PLOT_FLOOR), color=c, lw=1.2, ls="--")
        ax.set_title(f"n = {n}")
        ax.set_xlabel("step t")
        ax.set_xlim(0, steps)
        ax.set_ylim(PLOT_FLOOR, 3)
        ax.grid(True, which="major", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(
        r"relative consensus error $\|z(t)-\bar x\| / \|z(0)-\bar x\|$"
    )
    handles = [Line2D([], [], color=colour[name], lw=2, label=name) for name in TOPOLOGY_NAMES]
    handles += [
        Line2D([], [], color="grey", lw=1.6, label="simulated (push-sum, d = 8)"),
        Line2D([], [], color="grey", lw=1.2, ls="--", label=r"predicted $\sigma_2(P)^{t/P}$"),
        Line2D(
            [],
            [],
            color="grey",
            lw=4.5,
            alpha=0.45,
            label="wide, pale: same curve as a later graph",
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.suptitle(
        "Push-sum consensus, uniform mixing: simulated (solid) vs spectral prediction (dashed)"
    )
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    rows: list[Row] = []
    skipped: list[Row] = []
    for n in sizes:
        print(f"n = {n}, {steps} steps", flush=True)
        for graph in TOPOLOGY_NAMES:
            try:
                row = run(graph, n, steps)
            except ValueError as exc:  # make_topology refuses this graph at this n
                skipped.append({"n": n, "graph": graph, "reason": str(exc)})
                print(f"  skip {graph}: {exc}", flush=True)
                continue
            rows.append(row)
            brief = {k: v for k, v in row.items() if k != "curve"}
            print("  " + json.dumps(brief, default=str), flush=True)
    measured = time.perf_counter() - start
    json_path, _ = write_results(
        "consensus",
        {"rows": rows, "skipped": skipped},
        header=[
            "n",
            "graph",
            "period P",
            "steps to 1e-3",
            "steps to 1e-6",
            "predicted rate/step sigma2(P)^(1/P)",
            "fitted rate/step (tail)",
            "prediction method / note",
        ],
        rows=[table_row(r) for r in rows],
        title="Consensus speed: simulated push-sum vs spectral prediction",
        quick=args.quick,
        notes=(
            f"Push-sum, uniform mixing, d = {D} Gaussian columns (seed {SEED}), {steps} "
            "steps; relative error ||z(t) - mean|| / ||z(0) - mean||. Predicted rate: "
            "sigma2 of the period product P to the power 1/P (`second_singular_value("
            "period_product(topo))`); at n > 1024 the same quantity by a Frobenius bound or "
            "ARPACK, or skipped where too costly (see the JSON and the module docstring). "
            f"Fitted rate: log-linear fit to the simulated tail above {FLOOR:g}. "
            f"Skipped graphs: {len(skipped) or 'none'}. Plot: the PNG of the same name."
        ),
        meta={
            "sizes": list(sizes),
            "steps": steps,
            "d": D,
            "seed": SEED,
            "mixing": "uniform",
            "floor": FLOOR,
            "exact_tol": EXACT_TOL,
            "dense_svd_max_n": DENSE_SVD_MAX_N,
            "scipy": _version("scipy"),
            "matplotlib": _version("matplotlib"),
            "seconds_measured": round(measured, 1),
        },
    )
    png = json_path.with_suffix(".png")  # follows write_results' naming (_quick suffix)
    plot(rows, sizes, steps, png)
    print(f"wrote {png}; total {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
