"""An emulated Ethernet cluster on one Linux machine: N hosts, one shaped link each.

Run as root. Each host is a network namespace with one veth link (``eth0``) to a bridge
in a hub namespace. Every link is shaped with ``tc tbf`` on *both* ends, so the two
directions are separate full-duplex pipes of the configured rate; an optional ``netem``
delay is added on each host's side. Addresses (``10.77.0.0/24``) exist only inside these
namespaces, so nothing on the real network is touched.

Command line (everything after ``--`` runs once per host, rank ``i`` in host ``i``)::

    python benchmarks/cluster/emulate.py --hosts 4 --rate 1gbit -- python train.py

Each rank gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK=0``, ``LOCAL_WORLD_SIZE=1``,
``MASTER_ADDR`` (host 0), ``MASTER_PORT``, ``GLOO_SOCKET_IFNAME=eth0``,
``OMP_NUM_THREADS=1`` and ``CLUSTER_RATE_BPS`` (the link rate in bits per second), the
same environment ``torchrun`` would give, so ``dist.init_process_group("gloo")`` works
unchanged. Before running anything the cluster checks itself: a raw TCP transfer between
two hosts in both directions at once must reach ``--min-efficiency`` (default 0.9) of
the rate in each direction. Teardown always runs (also on Ctrl-C and SIGTERM), and
namespaces left by a crashed run are removed at the next start.

The same machinery is a Python API for benchmarks: `Cluster`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["PREFIX", "Cluster", "LinkCheck", "install_signal_teardown", "main", "parse_rate"]

#: Every namespace this tool creates starts with this prefix (and only those are removed).
PREFIX = "gsp-"
HUB = f"{PREFIX}hub"
SUBNET = "10.77.0"
MASTER_PORT = 29517

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_rate(rate: str) -> int:
    """Bits per second from a ``tc``-style rate such as ``"1gbit"`` or ``"500mbit"``.

    Raises:
        ValueError: If ``rate`` is not ``<number><k|m|g>bit`` with a positive number.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?)bit\s*", rate.lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"rate must look like '1gbit', '10gbit' or '500mbit'; got {rate!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def _ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("ip", "netns", "exec", ns, *argv, check=check)


def _leftovers() -> list[str]:
    out = _run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def remove_leftovers() -> list[str]:
    """Delete every namespace whose name starts with `PREFIX`; returns their names."""
    names = _leftovers()
    for name in names:
        _run("ip", "netns", "del", name, check=False)
    return names


_CHECK_PEER = textwrap.dedent(
    """
    import socket, sys, threading, time, json
    role, addr, port, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if role == "server":
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port)); srv.listen(1); print("ready", flush=True)
        sock, _ = srv.accept()
    else:
        for _ in range(200):
            try:
                sock = socket.create_connection((addr, port)); break
            except OSError:
                time.sleep(0.05)
    chunk = bytearray(4 << 20)
    result = {}
    def send():
        t0, left = time.perf_counter(), nbytes
        view = memoryview(chunk)
        while left:
            left -= sock.send(view[: min(left, len(chunk))])
        result["send_s"] = time.perf_counter() - t0
    def recv():
        buf, t0, got = memoryview(bytearray(4 << 20)), time.perf_counter(), 0
        while got < nbytes:
            n = sock.recv_into(buf)
            if n == 0:
                break
            got += n
        result["recv_s"], result["recv_bytes"] = time.perf_counter() - t0, got
    threads = [threading.Thread(target=send), threading.Thread(target=recv)]
    [t.start() for t in threads]; [t.join() for t in threads]
    sock.close()
    print(json.dumps(result), flush=True)
    """
)


class LinkCheck:
    """Result of the raw full-duplex transfer between hosts 0 and 1."""

    def __init__(self, rate_bps: int, nbytes: int, recv_s: Sequence[float]) -> None:
        self.rate_bps, self.nbytes, self.recv_s = rate_bps, nbytes, list(recv_s)

    @property
    def efficiency(self) -> float:
        """The slower direction's throughput as a fraction of the configured rate."""
        return self.nbytes * 8 / max(self.recv_s) / self.rate_bps

    def as_dict(self) -> dict[str, float]:
        """JSON-ready summary."""
        return {
            "rate_gbit": self.rate_bps / 1e9,
            "bytes_each_way": self.nbytes,
            "gbit_each_way": [round(self.nbytes * 8 / s / 1e9, 4) for s in self.recv_s],
            "efficiency": round(self.efficiency, 4),
        }


class Cluster:
    """N emulated hosts behind one bridge; use as a context manager (teardown on exit).

    Args:
        hosts: Number of hosts (namespaces), 2 to 64.
        rate: Link rate in ``tc`` syntax, for example ``"1gbit"``.
        delay: Optional one-way ``netem`` delay added on each host's side, for example
            ``"0.1ms"``; ``None`` for none. It needs a kernel with netem; the reference
            machine's has none (`impair.Impairments` delays links without it).

    Raises:
        ValueError: On a bad ``hosts``, ``rate`` or ``delay``.
        PermissionError: If not run as root.
    """

    def __init__(self, hosts: int, rate: str = "1gbit", delay: str | None = None) -> None:
        if isinstance(hosts, bool) or not isinstance(hosts, int) or not 2 <= hosts <= 64:
            raise ValueError(f"hosts must be an int from 2 to 64; got {hosts!r}")
        self.rate_bps = parse_rate(rate)
        if delay is not None and re.fullmatch(r"[0-9]*\.?[0-9]+(us|ms)", delay) is None:
            raise ValueError(f"delay must look like '0.1ms' or '50us'; got {delay!r}")
        if os.geteuid() != 0:
            raise PermissionError("the emulated cluster needs root (network namespaces, tc)")
        self.hosts, self.delay = hosts, delay
        self._up = False

    # ----------------------------------------------------------------- names
    @staticmethod
    def namespace(i: int) -> str:
        """Namespace of host ``i``."""
        return f"{PREFIX}h{i}"

    @staticmethod
    def address(i: int) -> str:
        """IPv4 address of host ``i``."""
        return f"{SUBNET}.{i + 1}"

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Cluster:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> None:
        """Create the hub, the hosts and their shaped links (removing any leftovers)."""
        stale = remove_leftovers()
        if stale:
            print(f"[cluster] removed leftovers of an earlier run: {stale}", file=sys.stderr)
        self._up = True
        _run("ip", "netns", "add", HUB)
        _ns(HUB, "ip", "link", "add", "br0", "type", "bridge")
        _ns(HUB, "ip", "link", "set", "br0", "up")
        _ns(HUB, "ip", "link", "set", "lo", "up")
        for i in range(self.hosts):
            ns, hub_if = self.namespace(i), f"vh{i}"
            _run("ip", "netns", "add", ns)
            _run(
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                hub_if,
                "netns",
                HUB,
            )
            _ns(HUB, "ip", "link", "set", hub_if, "master", "br0")
            _ns(HUB, "ip", "link", "set", hub_if, "up")
            _ns(ns, "ip", "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ns(ns, "ip", "link", "set", "eth0", "up")
            _ns(ns, "ip", "link", "set", "lo", "up")
        self.set_rate(self.rate_bps)

    def set_rate(self, rate_bps: int) -> None:
        """Shape every link, both directions, to ``rate_bps`` (replacing any shaping)."""
        self.rate_bps = rate_bps
        for i in range(self.hosts):
            self.shape(i, f"vh{i}")

    def shape(self, i: int, hub_if: str) -> None:
        """Shape host ``i``'s link to the rate: its ``eth0`` (with the cluster's delay) and
        ``hub_if``, the hub's side of the link that sends to the host."""
        # burst: at least 1 ms at line rate and two 64 KiB GSO segments; queue: 20 ms.
        burst = max(self.rate_bps // 8 // 1000, 2 * 65536)
        limit = max(self.rate_bps // 8 // 50, 4 * burst)
        tbf = ["tbf", "rate", f"{self.rate_bps}bit", "burst", str(burst), "limit", str(limit)]
        ns = self.namespace(i)
        _ns(HUB, "tc", "qdisc", "replace", "dev", hub_if, "root", *tbf)
        _ns(ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        if self.delay is None:
            _ns(ns, "tc", "qdisc", "add", "dev", "eth0", "root", *tbf)
        else:
            netem = ["root", "handle", "1:", "netem", "delay", self.delay]
            _ns(ns, "tc", "qdisc", "add", "dev", "eth0", *netem)
            _ns(ns, "tc", "qdisc", "add", "dev", "eth0", "parent", "1:", "handle", "2:", *tbf)

    def down(self) -> None:
        """Delete every namespace of this tool (links go with them)."""
        if self._up:
            remove_leftovers()
            self._up = False

    # --------------------------------------------------------------- running
    def env(
        self,
        rank: int,
        extra: Mapping[str, str] | None = None,
        world: int | None = None,
        procs_per_host: int = 1,
    ) -> dict[str, str]:
        """The environment rank ``rank`` of ``world`` (all hosts) runs with."""
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(self.hosts if world is None else world),
            LOCAL_RANK=str(rank % procs_per_host),
            LOCAL_WORLD_SIZE=str(procs_per_host),
            MASTER_ADDR=self.address(0),
            MASTER_PORT=str(MASTER_PORT),
            GLOO_SOCKET_IFNAME="eth0",
            OMP_NUM_THREADS="1",
            CLUSTER_RATE_BPS=str(self.rate_bps),
        )
        if extra:
            env.update(extra)
        return env

    def spawn(
        self,
        rank: int,
        argv: Sequence[str],
        extra_env: Mapping[str, str] | None = None,
        world: int | None = None,
        procs_per_host: int = 1,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as rank ``rank`` (of ``world``) inside its host's namespace.

        With ``procs_per_host = L``, ranks ``k L .. k L + L - 1`` share host ``k`` (and
        its link); traffic between them stays inside the host, like NVLink.
        """
        return subprocess.Popen(
            ["ip", "netns", "exec", self.namespace(rank // procs_per_host), *argv],
            env=self.env(rank, extra_env, world, procs_per_host),
        )

    def run_all(
        self,
        argv: Sequence[str],
        extra_env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        hosts: int | None = None,
        procs_per_host: int = 1,
    ) -> list[int]:
        """Run ``argv`` on every host (or the first ``hosts``) at once; the exit codes.

        ``procs_per_host`` ranks run on each host. If a rank fails, the others are given
        30 s and then killed, so a crash never leaves a job hanging.
        """
        used = self.hosts if hosts is None else hosts
        if not 1 <= used <= self.hosts:
            raise ValueError(f"hosts must be from 1 to {self.hosts}; got {hosts!r}")
        if procs_per_host < 1:
            raise ValueError(f"procs_per_host must be >= 1; got {procs_per_host}")
        world = used * procs_per_host
        procs = [self.spawn(r, argv, extra_env, world, procs_per_host) for r in range(world)]
        deadline = None if timeout is None else time.monotonic() + timeout
        codes: list[int | None] = [None] * len(procs)
        try:
            while any(c is None for c in codes):
                for r, p in enumerate(procs):
                    codes[r] = p.poll()
                failed = any(c not in (None, 0) for c in codes)
                now = time.monotonic()
                if failed and (deadline is None or deadline > now + 30):
                    deadline = now + 30
                if deadline is not None and now > deadline:
                    break
                time.sleep(0.05)
        finally:
            for r, p in enumerate(procs):
                if p.poll() is None:
                    p.kill()
                    p.wait()
                    print(f"[cluster] killed rank {r} (timeout or a failed peer)", file=sys.stderr)
                codes[r] = p.returncode
        return [int(c) for c in codes if c is not None]

    def check_link(self, nbytes: int | None = None, a: int = 0, b: int = 1) -> LinkCheck:
        """Send ``nbytes`` each way between hosts ``a`` and ``b`` at once; time each way.

        Defaults to about 1.5 s of traffic at the configured rate (at least 16 MB).
        """
        nbytes = nbytes or max(16 << 20, int(self.rate_bps / 8 * 1.5))
        port = MASTER_PORT + 1
        common = [sys.executable, "-c", _CHECK_PEER]
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.namespace(b),
                *common,
                "server",
                self.address(b),
                str(port),
                str(nbytes),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        server.stdout.readline()  # "ready"
        client = _ns(self.namespace(a), *common, "client", self.address(b), str(port), str(nbytes))
        out, _ = server.communicate(timeout=120)
        results = [json.loads(client.stdout.strip().splitlines()[-1]), json.loads(out.strip())]
        for r in results:
            if r["recv_bytes"] != nbytes:
                raise RuntimeError(f"link check received {r['recv_bytes']} of {nbytes} bytes")
        return LinkCheck(self.rate_bps, nbytes, [r["recv_s"] for r in results])


def install_signal_teardown() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``with Cluster(...)`` tears down."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Everything after -- runs once per host.",
    )
    parser.add_argument("--hosts", type=int, default=4, help="number of hosts (default 4)")
    parser.add_argument("--rate", default="1gbit", help="link rate, tc syntax (default 1gbit)")
    parser.add_argument("--delay", default=None, help="one-way netem delay, e.g. 0.1ms")
    parser.add_argument(
        "--min-efficiency",
        type=float,
        default=0.9,
        help="the self-check's required fraction of the rate in each direction (default 0.9)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds before killing")
    parser.add_argument("--down", action="store_true", help="only remove leftover namespaces")
    args = parser.parse_args(argv)
    if args.down:
        print(f"removed: {remove_leftovers()}")
        return 0
    install_signal_teardown()
    with Cluster(args.hosts, args.rate, args.delay) as cluster:
        check = cluster.check_link()
        print(f"[cluster] self-check: {json.dumps(check.as_dict())}", file=sys.stderr)
        if check.efficiency < args.min_efficiency:
            print(
                f"[cluster] self-check failed: {check.efficiency:.2f} of the rate in the slower "
                f"direction, below --min-efficiency {args.min_efficiency}",
                file=sys.stderr,
            )
            return 3
        if not command:
            return 0
        codes = cluster.run_all(command, timeout=args.timeout)
        print(f"[cluster] exit codes by rank: {codes}", file=sys.stderr)
        return next((c for c in codes if c != 0), 0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
