"""The numpy model of push-sum mass in a generation that ends with ranks lost.

A fault-tolerant job cannot stop every rank at the same step: when a member dies, its
neighbours notice first, the others finish a step or two before they learn of it. The
survivors then *settle* the generation before moving to the next one. A message travels
only once both ends have posted it (gloo and NCCL point-to-point operations are
rendezvous), so:

- a message between two survivors is received if its receiver had posted that step
  (both ends then wait for it however late); otherwise it stays with its sender;
- a message to a lost rank whose send failed stays with its sender (it is *returned*);
  one whose send completed went down with that rank;
- a message from a lost rank counts if its receive completed before the loss.

Push-sum is linear, so the survivors' numerators and weights after settling follow from
what each rank recorded: how many steps it completed, whether it had posted the next
step's sends and receives when it stopped, which of its sends to lost ranks failed and
which messages from lost ranks it received.
[`simulate_generation`][gossip_topology.simulate_generation] computes them, so a test of
the torch protocol can check that it creates and destroys no mass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gossip_topology.mixing import Mixing, mixing_matrix
from gossip_topology.topology import Topology

__all__ = ["GenerationOutcome", "RankRecord", "simulate_generation"]

Array = NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class RankRecord:
    """What one rank did in a generation, as it recorded it.

    Attributes:
        completed: Steps it completed: every message of those steps received and folded.
        posted: Whether it had posted the sends and receives of step ``completed`` when
            it stopped (it then kept only its own share, plus the returned ones and what
            it received in that step).
        alive: Whether it survives the generation.
        returned: ``(destination rank, step)`` of each send to a lost rank that failed;
            the share stays with this rank.
        received_from_lost: ``(source rank, step)`` of each message from a lost rank whose
            receive completed in the interrupted step (those of completed steps were all
            received).
    """

    completed: int
    posted: bool = False
    alive: bool = True
    returned: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    received_from_lost: frozenset[tuple[int, int]] = field(default_factory=frozenset)


@dataclass(frozen=True, kw_only=True)
class GenerationOutcome:
    """The state each rank ends the generation with.

    Attributes:
        numerators: Shape ``(n, d)``; the settled numerators (rows of lost ranks: NaN).
        weights: Shape ``(n,)``; the settled push-sum weights (lost ranks: NaN).
        lost_numerator: Shape ``(d,)``; the mass the lost ranks took with them: the start
            total minus the survivors' total.
        lost_weight: The weight the lost ranks took with them.
    """

    numerators: Array
    weights: Array
    lost_numerator: Array
    lost_weight: float


@dataclass
class _Message:
    src: int
    dst: int
    step: int
    x: Array
    w: float


def _acts(record: RankRecord, step: int) -> bool:
    """Whether the rank sent messages at ``step``."""
    return step < record.completed or (step == record.completed and record.posted)


def _check_records(records: Sequence[RankRecord], world_size: int) -> None:
    if len(records) != world_size:
        raise ValueError(f"records must have one entry per rank ({world_size}); got {len(records)}")
    for r, rec in enumerate(records):
        if rec.completed < 0:
            raise ValueError(f"rank {r}: completed must be >= 0; got {rec.completed}")
        for peer, _ in (*rec.returned, *rec.received_from_lost):
            if not 0 <= peer < world_size or records[peer].alive:
                raise ValueError(f"rank {r}: peer {peer} in its record is not a lost rank")
        for peer, step in (*rec.returned, *rec.received_from_lost):
            if step != rec.completed or not rec.posted:
                raise ValueError(
                    f"rank {r}: its record names rank {peer} at step {step}, which must be "
                    f"the step where it stopped (completed={step}, posted=True); got "
                    f"completed={rec.completed}, posted={rec.posted}"
                )


class _Settler:
    """One generation's ranks, stepped together; each stops where its record says."""

    def __init__(
        self, topology: Topology, mixing: Mixing | None, records: Sequence[RankRecord]
    ) -> None:
        self.topology, self.mixing, self.records = topology, mixing, records
        n = topology.world_size
        self.final_x: Array = np.full((n, 0), np.nan)
        self.final_w: Array = np.full(n, np.nan)

    def delivered(self, m: _Message) -> bool:
        src, dst = self.records[m.src], self.records[m.dst]
        if src.alive and dst.alive:
            return _acts(dst, m.step)  # received once both ends posted it
        if src.alive:  # to a lost rank: gone with it unless the send failed
            return (m.dst, m.step) not in src.returned
        if dst.alive:  # from a lost rank: its steps completed, or as recorded
            return m.step < dst.completed or (m.src, m.step) in dst.received_from_lost
        return m.step < dst.completed  # between lost ranks: only their own past depends on it

    def run(self, x: Array, w: Array) -> None:
        """Step every rank to where it stopped; the settled state ends in ``final_*``."""
        self.final_x = np.full_like(x, np.nan)
        last = max(rec.completed + rec.posted for rec in self.records)
        for step in range(last):
            W = mixing_matrix(self.topology, step, self.mixing)
            messages = [
                _Message(r, q, step, W[q, r] * x[r], float(W[q, r] * w[r]))
                for r, rec in enumerate(self.records)
                if _acts(rec, step)
                for q in sorted(set(self.topology.out_peers(r, step)))
            ]
            self.check_complete(step, messages)
            x, w = self.step(step, np.diag(W), x, w, messages)
        for r, rec in enumerate(self.records):
            if rec.completed == last:  # stopped after the last step anyone ran
                self.final_x[r], self.final_w[r] = x[r], w[r]

    def step(
        self, step: int, self_w: Array, x: Array, w: Array, messages: list[_Message]
    ) -> tuple[Array, Array]:
        """Apply one step: to the ranks that complete it, or to their settled state."""
        new_x, new_w = x * self_w[:, None], w * self_w
        for r, rec in enumerate(self.records):
            if step == rec.completed:  # the interrupted step: what it keeps
                self.final_x[r] = new_x[r] if rec.posted else x[r]
                self.final_w[r] = new_w[r] if rec.posted else w[r]
        for m in messages:
            if not self.delivered(m):
                if self.records[m.src].alive:  # returned to its sender
                    self.final_x[m.src] += m.x
                    self.final_w[m.src] += m.w
            elif step < self.records[m.dst].completed:
                new_x[m.dst] += m.x
                new_w[m.dst] += m.w
            else:  # at the receiver's interrupted step
                self.final_x[m.dst] += m.x
                self.final_w[m.dst] += m.w
        return new_x, new_w

    def check_complete(self, step: int, messages: list[_Message]) -> None:
        """A surviving rank that completed ``step`` received every in-peer's message, and
        sent every message (a send no one posted the receive for never completes)."""
        for m in messages:
            src = self.records[m.src]
            if src.alive and step < src.completed and not self.delivered(m):
                raise ValueError(
                    f"rank {m.src} completed step {step} although its message to rank "
                    f"{m.dst} was not received"
                )
        for r, rec in enumerate(self.records):
            if rec.alive and step < rec.completed:
                expected = set(self.topology.in_peers(r, step)) - {r}
                got = {m.src for m in messages if m.dst == r and self.delivered(m)}
                if got != expected:
                    raise ValueError(
                        f"rank {r} completed step {step} without the messages of ranks "
                        f"{sorted(expected - got)}"
                    )


def simulate_generation(
    topology: Topology,
    x0: ArrayLike,
    records: Sequence[RankRecord],
    *,
    weights0: ArrayLike | None = None,
    mixing: Mixing | None = None,
) -> GenerationOutcome:
    """Settle one generation of push-sum gossip from what each rank recorded.

    Steps are the generation's own (the schedule starts at 0). Rank ``r`` updates its
    numerator and weight at each of its ``completed`` steps as plain push-sum does; at its
    interrupted step it keeps its own share (if it had posted), the shares that were not
    received, and the messages it received in that step.

    Args:
        topology: The generation's graph; ``n = topology.world_size``.
        x0: Numerators at the start of the generation, shape ``(n, d)`` or ``(n,)``.
        records: One [`RankRecord`][gossip_topology.RankRecord] per rank.
        weights0: Push-sum weights at the start, shape ``(n,)``; all ones by default.
        mixing: The mixing rule; uniform by default.

    Returns:
        A [`GenerationOutcome`][gossip_topology.GenerationOutcome].

    Raises:
        ValueError: If the records do not fit the topology, or contradict each other (a
            rank completed a step whose message from a peer was never sent or received).

    Examples:
        Rank 2 of a ring ``0 -> 1 -> 2 -> 0`` is lost after step 0. At step 1 rank 0's
        receive from it fails; rank 1's send to it fails and its share stays home:

        >>> from gossip_topology import make_topology
        >>> records = [
        ...     RankRecord(completed=1, posted=True),
        ...     RankRecord(completed=1, posted=True, returned=frozenset({(2, 1)})),
        ...     RankRecord(completed=1, alive=False),
        ... ]
        >>> out = simulate_generation(make_topology("ring", 3), [0.0, 3.0, 6.0], records)
        >>> out.weights.tolist(), out.lost_weight
        ([0.5, 1.5, nan], 1.0)
        >>> out.numerators[:2, 0].tolist(), out.lost_numerator.tolist()
        ([1.5, 3.0], [4.5])
    """
    n = topology.world_size
    _check_records(records, n)
    x = np.array(x0, dtype=np.float64).reshape(n, -1)
    w = np.ones(n) if weights0 is None else np.array(weights0, dtype=np.float64).reshape(n)
    settler = _Settler(topology, mixing, records)
    settler.run(x, w)
    alive = np.array([rec.alive for rec in records])
    final_x, final_w = settler.final_x, settler.final_w
    final_x[~alive], final_w[~alive] = np.nan, np.nan
    return GenerationOutcome(
        numerators=final_x,
        weights=final_w,
        lost_numerator=x.sum(0) - final_x[alive].sum(0),
        lost_weight=float(w.sum() - final_w[alive].sum()),
    )
