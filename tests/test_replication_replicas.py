"""One replica interface: what a peer's answers become, and this node's store behind the same calls."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from p2pfs import errors, net
from p2pfs.address import Address
from p2pfs.clock import SystemClock
from p2pfs.membership import Member, MemberState
from p2pfs.replication import messages as dm
from p2pfs.replication.config import ReplicationConfig
from p2pfs.replication.errors import BadReply, LocalFailure, ReplicaDown, ReplicaLacks, ReplicaRefused
from p2pfs.replication.healing import bucket_of
from p2pfs.replication.hints import HINTS_FILE_NAME, HintKind, HintStore
from p2pfs.replication.local import LocalReplica, LocalStore
from p2pfs.replication.placement import name_key
from p2pfs.replication.replicas import RemoteReplica, Replicas, collect_chunks, collect_names
from p2pfs.replication.view import RingView
from p2pfs.storage import NAMES_FILE_NAME, ChunkStore, NameEntry, NameIndex, Timestamp, chunk_id_of
from p2pfs.wire import ErrorCode

ME, PEER, STRANGER = "a" * 64, "b" * 64, "c" * 64
DATA = b"some chunk"
CHUNK_ID = chunk_id_of(DATA)


class FakeEndpoint:
    """Answers every request with what the test set for its message type (a message or an error)."""

    def __init__(self) -> None:
        self.answers: dict[type, object] = {}

    async def request(self, address, msg, *, timeout_s, node_id=None, body=None):
        answer = self.answers[type(msg)]
        if callable(answer):
            answer = answer(msg)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _view() -> RingView:
    members = [Member(n, Address("127.0.0.1", 7000 + i), "", 10 * 1024**3, 1, 1, MemberState.ALIVE, 0.0)
               for i, n in enumerate((ME, PEER))]
    return RingView(ME, ReplicationConfig(), lambda: members, SystemClock())


async def _inline(fn, *args):
    return fn(*args)


def _replicas(tmp_path, endpoint: FakeEndpoint) -> tuple[Replicas, LocalStore]:
    clock = SystemClock()
    local = LocalStore(ChunkStore(tmp_path, 1 << 20, clock=clock), NameIndex(tmp_path / NAMES_FILE_NAME),
                       HintStore(tmp_path / HINTS_FILE_NAME), clock)
    return Replicas(LocalReplica(ME, local, _inline), endpoint, _view(), _inline), local


def _unchecked(cls, *values):
    """A message the wire would refuse (its fields are checked at decode), built past those checks."""
    msg = object.__new__(cls)
    for field, value in zip(dataclasses.fields(cls), values):
        object.__setattr__(msg, field.name, value)
    return msg


def _remote(endpoint: FakeEndpoint, node_id: str = PEER) -> RemoteReplica:
    return RemoteReplica(node_id, endpoint, _view(), _inline)


@pytest.mark.parametrize(
    "answer, error",
    [
        (net.RequestTimeout("no answer"), ReplicaDown),
        (net.ConnectError("refused"), ReplicaDown),
        (net.RemoteError(ErrorCode.STORAGE_FULL, "full"), ReplicaRefused),
        (dm.HasChunksReply((True,)), BadReply),  # an answer of the wrong type
    ],
)
def test_a_peers_failures_become_replica_errors(answer, error):
    endpoint = FakeEndpoint()
    endpoint.answers[dm.StoreChunk] = answer
    with pytest.raises(error):
        trio.run(_remote(endpoint).store_chunk, CHUNK_ID, DATA)


def test_an_unknown_node_is_down():
    with pytest.raises(ReplicaDown, match="not a known member"):
        trio.run(_remote(FakeEndpoint(), STRANGER).store_chunk, CHUNK_ID, DATA)


@pytest.mark.parametrize(
    "answer",
    [net.RemoteError(ErrorCode.NOT_FOUND, "not held"), net.RemoteError(ErrorCode.CORRUPT, "bad"),
     dm.ChunkData(b"other bytes")],
)
def test_a_peer_without_a_good_copy_lacks_the_chunk(answer):
    endpoint = FakeEndpoint()
    endpoint.answers[dm.FetchChunk] = answer
    with pytest.raises(ReplicaLacks):
        trio.run(_remote(endpoint).fetch_chunk, CHUNK_ID)


@pytest.mark.parametrize(
    "msg_type, answer, call",
    [
        (dm.GetName, dm.GetNameReply(b"\xc1 not msgpack"), lambda r: r.get_name("x")),
        (dm.GetName, dm.GetNameReply(NameEntry("y", Timestamp(1, 0), ME, None).encode()), lambda r: r.get_name("x")),
        (dm.ListNames, dm.ListNamesReply((b"junk",), False), lambda r: r.list_names("", "", 10)),
        (dm.ListChunks, _unchecked(dm.ListChunksReply, b"\x00" * 33, False, b""), lambda r: r.list_chunks(b"", 10)),
        (dm.HasChunks, dm.HasChunksReply((True, True)), lambda r: r.has_chunks((CHUNK_ID,))),
        (dm.SyncChunks, _unchecked(dm.SyncChunksReply, (_unchecked(dm.BucketChunks, 0, b"\x01" * 31),)),
         lambda r: r.sync_chunks(())),
        (dm.SyncNames, _unchecked(dm.SyncNamesReply, (), (_unchecked(dm.NameSummary, "x", -1, 0, ME, False),)),
         lambda r: r.sync_names(())),
    ],
)
def test_a_malformed_answer_is_a_peer_fault(msg_type, answer, call):
    endpoint = FakeEndpoint()
    endpoint.answers[msg_type] = answer

    async def main():
        await call(_remote(endpoint))

    with pytest.raises(BadReply) as caught:
        trio.run(main)
    assert isinstance(caught.value, errors.PeerFault)


def test_names_a_sync_answer_lists_outside_its_differing_buckets_are_not_taken():
    inside, outside = "in.bin", "out.bin"
    assert bucket_of(name_key(inside)) != bucket_of(name_key(outside))
    endpoint = FakeEndpoint()
    endpoint.answers[dm.SyncNames] = dm.SyncNamesReply(
        (bucket_of(name_key(inside)),),
        tuple(dm.NameSummary(name, 1_000, 0, ME, False) for name in (inside, outside)))

    async def main():
        return await _remote(endpoint).sync_names(())

    differing, theirs = trio.run(main)
    assert differing == [bucket_of(name_key(inside))] and list(theirs) == [inside]


def test_this_node_is_a_replica_like_any_other(tmp_path):
    replicas, local = _replicas(tmp_path, FakeEndpoint())

    async def main():
        me = replicas(ME)
        assert me is replicas.local
        with pytest.raises(ReplicaLacks):
            await me.fetch_chunk(CHUNK_ID)
        await me.store_chunk(CHUNK_ID, DATA, hint_for=PEER)
        assert await me.fetch_chunk(CHUNK_ID) == DATA
        assert await me.has_chunks((CHUNK_ID, b"\x00" * 32)) == (True, False)
        with pytest.raises(LocalFailure):
            await me.store_chunk(b"\x00" * 32, DATA)  # bytes that do not match the id
        entry = NameEntry("x", Timestamp(5, 0), ME, None)
        assert await me.put_name(entry) is True
        assert await me.get_name("x") == entry

    trio.run(main)
    assert local.hints.is_hinted(HintKind.CHUNK, CHUNK_ID)  # the stand-in's hint was kept


def test_collecting_pages_from_a_peer_that_does_not_move_forward_gives_up_on_it(tmp_path):
    endpoint = FakeEndpoint()
    stuck = NameEntry("a", Timestamp(1, 0), PEER, None)
    endpoint.answers[dm.ListNames] = lambda msg: dm.ListNamesReply((stuck.encode(),), True)  # "a", more, forever
    endpoint.answers[dm.ListChunks] = dm.ListChunksReply(b"\x00" * 32, True, b"")
    replicas, local = _replicas(tmp_path, endpoint)
    local.apply(NameEntry("mine", Timestamp(2, 0), ME, None), "")

    async def main():
        with trio.fail_after(10):
            merged, holders, unreachable, too_many = await collect_names(replicas, [ME, PEER])
            held, corrupt, chunks_unreachable = await collect_chunks(replicas, [ME, PEER])
        assert unreachable == [PEER] and chunks_unreachable == [PEER]
        assert set(merged) == {"a", "mine"} and not too_many
        assert held == {ME: set()} and corrupt == set()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
