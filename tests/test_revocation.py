"""Revocation: the CA's CRL, a node's trust store, refusal at the handshake, and the cluster-wide
push (issue 12: a revoked client and a revoked node refused by all 5 nodes within 10 s of the CRL
reaching one of them, their open connections closed; the CRL survives a restart)."""

from __future__ import annotations

import datetime
import json
import sys

import pytest
import trio

from p2pfs import identity, net, revocation, testnet
from p2pfs.address import Address, parse_address
from p2pfs.cli.base import ExitCode
from p2pfs.client import Client
from p2pfs.net.trust import TrustStore
from p2pfs.wire import Role

from testnet_helpers import running_testnet, wait_for

FAST = net.NetConfig(handshake_timeout_s=5.0, stream_idle_timeout_s=5.0)
NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture
def authority(tmp_path):
    return identity.init_ca(tmp_path / "ca")


def new_identity(authority, tmp_path, name, role=Role.NODE):
    return identity.create_identity(tmp_path / name, authority, role)


def push_crl_file(ident, ca_dir) -> None:
    """Put the CA's CRL beside an identity, as a node that took it keeps it."""
    (ident.directory / revocation.CRL_FILE).write_bytes((ca_dir / revocation.CRL_FILE).read_bytes())


# --- the CRL and the trust store -----------------------------------------------------------


def test_revoking_raises_the_number_and_names_the_key(authority, tmp_path):
    a, b = new_identity(authority, tmp_path, "a"), new_identity(authority, tmp_path, "b", Role.CLIENT)
    first = revocation.revoke(authority.directory, authority.key, authority.cert, [a.cert], NOW)
    second = revocation.revoke(authority.directory, authority.key, authority.cert, [b.cert, a.cert], NOW)
    assert (first.number, second.number) == (1, 2)
    assert second.serials == {a.cert.serial_number, b.cert.serial_number}
    assert second.node_ids == {a.node_id, b.node_id}
    assert second.signer([authority.cert]) == authority.cert
    # Every certificate the CA signed is on record, so `ca revoke ID` finds its serial.
    assert {c.serial_number for c in revocation.issued_certificates(authority.directory)} >= second.serials


def test_a_node_takes_only_newer_crls_signed_by_a_ca_it_trusts(authority, tmp_path):
    node = TrustStore(new_identity(authority, tmp_path, "node"))
    victim = new_identity(authority, tmp_path, "victim", Role.CLIENT)
    old = revocation.revoke(authority.directory, authority.key, authority.cert, [], NOW)
    new = revocation.revoke(authority.directory, authority.key, authority.cert, [victim.cert], NOW)
    peer = identity.peer_identity_from_der(victim.cert.public_bytes(identity.serialization.Encoding.DER))
    assert node.refusal(peer) is None
    assert node.offer(new.der()) is not None
    assert node.refusal(peer) is not None and node.is_revoked(peer)
    assert node.offer(old.der()) is None  # a replayed older CRL un-revokes nothing
    assert node.newer_than(old.der()) == new.der()  # and is answered with the newer one
    assert node.is_revoked(peer)
    other = identity.init_ca(tmp_path / "other-ca")
    forged = revocation.revoke(other.directory, other.key, other.cert, [], NOW)
    with pytest.raises(revocation.RevocationError, match="not signed by a CA this node trusts"):
        node.offer(forged.der())
    # Taken CRLs are kept beside the identity: a restarted node reads them back.
    assert TrustStore(identity.load_identity(node.identity.directory)).is_revoked(peer)


async def test_a_revoked_peer_is_refused_at_the_handshake_and_its_connections_closed(
    authority, tmp_path, nursery
):
    node_ident = new_identity(authority, tmp_path, "node")
    client_ident = new_identity(authority, tmp_path, "client", Role.CLIENT)
    other_client = new_identity(authority, tmp_path, "other", Role.CLIENT)

    class Handlers:
        async def handle_request(self, request):
            return request.msg

        def handle_oneway(self, conn, msg):
            pass

    endpoint = net.Endpoint(node_ident, Address("127.0.0.1", 0), Handlers(), config=FAST)
    await nursery.start(endpoint.run)
    address = Address("127.0.0.1", endpoint.bound_port)
    async with net.client_connection(client_ident, address, config=FAST) as victim, \
            net.client_connection(other_client, address, config=FAST) as bystander:
        crl = revocation.revoke(authority.directory, authority.key, authority.cert, [client_ident.cert], NOW)
        assert endpoint.trust.offer(crl.der()) is not None
        closed = endpoint.close_where(endpoint.trust.is_revoked, "certificate revoked")
        assert [p.node_id for p in closed] == [client_ident.node_id]
        with trio.fail_after(10):
            while not victim.is_closed:
                await trio.sleep(0.01)
        assert not bystander.is_closed  # a healthy connection stays
    with pytest.raises(net.HandshakeError, match="refused: certificate .* revoked"):
        async with net.client_connection(client_ident, address, config=FAST):
            pass


# --- five real daemons ---------------------------------------------------------------------


@pytest.mark.integration
def test_a_revoked_client_and_node_are_refused_by_every_node_within_10_s(tmp_path):
    with running_testnet(tmp_path / "testnet", nodes=5) as running:
        ca_dir = running.directory / testnet.CA_DIR
        client_dir = tmp_path / "victim"
        victim = running.new_client(client_dir, "--role", "write")
        revoked_node = identity.load_identity(running.directory / "node5")
        others = ["node1", "node2", "node3", "node4"]
        addresses = {name: parse_address(running.address(name)) for name in running.names}

        crl_path = ca_dir / revocation.CRL_FILE

        async def push_and_wait(holders: list[tuple[identity.Identity, str]], must_refuse, drop_node: bool) -> float:
            """Open the revoked keys' connections, push the CRL to node1, and wait (10 s at most) until
            every connection is closed, every node in ``must_refuse`` refuses each key at the handshake,
            and (``drop_node``) node5 is gone from their member lists. Returns the seconds it took."""
            async with trio.open_nursery() as nursery:
                held = [await nursery.start(hold, ident, addresses[name]) for ident, name in holders]
                pushed = await trio.run_process(
                    [sys.executable, "-m", "p2pfs", "--node", running.address("node1"), "crl", "push",
                     str(crl_path), "--json"],
                    capture_stdout=True, capture_stderr=True, env=running.env(), check=False,
                )
                assert pushed.returncode == 0, pushed.stderr.decode()
                assert json.loads(pushed.stdout)["accepted"] is True
                reached_s = trio.current_time()
                with trio.fail_after(10):
                    for conn in held:
                        await conn.wait_closed()
                    for ident, name in must_refuse:
                        await refused(ident, addresses[name])
                    if drop_node:
                        for name in others:
                            await node5_dropped(addresses[name])
                nursery.cancel_scope.cancel()
                return trio.current_time() - reached_s

        async def hold(ident, address, *, task_status=trio.TASK_STATUS_IGNORED):
            """Keep a connection open until the node closes it; hand it out through task_status."""
            conn = await net.dial(ident, address, config=FAST)
            async with trio.open_nursery() as inner:
                await inner.start(conn.run)
                task_status.started(conn)

        async def refused(ident, address):
            while True:
                try:
                    conn = await net.dial(ident, address, config=FAST)
                except net.HandshakeError as exc:
                    assert "revoked" in str(exc)
                    return
                except net.ConnectError:
                    pass
                else:
                    await conn.aclose()
                await trio.sleep(0.1)

        async def node5_dropped(address):
            admin = identity.load_identity(running.directory / testnet.CLIENT_DIR)
            while True:
                async with Client.connect(admin, address) as c:
                    members = await c.members()
                if revoked_node.node_id not in {m.node_id for m in members}:
                    return
                await trio.sleep(0.2)

        # The client, revoked by id (CRL 1): all five nodes close its connections and refuse it.
        running.cli("ca", "revoke", victim.node_id[:16], "--ca", str(ca_dir))  # check=True: it must exit 0
        elapsed_s = trio.run(push_and_wait, [(victim, name) for name in running.names],
                             [(victim, name) for name in running.names], False)
        assert elapsed_s < 10.0
        # Node5, revoked by its certificate file (CRL 2): the other four close its connections,
        # refuse it and drop it from their member lists.
        running.cli("ca", "revoke", str(revoked_node.cert_path), "--ca", str(ca_dir))
        elapsed_s = trio.run(push_and_wait, [(revoked_node, name) for name in others],
                             [(revoked_node, name) for name in others], True)
        assert elapsed_s < 10.0
        for name in running.names:
            log = (running.directory / name / testnet.LOG_FILE).read_text(errors="replace")
            assert f"closed the connection of client {victim.node_id}: its certificate is revoked" in log, name

        # The CRL survives a restart: node2 comes back still refusing both.
        running.stop("node2")
        running.start("node2")
        wait_for(lambda: running.cli("status", node="node2", check=False).returncode == 0, timeout_s=60,
                 what="node2 back")
        result = running.cli("status", identity_dir=client_dir, node="node2", check=False)
        assert result.returncode == ExitCode.AUTH and "revoked" in result.stderr.decode(), result.stderr.decode()
        # A key without the admin role cannot push a CRL.
        reader = running.new_client(tmp_path / "reader").directory
        pushed = running.cli("crl", "push", str(ca_dir / revocation.CRL_FILE), identity_dir=reader, check=False)
        assert pushed.returncode == ExitCode.AUTH and "revocation needs the admin role" in pushed.stderr.decode()


async def test_a_client_holding_the_crl_refuses_a_revoked_node(authority, tmp_path, nursery):
    node_ident = new_identity(authority, tmp_path, "node")
    client_ident = new_identity(authority, tmp_path, "client", Role.CLIENT)

    class Handlers:
        async def handle_request(self, request):
            return request.msg

        def handle_oneway(self, conn, msg):
            pass

    endpoint = net.Endpoint(node_ident, Address("127.0.0.1", 0), Handlers(), config=FAST)
    await nursery.start(endpoint.run)
    address = Address("127.0.0.1", endpoint.bound_port)
    async with net.client_connection(client_ident, address, config=FAST):
        pass
    revocation.revoke(authority.directory, authority.key, authority.cert, [node_ident.cert], NOW)
    push_crl_file(client_ident, authority.directory)
    with pytest.raises(net.HandshakeError, match=f"certificate .* of node {node_ident.node_id[:12]} is revoked"):
        async with net.client_connection(client_ident, address, config=FAST):
            pass
