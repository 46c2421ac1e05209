"""The failover rules of p2pfs.client.Cluster, against fake nodes: which errors move an
operation on to the next node, when a put or a get may be repeated, the order of the
nodes tried, and the member list remembered beside the identity."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import trio

from p2pfs import errors
from p2pfs.address import Address
from p2pfs.client import Cluster, NodeUnreachable, failover, nodes_to_try
from p2pfs.client.members import (
    MEMBERS_FILE, MEMBERS_REMEMBERED_MAX, MEMBERS_STALE_S, RememberedMembers, load_members, save_members,
    worth_remembering,
)
from p2pfs.identity import Identity
from p2pfs.node.messages import MemberInfo
from p2pfs.wire import ErrorCode

A, B, C = Address("127.0.0.1", 7001), Address("127.0.0.1", 7002), Address("127.0.0.1", 7003)


class FakeNode:
    """What one node does with each operation: fail (after reading or writing some bytes) or answer."""

    def __init__(self, address: Address, failure: errors.P2pfsError | None = None, *, touch_bytes: int = 0,
                 members: list[MemberInfo] = ()) -> None:
        self.address = address
        self.failure = failure
        self.touch_bytes = touch_bytes
        self.member_list = list(members)
        self.received: list[bytes] = []

    async def _maybe_fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def ls(self, prefix: str, after: str = "", limit: int = 1) -> str:
        await self._maybe_fail()
        return f"listed at {self.address}"

    async def rm(self, name: str) -> str:
        await self._maybe_fail()
        return f"removed at {self.address}"

    async def members(self) -> list[MemberInfo]:
        await self._maybe_fail()
        return self.member_list

    async def put(self, source, name, size_bytes, progress) -> bytes:
        if self.failure is not None:
            source.read(self.touch_bytes)
            raise self.failure
        data = b""
        while chunk := source.read(4):
            data += chunk
            progress(len(chunk))
        self.received.append(data)
        return data

    async def get(self, name, sink, progress, on_size) -> str:
        sink.write(b"x" * self.touch_bytes)
        await self._maybe_fail()
        sink.write(b"whole file")
        return "got"


@pytest.fixture
def fake_nodes(monkeypatch):
    """Replace the connection to a node by the FakeNode registered for its address."""
    nodes: dict[Address, FakeNode] = {}
    tried: list[Address] = []

    @contextlib.asynccontextmanager
    async def connect(identity, node):
        tried.append(node)
        fake = nodes.get(node)
        if fake is None:
            raise NodeUnreachable(f"cannot reach node {node}: refused")
        yield fake

    monkeypatch.setattr(failover.Client, "connect", connect)
    return nodes, tried


class StillClock:
    """A clock that moves only when told (trio's own clock starts each run anywhere)."""

    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000

    def monotonic_s(self) -> float:
        return self.now_ms / 1000

    def wall_ms(self) -> int:
        return self.now_ms


def cluster(nodes, remember_in=None, clock=None) -> Cluster:
    return Cluster(Identity.__new__(Identity), nodes, remember_in=remember_in, clock=clock or StillClock())


def quorum_missed(node: Address) -> errors.P2pfsError:
    from p2pfs.net import RemoteError

    return RemoteError(ErrorCode.UNAVAILABLE, f"only 1 of 2 replicas answered at {node}")


def test_the_given_nodes_come_first_then_the_remembered_without_repeats_capped():
    many = [Address("127.0.0.1", 8000 + i) for i in range(20)]
    assert nodes_to_try([B, A], [A, C]) == [B, A, C]
    assert nodes_to_try(many[:3], many) == many[:failover.FAILOVER_ATTEMPTS_MAX]


def test_a_quorum_missed_at_one_coordinator_is_tried_at_the_next(fake_nodes):
    nodes, tried = fake_nodes
    nodes[A] = FakeNode(A, quorum_missed(A))
    nodes[B] = FakeNode(B)
    c = cluster([C, A, B])
    assert trio.run(c.ls, "") == f"listed at {B}"
    assert tried == [C, A, B] and c.last_node == B
    assert trio.run(c.rm, "x") == f"removed at {B}"


def test_when_every_node_fails_the_error_names_each_with_its_reason(fake_nodes):
    nodes, _ = fake_nodes
    nodes[A] = FakeNode(A, quorum_missed(A))
    with pytest.raises(errors.Unavailable) as caught:
        trio.run(cluster([A, B]).ls, "")
    text = str(caught.value)
    assert f"({A}, {B})" in text and "only 1 of 2 replicas answered" in text and f"cannot reach node {B}" in text


def test_errors_other_than_unavailability_are_not_retried(fake_nodes):
    nodes, tried = fake_nodes
    nodes[A] = FakeNode(A, errors.NotFound("no file named 'x'"))
    nodes[B] = FakeNode(B)
    with pytest.raises(errors.NotFound):
        trio.run(cluster([A, B]).ls, "")
    assert tried == [A]


def test_a_put_from_a_file_is_sent_again_whole_at_the_next_node(fake_nodes):
    nodes, _ = fake_nodes
    nodes[A] = FakeNode(A, errors.Unavailable("connection lost"), touch_bytes=6)
    nodes[B] = FakeNode(B)
    source = io.BytesIO(b"0123456789")
    counted: list[int] = []
    assert trio.run(cluster([A, B]).put, source, "n", 10, counted.append) == b"0123456789"
    assert sum(counted) == 10


def test_a_put_from_a_pipe_already_read_is_not_sent_again(fake_nodes):
    nodes, tried = fake_nodes

    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            buffer[:1] = b"p"
            return 1

    nodes[A] = FakeNode(A, errors.Unavailable("connection lost"), touch_bytes=1)
    nodes[B] = FakeNode(B)
    with pytest.raises(errors.Unavailable, match="not retried: its source cannot be read again"):
        trio.run(cluster([A, B]).put, Pipe(), "n", -1, lambda n: None)
    assert tried == [A] and nodes[B].received == []


def test_a_put_that_sent_nothing_is_sent_elsewhere_even_from_a_pipe(fake_nodes):
    nodes, _ = fake_nodes
    nodes[B] = FakeNode(B)
    pipe = io.BufferedReader(io.BytesIO(b"abc"))
    pipe.seekable = lambda: False
    assert trio.run(cluster([A, B]).put, pipe, "n", -1, lambda n: None) == b"abc"


def test_a_get_rewinds_a_file_but_not_a_pipe(fake_nodes):
    nodes, _ = fake_nodes
    nodes[A] = FakeNode(A, errors.Unavailable("connection lost"), touch_bytes=5)
    nodes[B] = FakeNode(B)
    file = io.BytesIO()
    trio.run(cluster([A, B]).get, "n", file)
    assert file.getvalue() == b"whole file"

    pipe = io.BytesIO()
    pipe.seekable = lambda: False
    with pytest.raises(errors.Unavailable, match="cannot be rewound"):
        trio.run(cluster([A, B]).get, "n", pipe)


def test_members_are_learnt_when_none_are_remembered_and_again_when_stale(fake_nodes, tmp_path):
    nodes, _ = fake_nodes
    member = lambda port, state: MemberInfo("a" * 64, "127.0.0.1", port, state, 1, "", 0, 1)  # noqa: E731
    nodes[A] = FakeNode(A, members=[member(7001, "alive"), member(7002, "suspect"), member(7003, "dead")])
    clock = StillClock()
    c = cluster([A], remember_in=tmp_path, clock=clock)
    trio.run(c.ls, "")
    assert load_members(tmp_path).addresses == (A, B)
    nodes[A].member_list = [member(7003, "alive")]
    trio.run(c.ls, "")
    assert load_members(tmp_path).addresses == (A, B), "a fresh list is not asked for again"
    clock.now_ms += int(MEMBERS_STALE_S * 1000) + 1
    trio.run(c.ls, "")
    assert load_members(tmp_path).addresses == (Address("127.0.0.1", 7003),)


def test_the_remembered_list_is_tried_after_a_dead_given_node(fake_nodes, tmp_path):
    nodes, tried = fake_nodes
    nodes[B] = FakeNode(B)
    save_members(tmp_path, [A, B], now_wall_ms=0)
    assert trio.run(cluster([A], remember_in=tmp_path).ls, "") == f"listed at {B}"
    assert tried == [A, B]


def test_a_remembered_list_goes_stale_with_age_or_a_clock_moved_back():
    assert RememberedMembers((A,), 1000).stale(1000 + int(MEMBERS_STALE_S * 1000))
    assert not RememberedMembers((A,), 1000).stale(1001)
    assert RememberedMembers((A,), 1000).stale(999), "a wall clock moved back: learn again"


def test_member_file_damage_and_caps(tmp_path):
    (tmp_path / MEMBERS_FILE).write_text("{not json")
    assert load_members(tmp_path) is None
    (tmp_path / MEMBERS_FILE).write_text(json.dumps({"addresses": ["nonsense"], "learned_wall_ms": 1}))
    assert load_members(tmp_path) is None
    assert len(worth_remembering((("127.0.0.1", 9000 + i, "alive") for i in range(100)))) == MEMBERS_REMEMBERED_MAX


def test_no_new_attempt_starts_after_the_failover_window(fake_nodes):
    nodes, tried = fake_nodes
    clock = StillClock()

    class SlowToFail(FakeNode):
        async def _maybe_fail(self) -> None:
            clock.now_ms += int(failover.FAILOVER_WINDOW_S * 1000) + 1
            await super()._maybe_fail()

    nodes[A] = SlowToFail(A, errors.Unavailable("timed out"))
    nodes[B] = FakeNode(B)
    with pytest.raises(errors.Unavailable, match="no further node tried after 180 s") as caught:
        trio.run(cluster([A, B], clock=clock).ls, "")
    assert tried == [A] and f"any node tried ({A}):" in str(caught.value)
