"""Training on a bad network: delay, jitter, packet loss and a cut link, on the emulated
4-host 1 Gbit/s cluster.

Run as root: ``nox -s cluster_network`` or ``python benchmarks/cluster/bench_network.py``.

**Slowdown.** For each condition (a delay of 10 or 50 ms, 10 +- 5 ms of jitter, 0.1% or
1% packet loss), on host 2's link alone and on every host's link, it runs
`train_step.py` (ResNet-50, the cluster benchmarks' iteration) for AR-SGD (DDP), SGP,
OSGP and AD-PSGD, and reports each one's seconds per iteration against the same
algorithm's on the clean network, measured in the same run before and after the bad
ones (their mean). Every condition is checked in place first: the round trip from host 0
to host 2 (a one-byte TCP echo) and a raw full-duplex transfer between hosts 0 and 2.
How each condition is made (this kernel has no netem) is in `impair.py`.

**A cut link and a killed rank.** The real ``sgp-imagenet train`` command (SGP on
digits, one rank per host) loses host 2's link for 5 s once rank 0 has logged a few
iterations: with a gossip timeout above the cut the run goes on and completes; below it
every rank stops with the one-line message of a lost rank (scenario 1 of
docs/reliability.md) and exits 1. Then host 2's rank is SIGKILLed instead, and the time
from the kill to each survivor's exit is measured. The script checks every outcome and
fails if one differs.

Writes ``benchmarks/results/cluster_network.{json,md,png}`` (about 35 minutes), and
``cluster_network_raw.json`` as it goes (``--report-only`` rewrites the report from it).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_cluster import iteration_time, run_step  # noqa: E402
from emulate import Cluster, install_signal_teardown  # noqa: E402
from impair import Impairments, round_trip_ms  # noqa: E402

from _results import RESULTS, machine_meta, markdown_table, write_results  # noqa: E402

HOSTS, VICTIM = 4, 2
ALGORITHMS: list[tuple[str, list[str]]] = [
    ("AR-SGD (DDP)", ["--algorithm", "ar"]),
    ("SGP", ["--algorithm", "sgp"]),
    ("OSGP, synch_freq 1", ["--algorithm", "osgp", "--synch-freq", "1"]),
    ("AD-PSGD", ["--algorithm", "adpsgd"]),
]
Apply = Callable[[Impairments, int], None]
CONDITIONS: list[tuple[str, Apply]] = [
    ("delay 10 ms", lambda imp, h: imp.delay(h, 10.0)),
    ("delay 50 ms", lambda imp, h: imp.delay(h, 50.0)),
    ("jitter 10 +- 5 ms", lambda imp, h: imp.delay(h, 10.0, 5.0)),
    ("loss 0.1%", lambda imp, h: imp.loss(h, 0.001)),
    ("loss 1%", lambda imp, h: imp.loss(h, 0.01)),
]
SCOPES: list[tuple[str, list[int]]] = [("host 2", [VICTIM]), ("all hosts", list(range(HOSTS)))]
#: The long-link remedy tried: TCP's send buffer allowed to grow to 32 MiB (from 4 MiB).
TUNED_WMEM = "4096 16384 33554432"
CUT_S = 5.0
SCRIPT = Path(sys.executable).parent / "sgp-imagenet"


def measure_condition(
    cluster: Cluster, label: str, scope: str, common: list[str], tmp: Path, timeout: float
) -> list[dict[str, object]]:
    """Every algorithm's iteration on the network as it is now; the link checked first."""
    rtt = round_trip_ms(cluster, 0, VICTIM)
    link = cluster.check_link(a=0, b=VICTIM).as_dict()
    print(f"[network] {label} ({scope}): rtt 0->2 {rtt}, link {link}", flush=True)
    rows = []
    for name, args in ALGORITHMS:
        t0 = time.monotonic()
        result = run_step(cluster, args, common, tmp / "step.json", timeout)
        row = {
            "condition": label, "scope": scope, "algorithm": name,
            "seconds": iteration_time(result), "rtt_0_2": rtt, "link_0_2": link,
            "run_s": time.monotonic() - t0,
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def slowdowns(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Each bad-network row with its algorithm's clean time (mean of both clean runs)."""
    clean: dict[str, list[float]] = {}
    for r in rows:
        if r["condition"] == "clean":
            clean.setdefault(str(r["algorithm"]), []).append(float(r["seconds"]))  # type: ignore[arg-type]
    out = []
    for r in rows:
        if r["condition"] == "clean":
            continue
        base = statistics.mean(clean[str(r["algorithm"])])
        out.append({**r, "clean_seconds": base, "slowdown": float(r["seconds"]) / base})  # type: ignore[arg-type]
    return out


def set_wmem(cluster: Cluster, value: str) -> None:
    """``net.ipv4.tcp_wmem`` in every host's namespace."""
    for i in range(cluster.hosts):
        subprocess.run(
            ["ip", "netns", "exec", Cluster.namespace(i), "sysctl", "-q", "-w",
             f"net.ipv4.tcp_wmem={value}"], check=True,
        )  # fmt: skip


def tuning_run(
    cluster: Cluster, imp: Impairments, common: list[str], tmp: Path, timeout: float
) -> list[dict[str, object]]:
    """50 ms on every link with TCP's default send buffer and with `TUNED_WMEM`, between
    two clean runs: whether a larger buffer wins back what the latency cost."""
    default = tcp_settings(cluster)["net.ipv4.tcp_wmem"]
    rows = measure_condition(cluster, "clean", "before", common, tmp, timeout)
    for h in range(HOSTS):
        imp.delay(h, 50.0)
    rows += measure_condition(cluster, "delay 50 ms", "all hosts", common, tmp, timeout)
    set_wmem(cluster, TUNED_WMEM)
    try:
        label = f"delay 50 ms, tcp_wmem {TUNED_WMEM}"
        rows += measure_condition(cluster, label, "all hosts", common, tmp, timeout)
    finally:
        set_wmem(cluster, default)
        imp.clear()
    rows += measure_condition(cluster, "clean", "after", common, tmp, timeout)
    return rows


# ------------------------------------------------------------------ the cut link
def _train_argv(log_dir: Path, ckpt: Path, gossip_timeout: float, algorithm: str) -> list[str]:
    return [
        str(SCRIPT), "train", "--algorithm", algorithm, "--dataset", "digits",
        "--arch", "small-cnn", "--batch-size", "16", "--epochs", "12", "--workers", "0",
        "--print-freq", "1", "--progress", "lines", "--no-tensorboard",
        "--checkpoint-dir", str(ckpt), "--log-dir", str(log_dir),
        "--gossip-timeout", str(gossip_timeout),
    ]  # fmt: skip


def _rows(csv_path: Path) -> list[list[str]]:
    if not csv_path.exists():
        return []
    lines = csv_path.read_text().splitlines()[1:]
    return [ln.split(",") for ln in lines if ln and not ln.endswith(",val")]


def outage_run(
    cluster: Cluster, imp: Impairments, tmp: Path, gossip_timeout: float, kind: str,
    after: int = 20,
) -> dict[str, object]:  # fmt: skip
    """``sgp-imagenet train`` with host 2's link cut for `CUT_S` seconds (``kind="cut"``)
    or its rank SIGKILLed (``"kill"``) once rank 0 has logged ``after`` iterations; each
    rank's exit code, how long after the event it exited, and what it printed."""
    run = tmp / f"{kind}_{gossip_timeout:g}"
    logs, ckpt = run / "logs", run / "ckpt"
    run.mkdir(parents=True)
    argv = _train_argv(logs, ckpt, gossip_timeout, "sgp")
    procs, errs = [], []
    for rank in range(HOSTS):
        err = (run / f"rank{rank}.err").open("w")
        errs.append(err)
        procs.append(  # ``ip netns exec`` execs: the process is sgp-imagenet itself
            subprocess.Popen(
                ["ip", "netns", "exec", Cluster.namespace(rank), *argv],
                env=cluster.env(rank),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        )
    t_event = t_mend = None
    ended: dict[int, float] = {}
    deadline = time.monotonic() + 600
    try:
        while len(ended) < HOSTS and time.monotonic() < deadline:
            now = time.monotonic()
            ended.update(
                {r: now for r, p in enumerate(procs) if r not in ended and p.poll() is not None}
            )
            if t_event is None and len(_rows(logs / "rank0.csv")) >= after:
                if kind == "cut":
                    imp.cut(VICTIM)
                    blocked = imp.is_cut(VICTIM)
                    print(f"[network] host {VICTIM} unreachable from host 0: {blocked}")
                else:
                    procs[VICTIM].send_signal(signal.SIGKILL)
                t_event = time.monotonic()
                print(f"[network] {kind} host {VICTIM} (gossip timeout {gossip_timeout:g} s)")
            if kind == "cut" and t_event is not None and t_mend is None and now - t_event >= CUT_S:
                imp.mend(VICTIM)
                t_mend = time.monotonic()
                print(f"[network] mended it after {t_mend - t_event:.2f} s", flush=True)
            time.sleep(0.02)
    finally:
        if kind == "cut" and t_event is not None and t_mend is None:
            imp.mend(VICTIM)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for err in errs:
            err.close()
    if t_event is None or (kind == "cut" and t_mend is None):
        tails = "\n".join((run / f"rank{r}.err").read_text()[-1500:] for r in range(HOSTS))
        raise RuntimeError(f"the run ended before the {kind} was done:\n{tails}")
    said = {}
    for rank in range(HOSTS):
        text = (run / f"rank{rank}.err").read_text()
        said[rank] = [ln for ln in text.splitlines() if ln.startswith("sgp-imagenet: rank")]
        said[rank] += ["(traceback)"] if "Traceback" in text else []
    batch = [float(r[2]) for r in _rows(logs / "rank0.csv")]  # the iteration's seconds
    return {
        "kind": kind,
        "gossip_timeout_s": gossip_timeout,
        "cut_s": None if t_mend is None else t_mend - t_event,
        "exit_codes": [p.returncode for p in procs],
        "exit_after_s": [
            round(ended[r] - t_event, 2) if r in ended else None for r in range(HOSTS)
        ],
        "iterations_rank0": len(batch),
        "longest_iteration_s": max(batch) if batch else None,
        "median_iteration_s": statistics.median(batch) if batch else None,
        "said": said,
    }


def check_outages(
    below: dict[str, object], above: dict[str, object], killed: dict[str, object]
) -> list[str]:
    """What differs from the promise: a cut ``below`` the timeout completes; one
    ``above`` it, and a ``killed`` rank, stop every other rank with one line naming
    rank 2 (and rank 2, when cut, with one line of its own), each exiting 1 without a
    traceback."""
    problems = []
    if below["exit_codes"] != [0] * HOSTS:
        problems.append(f"a cut below the timeout: exit codes {below['exit_codes']}, not all 0")
    for run, codes in ((above, [1] * HOSTS), (killed, [1, 1, -9, 1])):
        if run["exit_codes"] != codes:
            problems.append(f"{run['kind']}: exit codes {run['exit_codes']}, not {codes}")
        for rank, lines in run["said"].items():  # type: ignore[attr-defined]
            if int(rank) == VICTIM and run["kind"] == "kill":
                continue
            stopped = [ln for ln in lines if " stopped at iteration " in ln]
            if len(stopped) != 1 or "(traceback)" in lines:
                problems.append(f"{run['kind']}: rank {rank} said {lines}, not one line")
            elif int(rank) != VICTIM and f"rank {VICTIM} is lost" not in stopped[0]:
                problems.append(f"{run['kind']}: rank {rank} did not name rank {VICTIM}")
    return problems


# ----------------------------------------------------------------------- report
def _gist(lines: list[str]) -> str:
    """A rank's stop line without the advice every such line ends with."""
    return lines[0].split(". Without --fault-tolerant")[0] if lines else "(nothing)"


def write_report(raw: dict[str, object]) -> None:
    """JSON, markdown and PNG under benchmarks/results/cluster_network.* from ``raw``."""
    rows: list[dict[str, object]] = raw["rows"]  # type: ignore[assignment]
    cuts: list[dict[str, object]] = raw["cut"]  # type: ignore[assignment]
    bad = slowdowns(rows)
    table = [
        [r["condition"], r["scope"], r["algorithm"], f"{r['clean_seconds']:.3f}",
         f"{r['seconds']:.3f}", f"{r['slowdown']:.2f}",
         f"{r['rtt_0_2']['median_ms']:.2f}", f"{r['link_0_2']['efficiency']:.2f}"]  # type: ignore[index]
        for r in bad
    ]  # fmt: skip
    clean = [r for r in rows if r["condition"] == "clean"]
    clean_table = [[r["scope"], r["algorithm"], f"{r['seconds']:.3f}"] for r in clean]
    cut_table = [
        [c.get("kind", "cut"), f"{c['gossip_timeout_s']:g}",
         "killed" if c["cut_s"] is None else f"{c['cut_s']:.2f}", str(c["exit_codes"]),
         str(c.get("exit_after_s")), f"{c['median_iteration_s']:.3f}",
         f"{c['longest_iteration_s']:.2f}",
         "<br>".join(f"{k}: {_gist(v)}" for k, v in c["said"].items())]  # type: ignore[attr-defined]
        for c in cuts
    ]  # fmt: skip
    notes = (
        "ResNet-50, batch 8 at 32x32, one thread per rank, gloo; seconds per iteration as "
        "in `cluster.md` (slowest rank's median; AD-PSGD the mean over active ranks) over "
        f"{raw['meta']['iters']} iterations after {raw['meta']['warmup']}. Each "  # type: ignore[index]
        "impairment acts on what a host sends (a user-space delay line, nftables loss: "
        "`benchmarks/cluster/impair.py`; this kernel has no netem). `slowdown` = the "
        "condition's time / the same algorithm's clean time (the mean of a clean run "
        "before and one after every bad one; their difference is the run-to-run noise). "
        "`rtt 0-2` is the measured round trip from host 0 to host 2 and `link 0-2` the "
        "raw full-duplex TCP throughput between them as a fraction of 1 Gbit/s, both with "
        "the condition in place. The four hosts share 2 CPU cores: on a clean link CPU "
        "sets much of the pace. TCP: "
        + ", ".join(f"`{k} = {v}`" for k, v in raw["meta"].get("tcp", {}).items())  # type: ignore[attr-defined]
        + "."
    )
    header = ["condition", "on", "algorithm", "clean s/iter", "s/iter", "slowdown",
              "rtt 0-2 ms", "link 0-2"]  # fmt: skip
    payload = {k: v for k, v in raw.items() if k != "meta"}
    payload["slowdowns"] = bad
    extra = {k: v for k, v in raw["meta"].items() if k not in machine_meta(quick=False)}  # type: ignore[attr-defined]
    _, md = write_results(
        "cluster_network", payload, header=header, rows=table, quick=False, notes=notes,
        title="Training on a bad network: the emulated 4-host 1 Gbit/s cluster", meta=extra,
    )  # fmt: skip
    more = (
        "\n**Clean runs** (before and after the bad ones)\n\n"
        + markdown_table(["run", "algorithm", "s/iter"], clean_table)
        + f"\n**A cut link and a killed rank**: `sgp-imagenet train` (SGP, digits, 4 "
        f"ranks, one per host), host 2's link cut for {CUT_S:g} s mid-run (nothing passes "
        "either way; no carrier change), or its rank SIGKILLed. `exit after s`: seconds "
        "from the cut or the kill to each rank's exit, rank 0 first (in a run that goes "
        "on, to its end). "
        "Each rank's line is shown up to the advice that ends every such line.\n\n"
        + markdown_table(
            [
                "event",
                "gossip timeout s",
                "cut s",
                "exit codes",
                "exit after s",
                "median iteration s",
                "longest iteration s",
                "what each rank said",
            ],
            cut_table,
        )
    )
    if raw.get("tuning"):
        tuned = slowdowns(raw["tuning"])  # type: ignore[arg-type]
        more += (
            "\n**On a long link, a larger TCP send buffer** (a separate run, its own clean "
            "runs before and after)\n\n"
            + markdown_table(
                ["condition", "algorithm", "clean s/iter", "s/iter", "slowdown", "link 0-2"],
                [
                    [
                        r["condition"],
                        r["algorithm"],
                        f"{r['clean_seconds']:.3f}",
                        f"{r['seconds']:.3f}",
                        f"{r['slowdown']:.2f}",
                        f"{r['link_0_2']['efficiency']:.2f}",
                    ]
                    for r in tuned
                ],  # type: ignore[index]
            )
        )
    md.write_text(md.read_text() + more)
    plot(bad, RESULTS / "cluster_network.png")


def plot(bad: list[dict[str, object]], path: Path) -> None:
    """Slowdown bars: conditions along x, one bar per algorithm, a panel per scope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = [c for c, _ in CONDITIONS]
    fig, axes = plt.subplots(1, len(SCOPES), figsize=(13, 4.6), sharey=True)
    width = 0.8 / len(ALGORITHMS)
    for ax, (scope, _) in zip(axes, SCOPES, strict=True):
        for k, (name, _) in enumerate(ALGORITHMS):
            by = {r["condition"]: r["slowdown"] for r in bad
                  if r["scope"] == scope and r["algorithm"] == name}  # fmt: skip
            xs = [i + (k - (len(ALGORITHMS) - 1) / 2) * width for i in range(len(conditions))]
            ax.bar(xs, [by.get(c, 0.0) for c in conditions], width, label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(conditions)), conditions, rotation=20)
        ax.set_title(f"impaired: {scope}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("s/iter ÷ clean s/iter")
    axes[0].legend(fontsize=8)
    fig.suptitle("Slowdown on a bad network (4 emulated hosts, 1 Gbit/s, ResNet-50)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


RAW = RESULTS / "cluster_network_raw.json"
#: The TCP settings that shape these results (read in host 0's namespace).
TCP_SETTINGS = ("net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")


def tcp_settings(cluster: Cluster) -> dict[str, str]:
    """The hosts' TCP congestion control and buffer limits, as ``sysctl`` gives them."""
    out = subprocess.run(
        ["ip", "netns", "exec", Cluster.namespace(0), "sysctl", *TCP_SETTINGS],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {
        k.strip(): " ".join(v.split()) for k, v in (ln.split("=", 1) for ln in out.splitlines())
    }


def _save(raw: dict[str, object]) -> None:
    RAW.write_text(json.dumps(raw, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument(
        "--skip-slowdown", action="store_true",
        help=f"only the cut link (the slowdown rows are kept from {RAW.name})",
    )  # fmt: skip
    p.add_argument(
        "--report-only", action="store_true", help=f"only rewrite the report from {RAW.name}"
    )
    p.add_argument(
        "--tuning-only", action="store_true",
        help=f"only the send-buffer comparison (the other results are kept from {RAW.name})",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.report_only:
        write_report(json.loads(RAW.read_text()))
        return 0
    install_signal_teardown()
    common = ["--warmup", str(args.warmup), "--iters", str(args.iters)]
    meta = {**machine_meta(quick=False), "warmup": args.warmup, "iters": args.iters}
    raw: dict[str, object] = {"meta": meta, "rows": [], "cut": []}
    if args.skip_slowdown or args.tuning_only:
        raw = json.loads(RAW.read_text())
        raw["meta"]["cut_utc" if args.skip_slowdown else "tuning_utc"] = meta["utc"]  # type: ignore[index]
    rows: list[dict[str, object]] = raw["rows"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as d, Cluster(HOSTS, "1gbit") as cluster:
        tmp = Path(d)
        raw["meta"]["tcp"] = tcp_settings(cluster)  # type: ignore[index]
        with Impairments(cluster) as imp:
            if not args.skip_slowdown:
                raw["tuning"] = tuning_run(cluster, imp, common, tmp, args.timeout)
                _save(raw)
            if args.tuning_only:
                write_report(raw)
                return 0
            if not args.skip_slowdown:
                rows += measure_condition(cluster, "clean", "before", common, tmp, args.timeout)
                for label, apply in CONDITIONS:
                    for scope, hosts in SCOPES:
                        for h in hosts:
                            apply(imp, h)
                        rows += measure_condition(cluster, label, scope, common, tmp, args.timeout)
                        imp.clear()
                        _save(raw)
                rows += measure_condition(cluster, "clean", "after", common, tmp, args.timeout)
                _save(raw)
            below = outage_run(cluster, imp, tmp, 30.0, "cut")
            above = outage_run(cluster, imp, tmp, 2.0, "cut")
            killed = outage_run(cluster, imp, tmp, 30.0, "kill")
    raw["cut"] = [below, above, killed]
    _save(raw)
    write_report(raw)
    problems = check_outages(below, above, killed)
    for line in problems:
        print(f"[network] FAILED: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
