"""One rank of the chunk-size sweep: timed full-duplex PushSum exchanges between 2 ranks.

With 2 ranks every step sends the whole buffer to the other rank and receives its
buffer, so both directions of the link carry ``numel`` float32 values at once. Rank 0
writes the per-step times as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gossip_comm import GossipConfig, PushSum
from gossip_topology import make_topology


def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, kernel time included).

    Network namespaces share ``/proc/stat``, so this counts every host's processes and
    the kernel's softirq work of moving their packets through veth, bridge and tbf.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    busy = sum(ticks[:3]) + sum(ticks[5:8])  # user nice system . . irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--numel", type=int, required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--chunk-bytes", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    n = dist.get_world_size()
    x = torch.randn(args.numel)
    topo = make_topology("npeer-dynamic-directed-exponential", n)
    ps = PushSum(topo, x, config=GossipConfig(chunk_bytes=args.chunk_bytes, timeout=600))
    ps.mix(x)  # warm-up: connections, buffers
    times = []
    dist.barrier()
    busy0 = cpu_busy_seconds()
    for _ in range(args.steps):
        dist.barrier()
        t0 = time.perf_counter()
        ps.mix(x)
        times.append(time.perf_counter() - t0)
    dist.barrier()
    busy_per_step = (cpu_busy_seconds() - busy0) / args.steps
    ps.close()
    # latency: one tiny all_reduce per round trip (2 ranks: one hop each way)
    tiny = torch.zeros(1)
    for _ in range(5):
        dist.all_reduce(tiny)
    t0 = time.perf_counter()
    for _ in range(50):
        dist.all_reduce(tiny)
    tiny_s = (time.perf_counter() - t0) / 50
    gathered: list[object] = [None] * n
    dist.all_gather_object(gathered, times)
    if dist.get_rank() == 0:
        slowest = [max(ts) for ts in zip(*gathered, strict=True)]  # type: ignore[call-overload]
        args.out.write_text(
            json.dumps(
                {
                    "times": slowest,
                    "median_s": statistics.median(slowest),
                    "tiny_allreduce_s": tiny_s,
                    "cpu_busy_s_per_step": busy_per_step,
                }
            )
        )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
