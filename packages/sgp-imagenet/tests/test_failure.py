"""Whom a stopping rank names as lost: heartbeats in a real TCPStore, ranks played here."""

from __future__ import annotations

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
