"""`ls` that never lies, through the real CLI on a real 5-node network: every name while
enough replicas of every range answer, a plain "names may be missing" (and exit 4) when
not, and paging with --limit / --after."""

from __future__ import annotations

import io
import json
import re

import pytest
import trio

from p2pfs import identity, testnet
from p2pfs.cli import ExitCode
from p2pfs.client import Cluster
from testnet_helpers import running_testnet

pytestmark = pytest.mark.integration

NAMES = [f"ls/{i:03d}" for i in range(60)]
# Every put acknowledged by all three replicas (w 3), so one answering replica of a range
# lists its names in full: two nodes down of five leave every range one (r 1 keeps R + W > RF).
OVERRIDES = {"replication": {"w": 3, "r": 1}}
TOKEN = re.compile(r"--after (\S+)")


def put_all(net) -> None:
    ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)
    cluster = Cluster(ident, [net.status()[n].address for n in net.names])

    async def main() -> None:
        for name in NAMES:
            await cluster.put(io.BytesIO(name.encode()), name, len(name))

    trio.run(main)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("ls") / "testnet", nodes=5, overrides=OVERRIDES) as net:
        put_all(net)
        yield net


def listed(result) -> list[str]:
    return [line.split()[-1] for line in result.stdout.decode().splitlines()[1:]]


def test_pages_with_limit_and_after_walk_every_name_once(net):
    seen: list[str] = []
    after: list[str] = []
    for _ in range(len(NAMES)):
        result = net.cli("ls", "ls/", "--limit", "7", *after)
        seen += listed(result)
        token = TOKEN.search(result.stderr.decode())
        if token is None:
            break
        assert len(listed(result)) == 7
        after = ["--after", token[1]]
    assert seen == NAMES

    page = net.json("ls", "ls/", "--limit", "25")
    assert [f["name"] for f in page["files"]] == NAMES[:25]
    rest = net.json("ls", "ls/", "--after", page["next"])
    assert [f["name"] for f in rest["files"]] == NAMES[25:]
    assert rest["next"] is None


def test_two_of_five_down_lists_every_name_and_three_down_says_names_may_be_missing(net):
    net.kill("node4")
    net.kill("node5")
    whole = net.json("ls")
    assert [f["name"] for f in whole["files"]] == NAMES
    assert whole["complete"] is True and whole["short_ring_fraction"] == 0
    text = net.cli("ls")
    assert listed(text) == NAMES
    assert b"missing" not in text.stderr

    net.kill("node3")
    down = {net.node_id(n) for n in ("node3", "node4", "node5")}
    result = net.cli("ls", "--json", check=False)
    assert result.returncode == ExitCode.UNAVAILABLE, result.stderr.decode()
    answer = json.loads(result.stdout)
    assert answer["complete"] is False
    assert answer["replicas_needed"] == 1
    # Three of five down: the ranges held only by them, 1 in 10 on average, answered by none.
    assert 0 < answer["short_ring_fraction"] < 0.5
    assert {n["node_id"] for n in answer["unanswered"]} == down
    assert set(f["name"] for f in answer["files"]) <= set(NAMES)

    result = net.cli("ls", check=False)
    assert result.returncode == ExitCode.UNAVAILABLE
    warning = result.stderr.decode()
    assert "names may be missing" in warning and "of the ring" in warning
    for node_id in down:
        assert node_id[:12] in warning
