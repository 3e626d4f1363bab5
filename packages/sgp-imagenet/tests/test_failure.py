"""Whom a stopping rank names as lost: heartbeats in a real TCPStore, ranks played here."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import torch.distributed as dist

from gossip_comm import GossipTimeoutError, NonFiniteError, PeerLostError
from sgp_imagenet.failure import Heartbeat, PeerFailure, is_peer_failure

EVERY, LOST_AFTER = 0.05, 0.5


@pytest.fixture
def store() -> Iterator[dist.TCPStore]:
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
    yield server


def _client(server: dist.TCPStore) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=10))


def _hearts(server: dist.TCPStore, world: int, *ranks: int) -> list[Heartbeat]:
    """A heartbeat for each of ``ranks`` of ``world``, each on a store client of its own."""
    return [Heartbeat(r, world, every=EVERY, store=_client(server)) for r in ranks]


def test_peer_failures_are_told_from_other_errors() -> None:
    lost = PeerLostError("rank 0 lost peer 2", rank=0, peer=2, step=3)
    assert is_peer_failure(lost)
    assert is_peer_failure(GossipTimeoutError("slow", rank=0, peer=1, step=3))
    assert is_peer_failure(PeerFailure("sgp-imagenet: rank 0 stopped"))
    # gloo raises plain RuntimeErrors; only those about a peer count
    gloo = "[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:4242"
    assert is_peer_failure(RuntimeError(gloo))
    assert is_peer_failure(RuntimeError("Timed out waiting 30000ms for recv operation"))
    assert not is_peer_failure(RuntimeError("CUDA out of memory"))
    assert not is_peer_failure(ValueError("Connection closed by peer"))


def test_the_rank_named_is_the_one_whose_heartbeat_stopped(store: dist.TCPStore) -> None:
    # rank 0 stops on a failed exchange with rank 3; rank 1 is alive (still blocked, say,
    # but its heartbeat goes on); rank 2 died (no beat); rank 3 stopped on the news itself
    # and reported so before its heartbeat ended: only rank 2 is lost
    me, alive, messenger = _hearts(store, 4, 0, 1, 3)
    with me, alive:
        with messenger:
            pass
        messenger._report(None)
        err = PeerLostError("rank 0 lost peer 3", rank=0, peer=3, step=7)
        line = me.describe(err, where="iteration 9", lost_after=LOST_AFTER)
    assert line.startswith("sgp-imagenet: rank 0 stopped at iteration 9: rank 2 is lost")
    assert "this rank's exchange with rank 3 failed on the news" in line
    assert "rank 1" not in line
    assert "\n" not in line and "--fault-tolerant" in line and "--debug" in line


def test_two_lost_ranks_after_a_failed_collective(store: dist.TCPStore) -> None:
    me, alive = _hearts(store, 4, 1, 2)
    with me, alive:
        err = RuntimeError("[pair.cc:545] Read error [127.0.0.1]:1234: Connection reset by peer")
        line = me.describe(err, where="iteration 4", lost_after=LOST_AFTER)
    assert "ranks 0, 3 are lost (no heartbeat for 0.5 s" in line


def test_a_slow_peer_that_still_beats_is_not_called_dead(store: dist.TCPStore) -> None:
    me, slow = _hearts(store, 2, 0, 1)
    with me, slow:
        err = GossipTimeoutError("timed out", rank=0, peer=1, step=2)
        line = me.describe(err, where="iteration 2", lost_after=LOST_AFTER)
    assert "rank 1 did not answer within the gossip timeout" in line
    assert "is lost" not in line


class _Cuttable:
    """A store client whose calls wait while ``cut`` is set: a rank's link gone down."""

    def __init__(self, store: dist.TCPStore) -> None:
        self.store, self.cut = store, threading.Event()

    def add(self, key: str, value: int) -> int:
        while self.cut.is_set():
            time.sleep(0.01)
        return int(self.store.add(key, value))

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


def test_a_rank_cut_off_by_its_link_says_so_and_the_others_name_it(
    store: dist.TCPStore,
) -> None:
    # rank 2's link goes down for 2 lost_after: its beats stall, the others' go on; the
    # link comes back before rank 2 describes its own failure (a gossip timeout)
    link = _Cuttable(_client(store))
    cut_off = Heartbeat(2, 3, every=EVERY, store=link)  # type: ignore[arg-type]
    me, other = _hearts(store, 3, 0, 1)
    with me, other, cut_off:
        time.sleep(3 * EVERY)
        link.cut.set()
        survivor = me.describe(
            PeerLostError("rank 0 lost peer 2", rank=0, peer=2, step=4),
            where="iteration 5", lost_after=LOST_AFTER,
        )  # fmt: skip
        time.sleep(LOST_AFTER)  # describe() above already waited lost_after
        link.cut.clear()
        time.sleep(3 * EVERY)
        line = cut_off.describe(
            GossipTimeoutError("timed out", rank=2, peer=1, step=4), where="iteration 5",
            lost_after=LOST_AFTER,
        )  # fmt: skip
    assert "rank 2 is lost (no heartbeat for 0.5 s; it most likely died, or lost its link)" in (
        survivor
    )
    gap = float(line.split("could not reach the job's store for ")[1].split(" s")[0])
    assert 2 * LOST_AFTER - 0.1 <= gap <= 2 * LOST_AFTER + 0.5, line
    assert "its own link most likely went down (meanwhile its exchange with rank 1 failed)" in line
    assert "did not answer within the gossip timeout" not in line
    # a stall long ago does not explain a failure now
    assert cut_off.own_gap(within=0.0) < LOST_AFTER


def test_a_rank_that_fails_on_its_own_tells_the_others_why(store: dist.TCPStore) -> None:
    # rank 0's disk filled: it says so and goes; rank 1, whose exchange with it then
    # fails, gives that reason instead of calling rank 0 lost
    failed, me = _hearts(store, 2, 0, 1)
    with me:
        with failed:
            failed.report_stop("rank 0 failed: /ckpt/checkpoint.pt: No space left on device")
        err = PeerLostError("rank 1 lost peer 0", rank=1, peer=0, step=3)
        line = me.describe(err, where="iteration 4", lost_after=LOST_AFTER)
    assert line.startswith(
        "sgp-imagenet: rank 1 stopped at iteration 4: it stopped after another rank did "
        "(rank 0 failed: /ckpt/checkpoint.pt: No space left on device)"
    ), line
    assert "is lost" not in line


def test_the_store_s_host_lingers_until_every_live_rank_has_stopped(
    store: dist.TCPStore,
) -> None:
    # rank 0 serves the store; rank 1 stops a moment later, rank 2 is dead (never beats),
    # rank 3 is alive but still blocked: only rank 3 is waited for until the deadline
    me, quitter, blocked = _hearts(store, 4, 0, 1, 3)
    with me, quitter, blocked:
        threading.Timer(0.2, quitter._report, args=(None,)).start()
        assert me.linger(3 * LOST_AFTER, lost_after=LOST_AFTER) == [3]
        blocked._report(None)
        assert me.linger(3 * LOST_AFTER, lost_after=LOST_AFTER) == []


def test_without_a_store_it_says_what_it_knows() -> None:
    assert not dist.is_initialized()
    me = Heartbeat(0, 4)  # no process group: no store to beat in
    with me:
        lost = me.describe(
            PeerLostError("x", rank=0, peer=3, step=1), where="iteration 1", lost_after=0.0
        )
        failed = me.describe(RuntimeError("Broken pipe"), where="iteration 1", lost_after=0.0)
        poisoned = me.describe(
            NonFiniteError("rank 0 received NaN from peer 2 at gossip step 5", rank=0,
                           peer=2, step=5),
            where="iteration 6",
        )  # fmt: skip
    assert "rank 3 is lost (its connection closed; it most likely died)" in lost
    assert "a collective failed (Broken pipe)" in failed
    assert poisoned == (
        "sgp-imagenet: rank 0 stopped at iteration 6: rank 0 received NaN from peer 2 at "
        "gossip step 5"
    )


def test_a_rank_that_stops_after_a_poisoned_message_points_to_it(store: dist.TCPStore) -> None:
    # rank 1 received NaN from rank 2 and stopped first; rank 0, whose exchange with rank 1
    # then failed, says why rather than calling rank 1 lost; rank 2 is alive (diverged)
    receiver, me, diverged = _hearts(store, 3, 1, 0, 2)
    with me, diverged:
        with receiver:
            poisoned = NonFiniteError(
                "rank 1 received NaN or Inf from rank 2 at gossip step 5", rank=1, peer=2, step=5
            )
            first = receiver.describe(poisoned, where="iteration 6")
        err = PeerLostError("rank 0 lost peer 1", rank=0, peer=1, step=6)
        line = me.describe(err, where="iteration 7", lost_after=LOST_AFTER)
    assert first.endswith(": rank 1 received NaN or Inf from rank 2 at gossip step 5")
    assert line.startswith(
        "sgp-imagenet: rank 0 stopped at iteration 7: it stopped after another rank did "
        "(rank 1 received NaN or Inf from rank 2 at gossip step 5)"
    ), line
    assert "is lost" not in line
