"""A bad network on the emulated cluster: delay, jitter, packet loss and a cut link.

`Impairments` changes one host's link of an `emulate.Cluster` at a time and puts it back
(``clear``). Every impairment acts where ``tc qdisc add dev eth0 root netem ...`` on that
host would: on what the host *sends* (a cut link drops both ways). This kernel has no
netem (``CONFIG_NET_SCH_NETEM`` is not set; ``tc`` answers "Specified qdisc kind is
unknown"), so:

- **delay and jitter** come from `delayline.c`, compiled on first use: the host's link
  is rebuilt as ``eth0 <-> vx<i>`` and ``vy<i> <-> vh<i>`` (the bridge port), with the
  delay line forwarding between ``vx<i>`` and ``vy<i>`` in the hub, delaying only what
  the host sends. Unlike netem's jitter it never reorders frames. The rate shaping stays
  where it was (``eth0`` and ``vh<i>``). The host keeps its MAC address and every
  neighbour table is flushed, so nothing notices the rebuild.
- **loss** is an nftables rule on the hub's ingress from the host (``numgen random``):
  the sender's kernel does not see the drop, as on a wire. veth passes segmentation-
  offloaded frames of up to 64 KiB whole, so a 1% loss drops 1% of those frames: about
  1% of the bytes, in bursts of up to 44 packets.
- **a cut link** drops everything the hub's port to the host receives and sends,
  without a carrier change (like a failed switch port): TCP only sees silence.

nftables (``nft``) is installed with apt if it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from emulate import HUB, Cluster, _ns, _run

__all__ = ["Impairments", "delayline_binary", "require_nft", "round_trip_ms"]

HERE = Path(__file__).resolve().parent
_TABLE = "gsp_impair"


def delayline_binary() -> Path:
    """The compiled `delayline.c` (built with ``cc`` when missing or older than its source)."""
    source = HERE / "delayline.c"
    binary = Path("/tmp") / "gossip-delayline"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        cmd = ["cc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(source)]
        subprocess.run(cmd, check=True)
    return binary


def require_nft() -> None:
    """Install nftables with apt when ``nft`` is missing (root only, like the cluster)."""
    if shutil.which("nft"):
        return
    print("[impair] installing nftables (apt-get)", file=sys.stderr, flush=True)
    apt = ["apt-get", "install", "-y", "-q", "nftables"]
    if subprocess.run(apt, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(apt, check=True, capture_output=True)


_ECHO = """
import socket, statistics, sys, time
role, addr, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if role == "server":
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port)); srv.listen(1); print("ready", flush=True)
    sock, _ = srv.accept()
    while (data := sock.recv(1)):
        sock.sendall(data)
else:
    sock = socket.create_connection((addr, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(count):
        t0 = time.perf_counter(); sock.sendall(b"x"); sock.recv(1)
        times.append((time.perf_counter() - t0) * 1e3)
    print(statistics.median(times), min(times), max(times), flush=True)
"""


def round_trip_ms(cluster: Cluster, a: int, b: int, count: int = 20) -> dict[str, float]:
    """Median, min and max of ``count`` one-byte TCP round trips from host ``a`` to ``b``."""
    port = 29599
    server = subprocess.Popen(
        ["ip", "netns", "exec", Cluster.namespace(b), sys.executable, "-c", _ECHO, "server",
         Cluster.address(b), str(port), "0"], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    server.stdout.readline()
    out = _ns(Cluster.namespace(a), sys.executable, "-c", _ECHO, "client",
              Cluster.address(b), str(port), str(count)).stdout.split()  # fmt: skip
    server.wait(timeout=30)
    median, low, high = (float(v) for v in out)
    return {"median_ms": median, "min_ms": low, "max_ms": high}


class Impairments:
    """Impair and repair links of a running `emulate.Cluster`.

    Args:
        cluster: The cluster (already up).
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._lines: dict[int, subprocess.Popen[str]] = {}
        self._chains: list[str] = []
        require_nft()
        _ns(HUB, "nft", "add", "table", "netdev", _TABLE)

    # ----------------------------------------------------------------- delay
    def delay(self, host: int, delay_ms: float, jitter_ms: float = 0.0, seed: int = 0) -> None:
        """Delay what ``host`` sends by ``delay_ms`` (+- uniform ``jitter_ms``)."""
        if not 0 <= jitter_ms <= delay_ms:
            raise ValueError(f"jitter_ms must be in [0, delay_ms]; got {jitter_ms}")
        binary = delayline_binary()
        self._relink(host, through_delayline=True)
        argv = [str(binary), f"vx{host}", f"vy{host}"]
        argv += [str(round(delay_ms * 1000)), str(round(jitter_ms * 1000)), str(seed + host)]
        line = subprocess.Popen(
            ["ip", "netns", "exec", HUB, *argv], stdout=subprocess.PIPE, text=True
        )
        assert line.stdout is not None
        if line.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the delay line of host {host} did not start")
        self._lines[host] = line

    # ------------------------------------------------------------------ loss
    def loss(self, host: int, fraction: float) -> None:
        """Drop each frame ``host`` sends with probability ``fraction``."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1); got {fraction}")
        per_million = round(fraction * 1_000_000)
        chain = self._chain(host, "ingress")
        _ns(HUB, "nft", "add", "rule", "netdev", _TABLE, chain, "numgen", "random", "mod",
            "1000000", "lt", str(per_million), "drop")  # fmt: skip

    # ------------------------------------------------------------------- cut
    def cut(self, host: int) -> None:
        """Drop everything to and from ``host`` until `mend` (no carrier change)."""
        for hook in ("ingress", "egress"):
            _ns(HUB, "nft", "add", "rule", "netdev", _TABLE, self._chain(host, hook), "drop")

    def is_cut(self, host: int, wait: float = 0.5) -> bool:
        """Whether a TCP connection from host 0 to ``host`` fails to open within ``wait``
        seconds (an open link refuses it at once: nothing listens on port 9)."""
        probe = f"import socket; socket.create_connection(({Cluster.address(host)!r}, 9), {wait})"
        done = _ns(Cluster.namespace(0), sys.executable, "-c", probe, check=False)
        return "timed out" in done.stderr

    def mend(self, host: int) -> None:
        """Undo `cut` (and `loss`) on ``host``'s link."""
        for chain in [c for c in self._chains if c.startswith(f"h{host}_")]:
            _ns(HUB, "nft", "delete", "chain", "netdev", _TABLE, chain)
            self._chains.remove(chain)

    # ----------------------------------------------------------------- clear
    def clear(self) -> None:
        """Every link back to clean: delay lines stopped, links rebuilt, rules removed."""
        for host in list(self._chains):
            _ns(HUB, "nft", "delete", "chain", "netdev", _TABLE, host, check=False)
        self._chains.clear()
        for host, line in list(self._lines.items()):
            line.kill()
            line.wait()
            self._relink(host, through_delayline=False)
            del self._lines[host]

    def close(self) -> None:
        """`clear`, then remove the nftables table."""
        self.clear()
        _ns(HUB, "nft", "delete", "table", "netdev", _TABLE, check=False)

    def __enter__(self) -> Impairments:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- helpers
    def _chain(self, host: int, hook: str) -> str:
        name = f"h{host}_{hook}"
        if name not in self._chains:
            spec = f"{{ type filter hook {hook} device vh{host} priority 0 ; }}"
            _ns(HUB, "nft", "add", "chain", "netdev", _TABLE, name, spec)
            self._chains.append(name)
        return name

    def _relink(self, host: int, *, through_delayline: bool) -> None:
        """Rebuild ``host``'s link, direct or through a delay line, keeping its MAC."""
        cluster, ns = self.cluster, Cluster.namespace(host)
        mac = _ns(ns, "cat", "/sys/class/net/eth0/address").stdout.strip()
        for name in (f"vh{host}", f"vx{host}", f"vy{host}"):
            _ns(HUB, "ip", "link", "del", name, check=False)
        hub_end = f"vx{host}" if through_delayline else f"vh{host}"
        _run("ip", "link", "add", "eth0", "netns", ns, "address", mac, "type", "veth",
             "peer", hub_end, "netns", HUB)  # fmt: skip
        if through_delayline:
            _ns(HUB, "ip", "link", "add", f"vy{host}", "type", "veth", "peer", f"vh{host}")
            for name in (f"vx{host}", f"vy{host}"):
                _ns(HUB, "ip", "link", "set", name, "up")
        _ns(HUB, "ip", "link", "set", f"vh{host}", "master", "br0")
        _ns(HUB, "ip", "link", "set", f"vh{host}", "up")
        _ns(ns, "ip", "addr", "add", f"{Cluster.address(host)}/24", "dev", "eth0")
        _ns(ns, "ip", "link", "set", "eth0", "up")
        cluster.shape(host, f"vh{host}")
        for i in range(cluster.hosts):
            _ns(Cluster.namespace(i), "ip", "neigh", "flush", "all", check=False)
