"""fsck across requests: a check longer than a request's deadline (issue 16, a million names).

A request starts the check as a job on the node (or joins the one under way) and waits
for it at most ``FSCK_ANSWER_WAIT_S``; until the job ends it answers ``FsckPending``
with the counts so far, and the client asks again; a client that did not offer
``wire.ALPN_FSCK_PENDING`` in the TLS handshake (one older than FsckPending) is held
until the report instead, as before the jobs. On the mock clock every store call
costs ``STORE_CALL_S``, so the check of a small cluster lasts many answer waits.
"""

from __future__ import annotations

import random
import ssl
import types

import pytest
import trio
import trio.testing

from p2pfs import errors, identity, net, wire
from p2pfs.address import Address
from p2pfs.client.node import Client
from p2pfs.replication import fsck
from p2pfs.replication import messages as dm
from p2pfs.wire import Role
from test_data_scale import NODES, cluster, costly_offload, files
from test_smallops_wire import _handshake, _offering

ANSWER_WAIT_S = 0.25


def _request(alpn: str | None):
    """An Fsck request on a connection that agreed on ``alpn`` in its handshake."""
    return types.SimpleNamespace(conn=types.SimpleNamespace(alpn_protocol=alpn))


NEW_CLIENT = _request(wire.ALPN_FSCK_PENDING)
OLD_CLIENTS = [_request(wire.ALPN_SMALL_FILES), _request(None)]  # before FsckPending; before ALPN


@pytest.fixture
def slow_cluster(tmp_path, monkeypatch):
    monkeypatch.setattr(fsck, "FSCK_ANSWER_WAIT_S", ANSWER_WAIT_S)
    monkeypatch.setattr(fsck, "FSCK_NAME_PAGE", 10)  # pages: many store calls, each 50 ms
    monkeypatch.setattr(fsck, "FSCK_CHUNK_PAGE_IDS", 20)
    monkeypatch.setattr(fsck, "FSCK_REF_BATCH", 20)
    entries, blobs = files(60, random.Random(21))
    nodes = cluster(tmp_path, entries, blobs, costly_offload)
    rng = random.Random(22)
    b = nodes[NODES[1]]
    for chunk_id in rng.sample(sorted(b.local.chunks.iter_ids()), 7):
        b.local.chunks.delete(chunk_id)
    return nodes[NODES[0]].fsck


def test_a_check_longer_than_a_request_answers_pending_then_the_report_of_one_request(slow_cluster):
    answers: list[tuple[float, object]] = []

    async def main() -> dm.FsckReply:
        started_s = trio.current_time()
        whole = await slow_cluster.run()  # in one piece, as before
        assert trio.current_time() - started_s > 5 * ANSWER_WAIT_S  # the premise: a check outlasts a request
        async with trio.open_nursery() as nursery:
            await nursery.start(slow_cluster.serve)
            for _ in range(1000):
                asked_s = trio.current_time()
                reply = await slow_cluster.on_fsck(NEW_CLIENT)
                answers.append((trio.current_time() - asked_s, reply))
                if isinstance(reply, dm.FsckReply):
                    break
            nursery.cancel_scope.cancel()
        return whole

    whole = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert max(took_s for took_s, _ in answers) <= ANSWER_WAIT_S  # no request waits longer
    pending = [reply for _, reply in answers[:-1]]
    assert len(pending) >= 5 and all(isinstance(r, dm.FsckPending) for r in pending)
    progress = [(r.names_checked, r.chunks_checked) for r in pending]
    assert progress == sorted(progress) and progress[-1] > (0, 0)  # counts only grow
    assert answers[-1][1] == whole  # the same report as one long request
    assert whole.names_checked == 60 and whole.chunks_under_replicated == 7


def test_a_check_nobody_asks_about_stops_and_the_next_request_starts_afresh(slow_cluster, monkeypatch):
    monkeypatch.setattr(fsck, "FSCK_ABANDONED_S", 3 * ANSWER_WAIT_S)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(slow_cluster.serve)
            assert isinstance(await slow_cluster.on_fsck(NEW_CLIENT), dm.FsckPending)
            job = slow_cluster._job
            with trio.fail_after(10 * ANSWER_WAIT_S):
                await job.done.wait()  # stopped well before the check would end
            assert job.reply is None and isinstance(job.error, errors.Unavailable)
            await trio.sleep(fsck.FSCK_REPORT_KEPT_S + 1)
            assert isinstance(await slow_cluster.on_fsck(NEW_CLIENT), dm.FsckPending)
            assert slow_cluster._job is not job  # a new check, not the stopped one's error
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class _Conn:
    """A node's answers to the client's requests, in order."""

    def __init__(self, replies) -> None:
        self.replies = list(replies)
        self.asked: list[object] = []

    async def request(self, msg, timeout_s, body=None):
        self.asked.append(msg)
        return self.replies.pop(0)


REPORT = dm.FsckReply(*[0] * 11, (), ())


def test_the_client_asks_again_while_the_node_answers_pending():
    conn = _Conn([dm.FsckPending(10, 0), dm.FsckPending(20, 5), REPORT])
    client = Client(conn, "127.0.0.1:1")
    assert trio.run(client.fsck) == REPORT
    assert conn.asked == [dm.Fsck()] * 3


def test_the_client_refuses_an_answer_that_is_no_fsck_answer():
    client = Client(_Conn([dm.FsckPending(1, 0), dm.LeavingReply()]), "127.0.0.1:1")
    with pytest.raises(errors.PeerFault):
        trio.run(client.fsck)


def test_the_client_gives_up_after_its_bound_of_requests(monkeypatch):
    from p2pfs.client import node
    monkeypatch.setattr(node, "FSCK_REQUESTS_MAX", 3)
    conn = _Conn([dm.FsckPending(i, 0) for i in range(5)])
    with pytest.raises(errors.Unavailable):
        trio.run(Client(conn, "127.0.0.1:1").fsck)
    assert len(conn.asked) == 3


def test_a_report_once_given_is_not_given_again_and_one_nobody_waited_for_goes_to_the_next_request(slow_cluster):
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(slow_cluster.serve)
            while not isinstance(first := await slow_cluster.on_fsck(NEW_CLIENT), dm.FsckReply):
                pass
            first_job = slow_cluster._job
            # A new check for the next request: the report was given (a second `p2pfs fsck`
            # after a repair must not see the report from before it).
            assert isinstance(await slow_cluster.on_fsck(NEW_CLIENT), dm.FsckPending)
            second_job = slow_cluster._job
            assert second_job is not first_job
            with trio.fail_after(100):
                await second_job.done.wait()  # ends while no request waits
            assert await slow_cluster.on_fsck(NEW_CLIENT) == second_job.reply == first  # kept for its asker
            assert slow_cluster._job is second_job
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("old_client", OLD_CLIENTS, ids=["small-files", "no-alpn"])
def test_a_client_older_than_fsck_pending_is_held_until_the_report(slow_cluster, old_client):
    """Rolling upgrades: an older client calls FsckPending unexpected, so a check that outlasts
    the answer wait is one request for it, as before the jobs (its deadline bounds it)."""
    async def main() -> tuple[float, object]:
        async with trio.open_nursery() as nursery:
            await nursery.start(slow_cluster.serve)
            asked_s = trio.current_time()
            reply = await slow_cluster.on_fsck(old_client)
            took_s = trio.current_time() - asked_s
            nursery.cancel_scope.cancel()
        return took_s, reply

    took_s, reply = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert took_s > 5 * ANSWER_WAIT_S  # the premise: the check outlasted many answer waits
    assert isinstance(reply, dm.FsckReply)
    assert reply.names_checked == 60 and reply.chunks_under_replicated == 7


def test_an_older_client_held_past_its_deadline_is_told_unavailable_and_the_check_goes_on(slow_cluster, monkeypatch):
    monkeypatch.setattr(fsck, "FSCK_HELD_WAIT_S", 2 * ANSWER_WAIT_S)
    monkeypatch.setattr(fsck, "FSCK_ABANDONED_S", 100.0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(slow_cluster.serve)
            with pytest.raises(errors.Unavailable):
                await slow_cluster.on_fsck(OLD_CLIENTS[0])
            job = slow_cluster._job
            assert not job.done.is_set()
            while not isinstance(reply := await slow_cluster.on_fsck(NEW_CLIENT), dm.FsckReply):
                pass
            assert slow_cluster._job is job and reply.names_checked == 60  # the same check, joined
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_check_an_older_client_waits_for_is_not_stopped_as_abandoned(slow_cluster, monkeypatch):
    """The job is stopped when nobody asked for FSCK_ABANDONED_S, not while a request waits."""
    monkeypatch.setattr(fsck, "FSCK_ABANDONED_S", 2 * ANSWER_WAIT_S)

    async def main() -> object:
        async with trio.open_nursery() as nursery:
            await nursery.start(slow_cluster.serve)
            reply = await slow_cluster.on_fsck(OLD_CLIENTS[0])
            nursery.cancel_scope.cancel()
        return reply

    assert isinstance(trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)), dm.FsckReply)


def test_a_check_nobody_asks_about_is_stopped_after_the_abandon_time_not_before(slow_cluster, monkeypatch):
    """At the shipped FSCK_ABANDONED_S (300 s) and answer wait, on trio's mock clock, with a check
    that would never end by itself."""
    monkeypatch.setattr(fsck, "FSCK_ANSWER_WAIT_S", 60.0)

    async def endless(progress=None):
        await trio.sleep_forever()

    monkeypatch.setattr(slow_cluster, "run", endless)

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            await nursery.start(slow_cluster.serve)
            assert isinstance(await slow_cluster.on_fsck(NEW_CLIENT), dm.FsckPending)
            job = slow_cluster._job
            last_asked_s = trio.current_time()
            with trio.fail_after(10 * fsck.FSCK_ABANDONED_S):
                await job.done.wait()
            stopped_after_s = trio.current_time() - last_asked_s
            assert job.reply is None and isinstance(job.error, errors.Unavailable)
            nursery.cancel_scope.cancel()
        return stopped_after_s

    stopped_after_s = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert fsck.FSCK_ABANDONED_S == 300.0
    assert fsck.FSCK_ABANDONED_S < stopped_after_s <= fsck.FSCK_ABANDONED_S + fsck.FSCK_ANSWER_WAIT_S


def test_the_client_takes_a_report_in_one_answer_from_a_node_that_never_sends_pending():
    """A node older than FsckPending answers the report to one Fsck."""
    conn = _Conn([REPORT])
    conn.alpn_protocol = wire.ALPN_SMALL_FILES
    assert trio.run(Client(conn, "127.0.0.1:1").fsck) == REPORT
    assert conn.asked == [dm.Fsck()]


# --- who is told FsckPending: what the TLS handshake agrees on ---------------------------------


@pytest.mark.parametrize("old_offer", [(), (wire.ALPN_SMALL_FILES,)], ids=["no-alpn", "small-files"])
def test_only_two_new_ends_agree_on_fsck_pending(make_identity, old_offer) -> None:
    node, client = make_identity(Role.NODE), make_identity(Role.CLIENT)
    agreed = _handshake(client.client_context(), node.server_context())
    assert agreed == (wire.ALPN_FSCK_PENDING,) * 2
    old = wire.ALPN_SMALL_FILES if old_offer else None
    # An older client on a new node: the node holds its fsck until the report.
    agreed = _handshake(_offering(client, ssl.PROTOCOL_TLS_CLIENT, old_offer), node.server_context())
    assert agreed == (old, old) and not wire.alpn_speaks(old, wire.ALPN_FSCK_PENDING)
    # A new client on an older node: the small-file messages still, if that node offered them.
    agreed = _handshake(client.client_context(), _offering(node, ssl.PROTOCOL_TLS_SERVER, old_offer))
    assert agreed == (old, old) and wire.alpn_speaks(old, wire.ALPN_SMALL_FILES) == bool(old_offer)


# --- over real TLS connections on 127.0.0.1 -----------------------------------------------------


class _FsckNode:
    """A node's request handling for Fsck alone; its check takes ``CHECK_S`` (trio's clock)."""

    CHECK_S = 8 * ANSWER_WAIT_S

    def __init__(self) -> None:
        self.checker = fsck.Fsck(config=None, view=None, replicas=None)
        self.checker.run = self._check
        self.answers: list[str] = []

    async def _check(self, progress=None) -> dm.FsckReply:
        await trio.sleep(self.CHECK_S)
        return REPORT

    async def handle_request(self, request):
        reply = await self.checker.on_fsck(request)
        self.answers.append(type(reply).__name__)
        return reply

    def handle_oneway(self, conn, msg) -> None:
        raise AssertionError(f"unexpected {msg}")


@pytest.fixture
async def fsck_node(nursery, make_identity, monkeypatch):
    monkeypatch.setattr(fsck, "FSCK_ANSWER_WAIT_S", ANSWER_WAIT_S)
    handlers = _FsckNode()
    await nursery.start(handlers.checker.serve)
    endpoint = net.Endpoint(make_identity(Role.NODE), Address("127.0.0.1", 0), handlers)
    await nursery.start(endpoint.run)
    return handlers, Address("127.0.0.1", endpoint.bound_port)


def _client_offering(monkeypatch, alpn: tuple[str, ...]) -> None:
    """Clients made from here on offer ``alpn`` in the handshake, as an older release's did."""
    made = identity.Identity.client_context

    def client_context(self):
        ctx = made(self)
        if self.role is Role.CLIENT:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    monkeypatch.setattr(identity.Identity, "client_context", client_context)


async def test_a_new_client_is_answered_pending_then_the_report_over_tls(fsck_node, make_identity):
    handlers, address = fsck_node
    with trio.fail_after(60):
        async with Client.connect(make_identity(Role.CLIENT), address) as client:
            assert await client.fsck() == REPORT
    assert handlers.answers[-1] == "FsckReply" and len(handlers.answers) >= 2
    assert set(handlers.answers[:-1]) == {"FsckPending"}


async def test_an_older_client_gets_the_report_in_one_answer_over_tls(fsck_node, make_identity, monkeypatch):
    """The older client (offers only the small-file messages) asks as it did: one Fsck, a
    FsckReply expected within its deadline (it does not know FsckPending)."""
    handlers, address = fsck_node
    _client_offering(monkeypatch, (wire.ALPN_SMALL_FILES,))
    with trio.fail_after(60):
        async with Client.connect(make_identity(Role.CLIENT), address) as client:
            assert client.conn.alpn_protocol == wire.ALPN_SMALL_FILES
            started_s = trio.current_time()
            assert await client._call(dm.Fsck(), dm.FsckReply, timeout_s=60) == REPORT
            assert trio.current_time() - started_s >= _FsckNode.CHECK_S  # held past the answer wait
    assert handlers.answers == ["FsckReply"]
