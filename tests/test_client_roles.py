"""Client roles: what a client key may do, signed into its certificate and judged by every node.

Unit tests of the grant and of the name entry that records the writing client, then
issue 12's attacks 3 (any client stops any node) and 5 (no authorisation, nobody
knows who wrote) against five real daemons.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from p2pfs import access, identity, testnet
from p2pfs.access import AccessDenied, ClientRole, Grant, GrantError, Operation
from p2pfs.cli.base import ExitCode
from p2pfs.storage import NameEntry, NameIndex
from p2pfs.storage.hlc import Timestamp
from p2pfs.wire import Role

from testnet_helpers import CLI_TIMEOUT_S, running_testnet

WRITER = "ab" * 32
CLIENT = "cd" * 32

# --- the grant -------------------------------------------------------------------------


@pytest.mark.parametrize("grant, operation, name, allowed", [
    (Grant(ClientRole.READ), Operation.GET, "x", True),
    (Grant(ClientRole.READ), Operation.STATUS, None, True),
    (Grant(ClientRole.READ), Operation.PUT, "x", False),
    (Grant(ClientRole.READ), Operation.REMOVE, "x", False),
    (Grant(ClientRole.READ), Operation.LEAVE, None, False),
    (Grant(ClientRole.WRITE), Operation.PUT, "anything", True),
    (Grant(ClientRole.WRITE), Operation.LEAVE, None, False),
    (Grant(ClientRole.WRITE), Operation.FSCK, None, False),
    (Grant(ClientRole.WRITE, ("a/",)), Operation.PUT, "a/x", True),
    (Grant(ClientRole.WRITE, ("a/",)), Operation.PUT, "b/x", False),
    (Grant(ClientRole.WRITE, ("a/",)), Operation.REMOVE, "b/x", False),
    (Grant(ClientRole.WRITE, ("a/",)), Operation.GET, "b/x", True),  # prefixes limit writes only
    (Grant(ClientRole.WRITE, ("a/", "c")), Operation.PUT, "cat", True),
    (Grant(ClientRole.ADMIN), Operation.LEAVE, None, True),
    (Grant(ClientRole.ADMIN), Operation.REVOCATION, None, True),
    (Grant(ClientRole.ADMIN, ("a/",)), Operation.PUT, "b/x", False),
])
def test_grant_decides_by_role_and_prefix(grant, operation, name, allowed):
    assert grant.allows(operation, name) is allowed
    if allowed:
        grant.check(operation, name)
    else:
        with pytest.raises(AccessDenied):
            grant.check(operation, name)


def test_a_refusal_says_what_is_missing():
    with pytest.raises(AccessDenied, match="leave needs the admin role; this client's is write"):
        Grant(ClientRole.WRITE).check(Operation.LEAVE)
    with pytest.raises(AccessDenied, match="outside this client's prefixes"):
        Grant(ClientRole.WRITE, ("a/",)).check(Operation.PUT, "b/x")


@pytest.mark.parametrize("grant", [Grant(ClientRole.READ), Grant(ClientRole.WRITE, ("a/", "ü/")),
                                   Grant(ClientRole.ADMIN)])
def test_grant_round_trips(grant):
    assert Grant.decode(grant.encode()) == grant


@pytest.mark.parametrize("data", [b"", b"[]", b'{"role":"root","prefixes":[]}', b'{"role":"read"}',
                                  b'{"role":"read","prefixes":["a/"]}', b'{"role":"write","prefixes":[""]}',
                                  b'{"role":"write","prefixes":"a/"}', b"\xff", b"x" * 50_000])
def test_bad_grants_are_refused(data):
    with pytest.raises(GrantError):
        Grant.decode(data)


def test_the_certificate_carries_the_grant(make_identity):
    grant = Grant(ClientRole.WRITE, ("a/",))
    ident = make_identity(Role.CLIENT, grant=grant)
    assert ident.grant == grant
    peer = identity.peer_identity_from_der(ident.cert.public_bytes(identity.serialization.Encoding.DER))
    assert peer.grant == grant and peer.serial_number == ident.cert.serial_number
    extension = ident.cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(access.GRANT_EXTENSION_OID))
    assert not extension.critical  # OpenSSL would refuse the certificate otherwise
    assert make_identity(Role.NODE).grant is None


def test_a_client_certificate_without_the_extension_keeps_the_old_rights(ca_dir):
    authority = identity.load_ca(ca_dir)
    key = identity.ed25519.Ed25519PrivateKey.generate()
    cert = authority.issue(key.public_key(), Role.CLIENT, common_name="before roles")
    assert identity.grant_of(cert) == access.GRANT_WITHOUT_EXTENSION
    assert access.GRANT_WITHOUT_EXTENSION.allows(Operation.LEAVE)


def test_client_init_signs_the_role_asked_for_and_reads_by_default(tmp_path):
    from click.testing import CliRunner

    from p2pfs.cli import cli

    def run(*args):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    ca = tmp_path / "ca"
    assert run("ca", "init", str(ca)).exit_code == 0
    assert run("client", "init", str(tmp_path / "r"), "--ca", str(ca)).exit_code == 0
    assert identity.load_identity(tmp_path / "r").grant == Grant(ClientRole.READ)
    result = run("client", "init", str(tmp_path / "w"), "--ca", str(ca), "--role", "write", "--prefix", "a/",
                 "--prefix", "b/")
    assert result.exit_code == 0 and "created write (a/, b/) client" in result.output
    assert identity.load_identity(tmp_path / "w").grant == Grant(ClientRole.WRITE, ("a/", "b/"))
    assert "may write (a/, b/)" in run("whoami", str(tmp_path / "w")).output
    refused = run("client", "init", str(tmp_path / "x"), "--ca", str(ca), "--prefix", "a/")
    assert refused.exit_code == ExitCode.BAD_INPUT and "a read grant has none" in refused.output
    assert not (tmp_path / "x").exists()


# --- who wrote: the name entry -----------------------------------------------------------


def test_an_entry_without_a_client_keeps_its_old_encoding():
    entry = NameEntry("n", Timestamp(5, 1), WRITER, None)
    import msgpack

    assert msgpack.unpackb(entry.encode()) == [1, "n", 5, 1, WRITER, None]
    assert NameEntry.decode(entry.encode()) == entry


def test_an_entry_records_its_client():
    entry = NameEntry("n", Timestamp(5, 1), WRITER, None, CLIENT)
    assert NameEntry.decode(entry.encode()) == entry
    with pytest.raises(ValueError):
        NameEntry("n", Timestamp(5, 1), WRITER, None, "not hex")


def test_the_name_index_keeps_the_client_and_migrates_old_rows(tmp_path):
    path = tmp_path / "names.sqlite"
    conn = sqlite3.connect(path)  # a schema 1 index, as written before client ids
    conn.execute("CREATE TABLE names (name BLOB PRIMARY KEY, wall_ms INTEGER NOT NULL, "
                 "logical INTEGER NOT NULL, writer TEXT NOT NULL, manifest BLOB)")
    conn.execute("INSERT INTO names VALUES (?, 1, 0, ?, NULL)", (b"old", WRITER))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with NameIndex(path) as index:
        assert index.get("old") == NameEntry("old", Timestamp(1, 0), WRITER, None, "")
        index.apply(NameEntry("new", Timestamp(2, 0), WRITER, None, CLIENT))
    with NameIndex(path) as index:
        assert index.get("new").client == CLIENT
        assert [e.client for e in index.list(include_tombstones=True)] == [CLIENT, ""]  # "new" < "old"


# --- attacks 3 and 5 against real daemons ------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("roles") / "testnet", nodes=5) as running:
        yield running


def make_client(net, directory: Path, *options: str) -> str:
    """A client identity from the network's CA (through the CLI); returns its id."""
    result = net.cli("client", "init", str(directory), "--ca", str(net.directory / testnet.CA_DIR),
                     *options, "--json")
    return json.loads(result.stdout)["node_id"]


def as_client(net, directory: Path, *args: str, node: str = "node1", stdin: bytes | None = None):
    command = [sys.executable, "-m", "p2pfs", "--identity", str(directory), "--node", net.address(node), *args]
    return subprocess.run(command, input=stdin, capture_output=True, env=net.env(), timeout=CLI_TIMEOUT_S)


def daemon_log(net, name: str) -> str:
    return (net.directory / name / testnet.LOG_FILE).read_text(errors="replace")


@pytest.mark.integration
def test_attack_3_a_non_admin_client_cannot_stop_a_node(net, tmp_path):
    reader_id = make_client(net, tmp_path / "reader")
    writer_id = make_client(net, tmp_path / "writer", "--role", "write")
    for name in net.names:
        for directory, client_id in ((tmp_path / "reader", reader_id), (tmp_path / "writer", writer_id)):
            result = as_client(net, directory, "leave", node=name)
            assert result.returncode == ExitCode.AUTH, result.stderr.decode()
            assert "leave needs the admin role" in result.stderr.decode()
            refusals = [line for line in daemon_log(net, name).splitlines()
                        if f"refused leave from client {client_id}" in line]
            assert refusals and all(" WARNING " in line for line in refusals)
    # fsck is an admin's too; reads are everyone's.
    result = as_client(net, tmp_path / "writer", "fsck", node="node2")
    assert result.returncode == ExitCode.AUTH and "fsck needs the admin role" in result.stderr.decode()
    assert as_client(net, tmp_path / "reader", "members", node="node3").returncode == 0
    # Every node is still running and serving: a status through each answers.
    assert sorted(net.live()) == sorted(net.names)
    for name in net.names:
        assert net.json("status", node=name)["members_alive"] == len(net.names)


@pytest.mark.integration
def test_attack_5_roles_and_prefixes_hold_and_stat_says_who_wrote(net, tmp_path):
    reader, writer, admin = tmp_path / "reader", tmp_path / "writer-a", net.directory / testnet.CLIENT_DIR
    make_client(net, reader)
    writer_id = make_client(net, writer, "--role", "write", "--prefix", "a/")
    admin_id = identity.load_identity(admin).node_id

    # The admin (the testnet's own client) writes b/x; the others then try to change it.
    assert as_client(net, admin, "put", "-", "--name", "b/x", stdin=b"admin's bytes").returncode == 0
    for directory, args, node in (
        (reader, ("put", "-", "--name", "a/r"), "node2"),
        (reader, ("rm", "b/x"), "node3"),
        (writer, ("put", "-", "--name", "b/x"), "node4"),
        (writer, ("rm", "b/x"), "node5"),
    ):
        result = as_client(net, directory, *args, node=node, stdin=b"attacker's bytes")
        assert result.returncode == ExitCode.AUTH, (args, result.stderr.decode())
    assert as_client(net, reader, "get", "b/x", "-o", "-", node="node2").stdout == b"admin's bytes"

    # Within its prefix the write client writes; stat, text and JSON, says which client did.
    assert as_client(net, writer, "put", "-", "--name", "a/x", node="node3", stdin=b"mine").returncode == 0
    facts = json.loads(as_client(net, reader, "stat", "a/x", "--json", node="node4").stdout)
    assert facts["version"]["client"] == writer_id
    assert json.loads(as_client(net, reader, "stat", "b/x", "--json").stdout)["version"]["client"] == admin_id
    text = as_client(net, reader, "stat", "a/x", node="node5").stdout.decode()
    assert f"client:   {writer_id}" in text
    # The write is logged with the client's id by the node that coordinated it.
    assert f"put 'a/x': 4 bytes inline, for client {writer_id}" in daemon_log(net, "node3")
    assert "refused put from client" in daemon_log(net, "node4")


@pytest.mark.integration
def test_resumable_puts_and_gets_are_judged_like_the_others(net, tmp_path):
    """A put of a file asks which chunks are held, then sends the rest: both steps obey the grant."""
    reader, writer = tmp_path / "reader", tmp_path / "writer-c"
    make_client(net, reader)
    writer_id = make_client(net, writer, "--role", "write", "--prefix", "c/")
    source = tmp_path / "file.bin"
    source.write_bytes(b"resumable bytes" * 1000)

    for directory, name in ((reader, "c/by-reader"), (writer, "d/outside")):
        result = as_client(net, directory, "put", str(source), "--name", name, node="node2")
        assert result.returncode == ExitCode.AUTH, (name, result.stderr.decode())
        assert as_client(net, reader, "stat", name, node="node3").returncode == ExitCode.NOT_FOUND

    result = as_client(net, writer, "put", str(source), "--name", "c/mine", "--json", node="node4")
    assert result.returncode == 0, result.stderr.decode()
    facts = json.loads(as_client(net, reader, "stat", "c/mine", "--json", node="node5").stdout)
    assert facts["version"]["client"] == writer_id
    assert f"'c/mine': {source.stat().st_size} bytes" in daemon_log(net, "node4")
    assert f"for client {writer_id}" in daemon_log(net, "node4")
    # A read key may fetch it to a file (the resumable get).
    target = tmp_path / "copy.bin"
    assert as_client(net, reader, "get", "c/mine", "-o", str(target), node="node1").returncode == 0
    assert target.read_bytes() == source.read_bytes()
