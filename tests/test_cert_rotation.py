"""Expiry, renewal and reload: a certificate's lifetime is enforced on every connection (no TLS
resumption), a renewed certificate keeps the key and what the CA signed, a running node takes up a
renewed certificate on SIGHUP or `p2pfs reload` without dropping connections, and warns ahead of
expiry (issue 12, "Rotation and expiry")."""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import subprocess
import sys

import pytest
import trio

from p2pfs import identity, net, testnet
from p2pfs.access import ClientRole, Grant
from p2pfs.address import Address, parse_address
from p2pfs.client import Client
from p2pfs.net.handshake import handshake
from p2pfs.net.tls import TLSStream
from p2pfs.net.trust import TrustStore
from p2pfs.wire import Role

from testnet_helpers import CLI_TIMEOUT_S, running_testnet, wait_for

FAST = net.NetConfig(handshake_timeout_s=5.0, stream_idle_timeout_s=5.0)
UTC = datetime.timezone.utc
# Lifetime of the short-lived certificates below: long enough for the first connection on a
# loaded machine (it must still be valid then), short enough to wait out.
CERT_LIFETIME_S = 8


def test_renewal_keeps_the_key_and_what_the_ca_signed(tmp_path):
    authority = identity.init_ca(tmp_path / "ca")
    grant = Grant(ClientRole.WRITE, ("a/",))
    old = identity.create_identity(tmp_path / "c", authority, Role.CLIENT, grant=grant)
    new = identity.renew_identity(tmp_path / "c", authority, days=30)
    assert new.node_id == old.node_id and new.grant == grant and new.role is Role.CLIENT
    assert new.cert.serial_number != old.cert.serial_number
    left = new.cert.not_valid_after_utc - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=29) < left <= datetime.timedelta(days=30)
    assert new.ca_certs == (authority.cert,)
    # Renewed by a new CA (a rotation): ca.pem then trusts both, and the identity names its signer.
    rotated = identity.init_ca(tmp_path / "ca2")
    renewed = identity.renew_identity(tmp_path / "c", rotated)
    assert renewed.ca_certs == (authority.cert, rotated.cert) and renewed.ca_cert == rotated.cert
    assert renewed.trusted_cluster_ids == {authority.cluster_id, rotated.cluster_id}


def test_the_default_lifetime_is_a_year(tmp_path):
    authority = identity.init_ca(tmp_path / "ca")
    ident = identity.create_identity(tmp_path / "n", authority, Role.NODE)
    left = ident.cert.not_valid_after_utc - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=364) < left <= datetime.timedelta(days=365)


async def test_an_expired_client_cannot_resume_a_session_from_before(tmp_path, nursery):
    """The attack of issue 12: an expired client certificate got in by resuming a TLS 1.3 session.
    Now the node issues no session tickets, so there is nothing to resume."""
    authority = identity.init_ca(tmp_path / "ca")
    node = identity.create_identity(tmp_path / "node", authority, Role.NODE)
    expires = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(seconds=CERT_LIFETIME_S)
    client = identity.create_identity(tmp_path / "client", authority, Role.CLIENT, not_valid_after=expires)

    class Handlers:
        async def handle_request(self, request):
            return request.msg

        def handle_oneway(self, conn, msg):
            pass

    endpoint = net.Endpoint(node, Address("127.0.0.1", 0), Handlers(), config=FAST)
    await nursery.start(endpoint.run)
    context = TrustStore(client).client_context

    async def connect(session=None):
        tcp = await trio.open_tcp_stream("127.0.0.1", endpoint.bound_port)
        stream = TLSStream(tcp, context, server_side=False)
        if session is not None:  # what a resuming client does (our own never does)
            stream._tls = context.wrap_bio(stream._incoming, stream._outgoing, server_side=False,
                                           server_hostname=None, session=session)
        with trio.fail_after(10):
            await handshake(stream, client, None)
        return stream

    first = await connect()
    session = first._tls.session
    await first.aclose()
    assert session is None or not session.has_ticket  # nothing to resume with
    with trio.fail_after(CERT_LIFETIME_S + 10):  # wait until the certificate has expired (wall clock)
        while datetime.datetime.now(UTC) <= expires:
            await trio.sleep(0.1)
    with pytest.raises(net.HandshakeError, match="CERTIFICATE_EXPIRED|certificate expired"):
        await connect(session)


# --- real daemons --------------------------------------------------------------------------


def status(running, node):
    return running.json("status", node=node)


@pytest.mark.integration
def test_a_running_node_takes_up_a_renewed_certificate_without_dropping_connections(tmp_path):
    with running_testnet(tmp_path / "testnet", nodes=3) as running:
        ca_dir = running.directory / testnet.CA_DIR
        admin = identity.load_identity(running.directory / testnet.CLIENT_DIR)
        before = status(running, "node1")
        assert before["crl_number"] == 0
        assert before["cert_not_valid_after_ms"] > 0 and before["ca_not_valid_after_ms"] > 0
        pids = {name: p.pid for name, p in running.status().items()}
        address1 = parse_address(running.address("node1"))

        async def scenario():
            async with Client.connect(admin, address1) as held:
                await held.status()
                # Renew node1 for 10 days (inside the 30-day warning), then SIGHUP it.
                renewed = subprocess.run(
                    [sys.executable, "-m", "p2pfs", "node", "renew", str(running.directory / "node1"),
                     "--ca", str(ca_dir), "--days", "10", "--json"],
                    capture_output=True, timeout=CLI_TIMEOUT_S, check=True)
                valid_to_ms = json.loads(renewed.stdout)["not_valid_after_ms"]
                os.kill(pids["node1"], signal.SIGHUP)
                with trio.fail_after(30):
                    while (await held.status()).cert_not_valid_after_ms != valid_to_ms:
                        await trio.sleep(0.2)
                # The connection made before the reload still serves.
                assert (await held.members())
                return valid_to_ms

        valid_to_ms = trio.run(scenario)
        log = (running.directory / "node1" / testnet.LOG_FILE).read_text(errors="replace")
        assert "identity reloaded" in log and "certificate (serial" in log
        wait_for(lambda: "this node's certificate" in (running.directory / "node1" / testnet.LOG_FILE).read_text(
            errors="replace"), timeout_s=30, what="the expiry warning")
        # New connections present the renewed certificate; the other nodes still talk to node1.
        assert all(status(running, n)["members_alive"] == 3 for n in running.names)
        # And the admin command does the same as SIGHUP, reporting what changed.
        subprocess.run([sys.executable, "-m", "p2pfs", "node", "renew", str(running.directory / "node2"),
                        "--ca", str(ca_dir), "--json"], capture_output=True, timeout=CLI_TIMEOUT_S, check=True)
        reloaded = running.json("reload", node="node2")
        assert len(reloaded["changes"]) == 1 and reloaded["changes"][0].startswith("certificate")
        assert status(running, "node1")["cert_not_valid_after_ms"] == valid_to_ms
        assert {name: p.pid for name, p in running.status().items()} == pids  # nothing restarted
        # A key without the admin role cannot make a node reload.
        reader = running.new_client(tmp_path / "reader").directory
        refused = running.cli("reload", identity_dir=reader, node="node2", check=False)
        assert refused.returncode == 5 and "reload needs the admin role" in refused.stderr.decode()


async def test_a_connection_does_not_outlive_its_certificate(tmp_path, nursery):
    """TLS checks a certificate once, at the handshake; the node's expiry check closes what is left."""
    from p2pfs.clock import SystemClock
    from p2pfs.node.trust import TrustService

    authority = identity.init_ca(tmp_path / "ca")
    node = identity.create_identity(tmp_path / "node", authority, Role.NODE)
    expires = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(seconds=CERT_LIFETIME_S)
    short = identity.create_identity(tmp_path / "short", authority, Role.CLIENT, not_valid_after=expires)
    lasting = identity.create_identity(tmp_path / "lasting", authority, Role.CLIENT)

    class Handlers:
        async def handle_request(self, request):
            return request.msg

        def handle_oneway(self, conn, msg):
            pass

    class NoMembers:
        def members(self):
            return []

        def exclude(self, node_ids):
            pass

    endpoint = net.Endpoint(node, Address("127.0.0.1", 0), Handlers(), config=FAST)
    await nursery.start(endpoint.run)
    service = TrustService(endpoint, NoMembers(), SystemClock())
    address = Address("127.0.0.1", endpoint.bound_port)
    async with net.client_connection(short, address, config=FAST) as expiring, \
            net.client_connection(lasting, address, config=FAST) as healthy:
        service.check_expiry()
        assert not expiring.is_closed
        with trio.fail_after(CERT_LIFETIME_S + 10):  # wait until the certificate has expired (wall clock)
            while datetime.datetime.now(UTC) <= expires:
                await trio.sleep(0.1)
        service.check_expiry()
        with trio.fail_after(10):
            await expiring.wait_closed()
        assert not healthy.is_closed


@pytest.mark.integration
def test_the_ca_rotates_under_a_steady_workload_without_a_failure_or_a_restart(tmp_path):
    """docs/SECURITY.md's procedure, step by step, on five daemons while a client puts and gets."""
    from p2pfs.client import Cluster

    with running_testnet(tmp_path / "testnet", nodes=5) as running:
        new_ca = tmp_path / "ca2"
        admin_dir = running.directory / testnet.CLIENT_DIR
        dirs = [running.directory / name for name in running.names] + [admin_dir]
        addresses = [parse_address(running.address(name)) for name in running.names]
        pids = {name: p.pid for name, p in running.status().items()}
        outsider = running.new_client(tmp_path / "outsider").directory  # of the old CA, never renewed
        done, failures = [], []

        async def workload(stop: trio.Event) -> None:
            index = 0
            while not stop.is_set():
                # As the CLI does: the identity is read afresh for every operation.
                cluster = Cluster(identity.load_identity(admin_dir), addresses)
                data = os.urandom(2000 + index)
                name = f"rotation/{index}"
                try:
                    await cluster.put(io.BytesIO(data), name, len(data))
                    sink = io.BytesIO()
                    await cluster.get(name, sink)
                    assert sink.getvalue() == data
                    done.append(name)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                    failures.append(f"{name}: {exc!r}")
                index += 1

        async def run(*args: str) -> None:
            result = await trio.run_process([sys.executable, "-m", "p2pfs", *args], capture_stdout=True,
                                            capture_stderr=True, env=running.env(), check=False)
            assert result.returncode == 0, f"{args}: {result.stderr.decode()}"

        async def reload_all() -> None:
            for name in running.names:
                await run("--node", running.address(name), "reload")

        async def rotate() -> None:
            await run("ca", "init", str(new_ca))
            # 2. Trust both CAs everywhere.
            for directory in dirs:
                with open(directory / identity.CA_CERT_FILE, "ab") as f:
                    f.write((new_ca / identity.CA_CERT_FILE).read_bytes())
            await reload_all()
            # 3. Every identity re-signed by the new CA, same keys.
            for name in running.names:
                await run("node", "renew", str(running.directory / name), "--ca", str(new_ca))
            await reload_all()
            await run("client", "renew", str(admin_dir), "--ca", str(new_ca))
            # 4. The old CA withdrawn.
            for directory in dirs:
                (directory / identity.CA_CERT_FILE).write_bytes((new_ca / identity.CA_CERT_FILE).read_bytes())
            await reload_all()

        async def scenario() -> None:
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(workload, stop)
                with trio.fail_after(60):
                    while len(done) < 3:  # the workload is under way before the rotation starts
                        await trio.sleep(0.1)
                with trio.fail_after(300):
                    await rotate()
                    settled = len(done) + 3
                    while len(done) < settled and not failures:  # and it goes on after
                        await trio.sleep(0.1)
                stop.set()

        trio.run(scenario)
        assert failures == []
        assert len(done) >= 6
        assert {name: p.pid for name, p in running.status().items()} == pids  # no daemon restarted
        new_cluster_id = identity.load_ca(new_ca).cluster_id
        for directory in dirs:
            assert identity.load_identity(directory).trusted_cluster_ids == {new_cluster_id}
        for name in running.names:
            facts = running.json("status", node=name)
            assert facts["members_alive"] == len(running.names)
        refused = running.cli("status", identity_dir=outsider, check=False)
        assert refused.returncode == 5, refused.stderr.decode()
