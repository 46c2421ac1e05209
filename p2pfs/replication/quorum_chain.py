"""Chain replication of a chunk write: the rules, pure (no trio, no clock, no I/O).

A star write sends each chunk from the coordinator to every replica, so the
coordinator encrypts and sends it rf - 1 times. A chain write (HDFS's write
pipeline; van Renesse and Schneider's chain replication, OSDI 2004, without its
reads at the tail) sends it once: the coordinator stores its own copy and sends one
``StoreChunkChain`` to the first peer of the plan, which verifies the chunk
against its id, passes it on to the next, stores its copy, and answers with its
own outcome followed by those of the nodes after it. docs/ARCHITECTURE.md
("Chain replication") has the comparison of shapes and the choice.

The rules kept here:

* ``plan_chunk_write``: which targets form the chain. Only peers whose member
  record advertises ``CHAIN_WIRE_VERSION`` (an older node does not know the
  message and would drop the connection it came on); this node's own copy is a
  local write; the others are written star-wise, as before. A chain of one peer
  is a star write.
* ``check_chain``: what a receiver refuses before doing any work: a chain longer
  than rf, one that names the receiver or repeats a node (a loop would store and
  forward the chunk again and again), a hint that names no node or the node
  asked to keep it.
* ``hop_times``: the deadlines of one hop. Each node answers within the time the
  message gives it (never more than its own ``replica_timeout_s``) and waits for
  the next node a margin less, so that a stall further down comes back as a
  failure in time, never as silence past the caller's deadline.
* ``read_reply`` and ``head_failed``: what an answer (or its absence) means for
  each node of the chain; ``settle`` counts it in the write's ``WriteQuorum``. The mid-chain failure rule: a node that answered
  stored counts as an acknowledgement; a node reported failed is replaced by a
  stand-in with a hint (``quorum.WriteQuorum``), and every node after the last
  outcome received is *unacknowledged*, not failed, and is written directly (the
  star fallback). Chunks are content-addressed and a store is idempotent, so a
  node written twice costs a write, never a wrong copy.

Trust: an acknowledgement of a node further down is the report of the node
before it. A node could report a store it did not see; nodes are already trusted
to store what they acknowledge themselves, and anti-entropy and fsck find a
missing copy either way. The limit: such a report can make a write count a copy
that does not exist, so a put acknowledged at ``w`` may hold fewer real copies
while a node lies, until the next anti-entropy round between its replicas.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from p2pfs import errors
from p2pfs.replication.messages import CHAIN_WIRE_VERSION
from p2pfs.replication.placement import Target
from p2pfs.replication.quorum import WriteQuorum
from p2pfs.wire import wire_version_of

CHAIN = "chain"
STAR = "star"
# The shapes of a chunk write (``ReplicationConfig.chunk_write_shape``).
CHUNK_WRITE_SHAPES = (CHAIN, STAR)

# Of the time a node has to answer, the share it keeps back from the wait for the next node:
# time for its own answer to travel back and be handled on a loaded event loop. 10% of the
# default replica_timeout_s (10 s) is 1 s per hop, far above a reply's usual few milliseconds.
HOP_MARGIN_FRACTION = 0.1
# The margin is at least this (seconds), for short budgets.
HOP_MARGIN_S_MIN = 0.05
# Length of a node id (hex of a SHA-256): what a hint's owner must be (handlers.NODE_ID_CHARS).
NODE_ID_CHARS = 64
# Below this wait for the next node (seconds), a node does not pass the chunk on: the next
# node could not answer in time, and the ones after it are reported failed at once.
FORWARD_WAIT_S_MIN = 0.1


class ChainRefused(errors.BadInput):
    """A chain message this node does not act on (too long, a loop, names this node)."""


class BadChainReply(errors.PeerFault):
    """An answer to a chain message that does not follow the chain it was sent."""


def chain_capable(protocol_version: int) -> bool:
    """Whether a member record's ``protocol_version`` says the member knows StoreChunkChain."""
    return wire_version_of(protocol_version) >= CHAIN_WIRE_VERSION


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkWritePlan:
    """The targets of one chunk write by how each is written: here, down the chain, or directly."""

    local: tuple[Target, ...]
    chain: tuple[Target, ...]
    star: tuple[Target, ...]


def plan_chunk_write(
    targets: Sequence[Target], me: str, versions: Mapping[str, int], shape: str
) -> ChunkWritePlan:
    """Split ``targets`` (in plan order) into this node's copy, the chain, and star writes.

    ``versions``: the advertised ``protocol_version`` of members (a target missing from it
    is written directly). The chain keeps the plan's order, so the first replica after
    this node is its head.
    """
    assert shape in CHUNK_WRITE_SHAPES, shape
    local = tuple(t for t in targets if t.node_id == me)
    peers = [t for t in targets if t.node_id != me]
    if shape == STAR:
        return ChunkWritePlan(local, (), tuple(peers))
    chain = tuple(t for t in peers if t.node_id in versions and chain_capable(versions[t.node_id]))
    if len(chain) < 2:
        return ChunkWritePlan(local, (), tuple(peers))
    star = tuple(t for t in peers if t not in chain)
    return ChunkWritePlan(local, chain, star)


def check_chain(me: str, hint_for: str, rest: Sequence[Target], rf: int) -> None:
    """ChainRefused unless a chain that reached this node (to store under ``hint_for``), then
    ``rest``, can be acted on."""
    if len(rest) > rf - 1:
        raise ChainRefused(f"a chain of {len(rest) + 1} nodes is longer than rf = {rf}")
    node_ids = [t.node_id for t in rest]
    if me in node_ids:
        raise ChainRefused("the chain names this node further down")
    if len(set(node_ids)) != len(node_ids):
        raise ChainRefused("the chain names a node twice")
    for node_id, hint in [(me, hint_for), *((t.node_id, t.hint_for) for t in rest)]:
        if hint and len(hint) != NODE_ID_CHARS:  # what a StoreChunk's hint must be too
            raise ChainRefused("a hint_for that is not a node id")
        if hint == node_id:
            raise ChainRefused("a node asked to keep a hint for itself")


def hop_margin_s(wait_s: float) -> float:
    """What a node keeps back from ``wait_s`` for an answer to travel and be handled."""
    return max(HOP_MARGIN_S_MIN, wait_s * HOP_MARGIN_FRACTION)


def message_timeout_ms(wait_s: float) -> int:
    """``StoreChunkChain.timeout_ms`` for a caller that waits ``wait_s`` for the answer."""
    return max(1, int((wait_s - hop_margin_s(wait_s)) * 1000))


@dataclasses.dataclass(frozen=True, slots=True)
class HopTimes:
    """A receiving node's deadlines (seconds on its own clock): when it must have answered, and
    how long it waits for the next node (None: no time is left to pass the chunk on)."""

    answer_by_s: float
    forward_wait_s: float | None


def hop_times(now_s: float, timeout_ms: int, replica_timeout_s: float) -> HopTimes:
    """The deadlines of a node that received a chain message at ``now_s`` with ``timeout_ms``;
    it never takes more than its own ``replica_timeout_s``, whatever the sender asked."""
    budget_s = min(timeout_ms / 1000, replica_timeout_s)
    forward_wait_s = budget_s - hop_margin_s(budget_s)
    return HopTimes(now_s + budget_s, forward_wait_s if forward_wait_s >= FORWARD_WAIT_S_MIN else None)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    target: Target
    stored: bool
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ChainResult:
    """Outcomes of the first nodes of a chain, in order; the nodes after them unacknowledged."""

    outcomes: tuple[Outcome, ...]
    unacknowledged: tuple[Target, ...]


def read_reply(chain: Sequence[Target], answered: Sequence[tuple[str, bool, str]]) -> ChainResult:
    """The result of a chain from the answer of its head: (node id, stored, reason) per node.

    The answer must name the chain's first nodes in order (at least the head); anything
    else is a BadChainReply, which the caller takes as the head's failure (``head_failed``).
    """
    if not answered:
        raise BadChainReply("an answer without the head's own outcome")
    if len(answered) > len(chain):
        raise BadChainReply(f"{len(answered)} outcomes for a chain of {len(chain)}")
    outcomes = []
    for target, (node_id, stored, reason) in zip(chain, answered):
        if node_id != target.node_id:
            raise BadChainReply("outcomes out of the chain's order")
        outcomes.append(Outcome(target, stored, reason))
    return ChainResult(tuple(outcomes), tuple(chain[len(answered):]))


def head_failed(chain: Sequence[Target], reason: str) -> ChainResult:
    """No answer from the head (down, timed out, refused, a bad answer): it failed, and the
    nodes after it are unacknowledged, since nothing is known of them."""
    assert chain, "a chain has a head"
    return ChainResult((Outcome(chain[0], False, reason),), tuple(chain[1:]))


def settle(quorum: WriteQuorum, result: ChainResult) -> list[Target]:
    """Count a chain's result in ``quorum``; the targets to write directly next: the stand-in
    (with its hint) of each node reported failed, while stand-ins last, then every node
    unacknowledged. Each of those is then written as a star write is, stand-ins and all."""
    direct: list[Target] = []
    for outcome in result.outcomes:
        if outcome.stored:
            quorum.on_answer(outcome.target)
            continue
        retry = quorum.on_failure(outcome.target, outcome.reason).retry
        if retry is not None:
            direct.append(retry)
    direct.extend(result.unacknowledged)
    return direct
