"""The small-file messages on the wire, how the two ends agree to use them, and old shapes kept.

A client sends ``PutSmallFile`` and ``GetSmallFile`` only to a node that offered
``wire.ALPN_SMALL_FILES`` in the TLS handshake (an older node closes a connection on a
type it does not know), and a node sends ``SmallFile`` only in answer to ``GetSmallFile``:
so an older client, which sends ``PutFile`` and ``GetFile``, is answered as before, and an
older node, which offers no ALPN, is asked as before.
"""

from __future__ import annotations

import io
import os
import ssl
from pathlib import Path

import msgpack
import pytest
import trio

from p2pfs import identity, net, testnet, wire
from p2pfs.client import Client
from p2pfs.replication import client_messages as cm
from p2pfs.replication import messages as dm
from p2pfs.wire import Role

from testnet_helpers import CLI_TIMEOUT_S, running_testnet

HASH = bytes(32)


def _round_trip(msg: wire.Message) -> wire.Message:
    return wire.decode_message(type(msg).TYPE, wire.encode_message(msg))


def test_the_messages_round_trip_and_check_their_caps() -> None:
    content = os.urandom(cm.SMALL_FILE_BYTES_MAX)
    for msg in (cm.PutSmallFile("a", len(content), content), cm.GetSmallFile("a"),
                cm.SmallFile("a", len(content), HASH, content), cm.SmallFile("empty", 0, HASH, b"")):
        assert _round_trip(msg) == msg
    with pytest.raises(wire.FieldError):
        cm.PutSmallFile("a", 0, content + b"x")
    with pytest.raises(wire.FieldError):
        cm.SmallFile("a", 10, HASH, b"short")
    too_long = ["a", cm.SMALL_FILE_BYTES_MAX + 1, HASH, bytes(cm.SMALL_FILE_BYTES_MAX + 1)]
    with pytest.raises(wire.WireError):  # from a peer: its fault, the connection's end
        wire.decode_message(cm.SmallFile.TYPE, msgpack.packb(too_long, use_bin_type=True))


def test_only_a_client_may_ask_with_them() -> None:
    assert cm.PutSmallFile.SENDERS == cm.GetSmallFile.SENDERS == frozenset({Role.CLIENT})
    assert not cm.PutSmallFile.TAKES_BODY and not cm.GetSmallFile.TAKES_BODY


def test_the_old_messages_keep_their_codes_and_shapes() -> None:
    """What an older client sends and reads, byte for byte as before (type codes, field lists)."""
    assert (dm.PutFile.TYPE, dm.PutFileReply.TYPE, dm.GetFile.TYPE, dm.GetFileReply.TYPE) == (60, 61, 62, 63)
    assert wire.encode_message(dm.GetFile("a")) == msgpack.packb(["a"], use_bin_type=True)
    assert wire.encode_message(dm.PutFile("a", 5)) == msgpack.packb(["a", 5], use_bin_type=True)
    assert wire.encode_message(dm.GetFileReply("a", 5, HASH)) == msgpack.packb(["a", 5, HASH], use_bin_type=True)
    assert dm.PutFile.TAKES_BODY


# --- the TLS handshake's agreement (ALPN) -------------------------------------------------------


def _handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    """A TLS handshake over memory; what each end agreed on (client's, server's)."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_side=False)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):  # a TLS 1.3 handshake takes two or three flights
        for end, tls in (("client", client), ("server", server)):
            if done[end]:
                continue
            try:
                tls.do_handshake()
                done[end] = True
            except ssl.SSLWantReadError:
                pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if all(done.values()):
            return client.selected_alpn_protocol(), server.selected_alpn_protocol()
    raise AssertionError("the handshake did not finish")


def _offering(ident: identity.Identity, side: int, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A context as an end of an older release makes it: offering ``alpn`` (by default nothing,
    as before the small-file messages)."""
    ctx = ssl.SSLContext(side)
    if side == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ident.ca_path))
    ctx.load_cert_chain(certfile=str(ident.cert_path), keyfile=str(ident.key_path))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def test_two_new_ends_agree_on_the_small_file_messages(make_identity) -> None:
    node, client = make_identity(Role.NODE), make_identity(Role.CLIENT)
    # The newest name agreed speaks the small-file messages too (wire.ALPN_PROTOCOLS).
    assert _handshake(client.client_context(), node.server_context()) == (wire.ALPN_FSCK_PENDING,) * 2
    assert wire.alpn_speaks(wire.ALPN_FSCK_PENDING, wire.ALPN_SMALL_FILES)


def test_a_new_client_and_an_old_node_agree_on_nothing_and_still_connect(make_identity) -> None:
    node, client = make_identity(Role.NODE), make_identity(Role.CLIENT)
    assert _handshake(client.client_context(), _offering(node, ssl.PROTOCOL_TLS_SERVER)) == (None, None)


def test_an_old_client_and_a_new_node_agree_on_nothing_and_still_connect(make_identity) -> None:
    node, client = make_identity(Role.NODE), make_identity(Role.CLIENT)
    assert _handshake(_offering(client, ssl.PROTOCOL_TLS_CLIENT), node.server_context()) == (None, None)


# --- on real daemons ------------------------------------------------------------------------------


def test_new_and_old_clients_read_each_others_files_on_real_daemons(tmp_path: Path, monkeypatch) -> None:
    """A client that speaks the small-file messages, and one that does not (an older client, as
    the node sees it: it asks with PutFile and GetFile), put and read each other's files, inline
    and in chunks, byte-exact; each was answered in the shape it asked for."""
    sent: list[tuple[str, str]] = []  # (request, answer) type names, as the client saw them
    open_request = net.Connection.open_request

    def spying(self, msg, **kwargs):
        context = open_request(self, msg, **kwargs)

        class Spy:
            async def __aenter__(self_):
                response = await context.__aenter__()
                if isinstance(msg, (dm.PutFile, dm.GetFile, cm.PutSmallFile, cm.GetSmallFile)):
                    sent.append((type(msg).__name__, type(response.msg).__name__))
                return response

            async def __aexit__(self_, *exc):
                return await context.__aexit__(*exc)

        return Spy()

    monkeypatch.setattr(net.Connection, "open_request", spying)
    files = {"new/small": os.urandom(4096), "new/chunked": os.urandom(40 * 1024),
             "old/small": os.urandom(4096), "old/chunked": os.urandom(40 * 1024), "new/empty": b""}
    with running_testnet(tmp_path / "net", nodes=3) as net_:
        ident = identity.load_identity(net_.directory / testnet.CLIENT_DIR)
        address = net_.status()["node1"].address

        async def run(speaks: bool, what) -> None:
            monkeypatch.setattr(Client, "speaks_small_files", property(lambda self: speaks))
            with trio.fail_after(CLI_TIMEOUT_S):
                async with Client.connect(ident, address) as client:
                    assert wire.alpn_speaks(client.conn.alpn_protocol, wire.ALPN_SMALL_FILES)  # the daemon offers it
                    await what(client)

        def put(prefix: str):
            async def put_all(client: Client) -> None:
                for name, data in files.items():
                    if name.startswith(prefix):
                        await client.put(io.BytesIO(data), name, len(data))
            return put_all

        got: dict[tuple[bool, str], bytes] = {}

        async def get_all(client: Client) -> None:
            for name in files:
                sink = io.BytesIO()
                await client.get(name, sink)
                got[client.speaks_small_files, name] = sink.getvalue()

        trio.run(run, True, put("new/"))
        trio.run(run, False, put("old/"))
        sent_by_puts = list(sent)
        sent.clear()
        trio.run(run, True, get_all)
        trio.run(run, False, get_all)
    for (speaks, name), data in got.items():
        assert data == files[name], (speaks, name)
    assert len(got) == 2 * len(files)
    assert sent_by_puts == [("PutSmallFile", "PutFileReply")] * 3 + [("PutFile", "PutFileReply")] * 2
    assert sent == [("GetSmallFile", "SmallFile"), ("GetSmallFile", "GetFileReply"),  # new/small, new/chunked
                    ("GetSmallFile", "SmallFile"), ("GetSmallFile", "GetFileReply"),  # old/small, old/chunked
                    ("GetSmallFile", "SmallFile")] + [("GetFile", "GetFileReply")] * len(files)
