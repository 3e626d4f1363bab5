"""What the compression benchmark runs and how one run becomes a row.

The configurations of each mode (compute only, DDP and its hooks, SGP and OSGP with
each compressor), the bytes a run sent, and the summary row with its floor; used by
``bench_compression.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_cluster import floor, iteration_time  # noqa: E402
from emulate import LinkCheck  # noqa: E402

#: The default run's compressors; ``--compressors ... lowrank:4`` adds more (and time).
COMPRESSORS = ("bf16", "int8", "topk:0.01", "lowrank:2")
POWERSGD_RANKS = (1, 4)
BATCHES = (8, 2)
GPU_HOST = "GPU host"
#: OSGP's staleness bound in every OSGP row.
SYNCH_FREQ = 1


@dataclass(frozen=True, kw_only=True)
class Config:
    """One row's training configuration: its label, arguments and floor."""

    label: str
    args: tuple[str, ...]
    family: str  # "compute", "ddp", "sgp" or "osgp"
    compressor: str | None = None

    @property
    def floor_kind(self) -> str:
        """`bench_cluster.floor`'s kind; DDP's bytes are the hook's payload."""
        return {"compute": "compute", "ddp": "allreduce", "sgp": "serial", "osgp": "overlap"}[
            self.family
        ]


def configs(mode: str, compressors: Sequence[str], powersgd_ranks: Sequence[int]) -> list[Config]:
    """The rows of one mode (``"batch B"`` or `GPU_HOST`), compute only first."""
    rows = [Config(label="compute only", args=("--algorithm", "compute"), family="compute")]
    if mode != GPU_HOST:  # DDP's hooks need a real backward
        ar = ("--algorithm", "ar")
        rows.append(Config(label="DDP", args=ar, family="ddp"))
        rows.append(Config(label="DDP + bf16 hook", args=(*ar, "--ddp-hook", "bf16"), family="ddp"))
        for r in powersgd_ranks:
            psgd = (*ar, "--ddp-hook", "powersgd", "--powersgd-rank", str(r))
            rows.append(Config(label=f"DDP + PowerSGD rank {r}", args=psgd, family="ddp"))
    for algorithm in ("sgp", "osgp"):
        base: tuple[str, ...] = ("--algorithm", algorithm)
        if algorithm == "osgp":
            base += ("--synch-freq", str(SYNCH_FREQ))
        name = algorithm.upper()
        rows.append(Config(label=name, args=base, family=algorithm))
        for spec in compressors:
            rows.append(
                Config(
                    label=f"{name}, {spec}",
                    args=(*base, "--compression", spec),
                    family=algorithm,
                    compressor=spec,
                )
            )
    return rows


def bytes_per_iter(result: dict[str, object]) -> tuple[float, str]:
    """Bytes one rank sends per iteration, and whether they were measured or computed."""
    if "computed_bytes_per_iter" in result:
        return float(result["computed_bytes_per_iter"]), "computed"  # type: ignore[arg-type]
    ranks = result["ranks"]
    return max(float(r["gossip_bytes_per_step"]) for r in ranks), "measured"  # type: ignore[attr-defined]


def summarise(
    mode: str,
    done: list[tuple[Config, dict[str, object]]],
    check: LinkCheck,
    hosts: int,
) -> list[dict[str, object]]:
    """One row per run of one mode at one rate: time, bytes, floor, ratio to best DDP."""
    rate = check.rate_bps
    compute = iteration_time(done[0][1])
    times = {cfg.label: iteration_time(res) for cfg, res in done}
    best_ddp = min((times[cfg.label] for cfg, _ in done if cfg.family == "ddp"), default=None)
    rows = []
    for cfg, res in done:
        t = times[cfg.label]
        sent, source = bytes_per_iter(res)
        # floor's allreduce kind applies the ring's 2(n-1)/n to the payload itself
        floor_bytes = int(res.get("ddp_payload_bytes", sent))  # type: ignore[call-overload]
        fl = floor(cfg.floor_kind, compute, floor_bytes, rate, hosts)
        fl_link = floor(cfg.floor_kind, compute, floor_bytes, rate * check.efficiency, hosts)
        ranks = res["ranks"]
        rows.append(
            {
                "rate_gbit": rate / 1e9,
                "mode": mode,
                "label": cfg.label,
                "family": cfg.family,
                "compressor": cfg.compressor,
                "seconds": round(t, 4),
                "mean_s": round(iteration_time(res, key="mean_s"), 4),
                "bytes_per_iter": round(sent),
                "bytes_source": source,
                "floor_kind": cfg.floor_kind,
                "floor_s": round(fl, 4),
                "vs_floor": round(t / fl, 3),
                "vs_floor_measured_link": round(t / fl_link, 3),
                "best_ddp_vs_this": None if best_ddp is None else round(best_ddp / t, 3),
                "fwd_bwd_s": round(max(float(r["fwd_bwd_median_s"]) for r in ranks), 4),  # type: ignore[attr-defined]
                "opt_step_s": round(max(float(r["opt_step_median_s"]) for r in ranks), 4),  # type: ignore[attr-defined]
                "gpu_host_s": res.get("gpu_host_s"),
                "other_cores_mean": res.get("other_cores_mean"),
            }
        )
    return rows
