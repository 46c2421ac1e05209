"""fsck across requests: a check longer than a request's deadline (issue 16, a million names).

A request starts the check as a job on the node (or joins the one under way) and waits
for it at most ``FSCK_ANSWER_WAIT_S``; until the job ends it answers ``FsckPending``
with the counts so far, and the client asks again. On the mock clock every store call
costs ``STORE_CALL_S``, so the check of a small cluster lasts many answer waits.
"""

from __future__ import annotations

import random
import types

import pytest
import trio
import trio.testing

from p2pfs import errors
from p2pfs.client.node import Client
from p2pfs.replication import fsck
from p2pfs.replication import messages as dm
from test_data_scale import NODES, cluster, costly_offload, files

ANSWER_WAIT_S = 0.25


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
                reply = await slow_cluster.on_fsck(None)
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
            assert isinstance(await slow_cluster.on_fsck(None), dm.FsckPending)
            job = slow_cluster._job
            with trio.fail_after(10 * ANSWER_WAIT_S):
                await job.done.wait()  # stopped well before the check would end
            assert job.reply is None and isinstance(job.error, errors.Unavailable)
            await trio.sleep(fsck.FSCK_REPORT_KEPT_S + 1)
            assert isinstance(await slow_cluster.on_fsck(None), dm.FsckPending)
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
            while not isinstance(first := await slow_cluster.on_fsck(None), dm.FsckReply):
                pass
            first_job = slow_cluster._job
            # A new check for the next request: the report was given (a second `p2pfs fsck`
            # after a repair must not see the report from before it).
            assert isinstance(await slow_cluster.on_fsck(None), dm.FsckPending)
            second_job = slow_cluster._job
            assert second_job is not first_job
            with trio.fail_after(100):
                await second_job.done.wait()  # ends while no request waits
            assert await slow_cluster.on_fsck(None) == second_job.reply == first  # kept for its asker
            assert slow_cluster._job is second_job
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
