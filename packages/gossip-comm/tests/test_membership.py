"""Membership: processes agree on generations through a store that no worker serves.

The store is a ``TCPStore`` served by the test process (or, to lose it, by a process the
test kills); the workers are separate processes with no process group.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import torch.distributed as dist

from gossip_comm import Membership, MembershipError, StoreLostError
from gossip_comm.testing import run_distributed, store_server
from gossip_topology import Generation

HOST = "127.0.0.1"


@pytest.fixture
def store_port() -> Iterator[int]:
    with store_server() as port:
        yield port


def _membership(port: int, **kwargs: Any) -> Membership:
    store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=30))
    return Membership(store, **kwargs)


def _form(index: int, n: int, port: int) -> tuple[int, Generation]:
    m = _membership(port)
    g = m.form(n)
    return m.register(), g


def test_the_first_processes_form_generation_zero(store_port: int) -> None:
    results = run_distributed(_form, 4, (store_port,), init_timeout=None)
    ids = sorted(member for member, _ in results)
    assert ids == [0, 1, 2, 3]
    assert {g for _, g in results} == {Generation(0, (0, 1, 2, 3))}


def _survivors(fn: Any, n: int, args: tuple[Any, ...]) -> list[Any]:
    """The results of the processes that did not die (member ids need not follow the
    process indices, so any process may be the one that dies)."""
    results = run_distributed(
        fn, n, args, init_timeout=None, timeout=60, allowed_exits=list(range(n))
    )
    return [r for r in results if r is not None]


def _lose_one(index: int, n: int, port: int, report: bool, settle: float) -> Any:
    m = _membership(port, settle_timeout=settle)
    m.form(n)
    if m.member == n - 1:
        os.kill(os.getpid(), signal.SIGKILL)  # lost without a word
    if m.member == 0:
        m.request_end("member 3 lost", lost=[n - 1] if report else [])
    while m.end_requested() is None:
        time.sleep(0.01)
    reason = m.end_requested()
    started = time.monotonic()
    g = m.next()
    return g, reason, time.monotonic() - started


def test_a_reported_loss_is_settled_without_waiting(store_port: int) -> None:
    # settle_timeout is far longer than the run's own limit: the survivors decide as soon
    # as every member not reported lost has checked in
    results = _survivors(_lose_one, 4, (store_port, True, 600.0))
    assert len(results) == 3
    for g, reason, _ in results:
        assert g == Generation(1, (0, 1, 2))
        assert reason == "member 3 lost"


def test_an_unreported_loss_is_settled_after_the_settle_timeout(store_port: int) -> None:
    results = _survivors(_lose_one, 4, (store_port, False, 1.0))
    assert [g for g, _, _ in results] == [Generation(1, (0, 1, 2))] * 3
    # somebody waited out the settle timeout for member 3 before deciding
    assert max(waited for _, _, waited in results) >= 1.0


def _late(index: int, n: int, port: int) -> Any:
    m = _membership(port, settle_timeout=0.5)
    m.form(n)
    if m.member == 0:
        m.request_end("test")
    while m.end_requested() is None:
        time.sleep(0.01)
    if m.member == 2:
        time.sleep(3.0)  # checks in long after the others decided without it
        with pytest.raises(MembershipError, match="member 2 was left out of generation 1"):
            m.next()
        return "left out"
    return m.next()


def test_a_member_that_checks_in_too_late_is_left_out(store_port: int) -> None:
    results = run_distributed(_late, 3, (store_port,), init_timeout=None, timeout=60)
    # member ids follow registration order, not process indices
    assert sorted(map(str, results)) == sorted(map(str, [Generation(1, (0, 1))] * 2 + ["left out"]))


def _below_minimum(index: int, n: int, port: int) -> Any:
    m = _membership(port, settle_timeout=0.5, min_members=2)
    m.form(n)
    if m.member != 0:
        os.kill(os.getpid(), signal.SIGKILL)
    m.request_end("two lost", lost=[1, 2])
    with pytest.raises(MembershipError, match=r"1 member\(s\), fewer than min_members=2"):
        m.next()
    return "stopped"


def test_the_job_stops_below_min_members(store_port: int) -> None:
    assert _survivors(_below_minimum, 3, (store_port,)) == ["stopped"]


def _join(index: int, n: int, port: int) -> Any:
    m = _membership(port, settle_timeout=30.0)
    if index == n - 1:  # the joiner, started with the others: it waits for the job
        return m.join(timeout=30.0), m.register()
    m.form(n - 1)
    steps = 0
    while m.end_requested() is None:  # a training loop polls once a step
        steps += 1
        time.sleep(0.01)
    return m.next(), m.register()


def test_a_joiner_is_admitted_at_the_next_generation(store_port: int) -> None:
    results = run_distributed(_join, 4, (store_port,), init_timeout=None, timeout=60)
    assert {g for g, _ in results} == {Generation(1, (0, 1, 2, 3))}
    assert results[3][1] == 3


def _store_lost(index: int, n: int, port: int) -> Any:
    m = _membership(port)
    m.form(n)
    while True:  # poll until the coordinator is gone
        try:
            m.end_requested()
        except StoreLostError as err:
            return str(err)
        time.sleep(0.01)


def test_losing_the_store_raises_store_lost_on_every_member() -> None:
    with store_server(lost_after=4.0) as port:
        results = run_distributed(_store_lost, 3, (port,), init_timeout=None, timeout=60)
    prefixes = sorted(text.split(":")[0] for text in results)
    assert prefixes == ["member 0", "member 1", "member 2"]
    assert all("the membership store did not answer" in text for text in results)


def test_bad_settings_are_refused(store_port: int) -> None:
    with pytest.raises(ValueError, match="min_members"):
        _membership(store_port, min_members=0)
    with pytest.raises(ValueError, match="settle_timeout"):
        _membership(store_port, settle_timeout=0)
    with pytest.raises(RuntimeError, match="call form"):
        _membership(store_port).next()


def test_a_late_registration_cannot_form(store_port: int) -> None:
    first = _membership(store_port)
    first.register()
    second = _membership(store_port)
    second.register()
    with pytest.raises(MembershipError, match="member 1 registered after the first 1"):
        second.form(1)


def _join_while_busy(index: int, n: int, port: int) -> Any:
    m = _membership(port, settle_timeout=0.5)
    if index == n - 1:
        return m.join(timeout=30.0), m.register()
    m.form(n - 1)
    time.sleep(3.0)  # busy far longer than settle_timeout (an evaluation, a checkpoint)
    while m.end_requested() is None:
        time.sleep(0.01)
    return m.next(), m.register()


def test_a_joiner_alone_decides_nothing_while_the_members_are_busy(store_port: int) -> None:
    # the joiner checks in at once; its settle_timeout only counts once a member has
    # checked in too, so it does not form a generation of itself
    results = run_distributed(_join_while_busy, 3, (store_port,), init_timeout=None, timeout=60)
    assert {g for g, _ in results} == {Generation(1, (0, 1, 2))}


def test_a_joiner_that_nobody_admits_gives_up(store_port: int) -> None:
    member = _membership(store_port)
    member.form(1)  # a job of one that never polls
    joiner = _membership(store_port, settle_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(MembershipError, match="member 1: not admitted within 1 s"):
        joiner.join(timeout=1.0)
    assert time.monotonic() - started < 10.0


def test_the_first_stop_proposal_stands(store_port: int) -> None:
    a, b = _membership(store_port), _membership(store_port)
    assert a.stop_step() is None
    assert a.propose_stop(12) == 12
    assert b.propose_stop(9) == 12
    assert b.stop_step() == a.stop_step() == 12


def test_a_joiner_of_a_finished_job_is_told_at_once(store_port: int) -> None:
    member = _membership(store_port)
    member.form(1)
    member.finish()
    joiner = _membership(store_port)
    with pytest.raises(MembershipError, match="member 1: the job is over; nothing to join"):
        joiner.join(timeout=60.0)


def _two_joiners(index: int, n: int, port: int) -> Any:
    m = _membership(port, settle_timeout=0.5)
    if index == 2:  # the first joiner: setting up takes longer than settle_timeout
        m.join(timeout=30.0)
        time.sleep(2.0)  # building its model, receiving its state
        m.mark_ready()
    elif index == 3:  # the second joiner comes while the first is still setting up
        time.sleep(1.0)
        return m.join(timeout=30.0)
    else:
        m.form(2)
        m.mark_ready()
    while m.generation is not None and m.generation.number < 2:  # a training loop
        while m.end_requested() is None:
            time.sleep(0.01)
        m.next()
        m.mark_ready()
    return m.generation


def test_a_second_joiner_waits_until_the_first_one_trains(store_port: int) -> None:
    # had the second joiner ended generation 1 at once, the first (still setting up)
    # would have checked in too late and been left out
    results = run_distributed(_two_joiners, 4, (store_port,), init_timeout=None, timeout=60)
    assert results == [Generation(2, (0, 1, 2, 3))] * 4
