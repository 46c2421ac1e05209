"""One-request operations over a blocking ``ssl`` socket, without trio: ls, stat, members, status, rm.

Why: a command like `p2pfs ls` sends one request and reads one answer, yet
loading trio and the trio transport cost it about a third of its start-up
(docs/BENCHMARKS.md). This driver moves the same frames through the same
sans-IO pieces, over a plain socket with a timeout per step:

- TLS and the hello: ``net.hello`` (the checks of ``net.handshake``: the
  node's certificate, its role, cluster and protocol version, a revoked node
  refused with the CRL beside the identity, via ``net.trust``), and failures
  classified alike (a certificate refused is an ``AuthError``; a frozen node,
  or another service on the port, is unavailable);
- frames and streams: ``wire.FrameDecoder`` and ``net.mux.Mux``;
- deadlines: ``NetConfig``'s connect and handshake timeouts, then the same
  per-request deadlines as the trio client (``deadlines.py``);
- failover: ``attempts.Attempts`` (the same nodes, order, window, retry rules
  and final error naming every node tried) and the remembered member list
  (``members.py``), refreshed the same way;
- errors: ``faults.library_errors``, so a failure reads the same.

Transfers with bodies (put, get) stay on the trio client, where flow control
and concurrent streams matter. Each call here opens one connection, sends one
request, and closes it; nothing runs in the background.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from p2pfs import errors, wire
from p2pfs.address import Address
from p2pfs.client.attempts import Attempts, nodes_to_try
from p2pfs.client.deadlines import CLUSTER_REQUEST_TIMEOUT_S, REQUEST_TIMEOUT_S
from p2pfs.client.faults import check_client_identity, library_errors
from p2pfs.client.listing import LS_PAGE_FILES_MAX, Pager, check_page_files
from p2pfs.client.members import RememberedMembers, load_members, refresh_due, remember
from p2pfs.client.naming import Name, cluster_name
from p2pfs.client.settings import Nodes, identity_directory, node_addresses
from p2pfs.identity import Identity, PeerIdentity, load_identity
from p2pfs.net import mux as m
from p2pfs.net.config import HELLO_FRAME_BYTES_MAX, NetConfig
from p2pfs.net.errors import ConnectError, ConnectionClosed, HandshakeError, ProtocolViolation, RequestTimeout
from p2pfs.net.hello import (
    check_dialled, check_hello, connect_failed, connect_timed_out, handshake_failure, handshake_timed_out,
    hello_frame, peer_of, refusal_frame,
)
from p2pfs.net.trust import TrustStore
from p2pfs.node import messages as nm
from p2pfs.replication import client_messages as cm

# Bytes asked of the socket per read: a whole ls page (1,000 names) in a few reads.
RECEIVE_BYTES = 256 * 1024


def _remaining_s(deadline_s: float) -> float:
    """Seconds left before ``deadline_s`` (monotonic); TimeoutError once it has passed."""
    left_s = deadline_s - time.monotonic()
    if left_s <= 0:
        raise TimeoutError("deadline passed")
    return left_s


def _handshake(tls: ssl.SSLSocket, identity: Identity, trust: TrustStore,
               deadline_s: float) -> tuple[PeerIdentity, bytes]:
    """TLS, then hellos both ways (``net.handshake.handshake``'s steps); the peer and the bytes
    read past its hello. Raises ConnectError or HandshakeError, TimeoutError at ``deadline_s``."""
    try:
        tls.settimeout(_remaining_s(deadline_s))
        tls.do_handshake()
        peer = peer_of(tls.getpeercert(binary_form=True))
        reason = trust.refusal(peer)
        if reason is not None:
            tls.sendall(refusal_frame(reason))
            raise HandshakeError(reason)
        tls.sendall(hello_frame(identity, None))
        decoder = wire.FrameDecoder(frame_size_bytes_max=HELLO_FRAME_BYTES_MAX)
        while (frame := decoder.next_frame()) is None:
            tls.settimeout(_remaining_s(deadline_s))
            data = tls.recv(HELLO_FRAME_BYTES_MAX)
            if not data:
                raise ConnectError("the peer closed the connection during the hello")
            decoder.feed(data)
        check_hello(frame, peer, identity)
    except TimeoutError:
        raise
    except (ssl.SSLError, OSError) as exc:
        raise handshake_failure(exc) from None
    except wire.WireError as exc:
        raise ConnectError(f"bad hello: {exc}") from None
    return peer, decoder.take_buffered()  # frames sent right behind the hello


class Connection:
    """One TLS connection to a node, carrying requests one at a time. Use ``Connection.dial``."""

    def __init__(self, tls: ssl.SSLSocket, peer: PeerIdentity, leftover: bytes, config: NetConfig) -> None:
        self.peer = peer
        self._tls = tls
        self._config = config
        self._mux = m.Mux(dialled=True, peer_role=peer.role, serving=False)
        self._decoder = wire.FrameDecoder()
        self._decoder.feed(leftover)

    @classmethod
    @contextlib.contextmanager
    def dial(cls, identity: Identity, trust: TrustStore, address: Address,
             config: NetConfig) -> Iterator["Connection"]:
        """A connection to the node at ``address``, closed on exit (``net.handshake.dial``'s rules)."""
        try:
            sock = socket.create_connection((address.host, address.port), timeout=config.connect_timeout_s)
        except TimeoutError:
            raise connect_timed_out(address, config.connect_timeout_s) from None
        except OSError as exc:
            raise connect_failed(address, exc) from None
        with contextlib.closing(sock):
            # Small writes go out at once, as on trio's sockets. With Nagle's algorithm on, the
            # request written right behind our hello waited for the hello's ACK, which the node
            # delays by 40 ms (it had already sent its own hello): 40 ms of every command.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = trust.client_context.wrap_socket(sock, server_side=False, do_handshake_on_connect=False)
            with contextlib.closing(tls):
                try:
                    peer, leftover = _handshake(tls, identity, trust,
                                                time.monotonic() + config.handshake_timeout_s)
                except TimeoutError:
                    raise handshake_timed_out(address, config.handshake_timeout_s) from None
                except (ConnectError, HandshakeError) as exc:
                    raise type(exc)(f"{address}: {exc}") from None
                check_dialled(address, peer, None)
                yield cls(tls, peer, leftover, config)

    def request(self, msg: wire.Message, *, timeout_s: float) -> wire.Message:
        """Send ``msg`` and return the answer (a streamed answer's body is read and dropped, as
        ``net.Connection.request`` does). Raises RequestTimeout after ``timeout_s`` without an
        answer, RemoteError, ConnectionClosed (the peer broke the protocol or went away)."""
        stream_id, frame = self._mux.start_request(msg, with_body=False)
        self._send(frame)
        answer = self._answer(stream_id, time.monotonic() + timeout_s, timeout_s)
        for closing in self._mux.close_call(stream_id):  # the stream is done: forget it, as the peer has
            self._send(closing)
        return answer

    def _answer(self, stream_id: int, deadline_s: float, timeout_s: float) -> wire.Message:
        """The answer on ``stream_id`` (the only stream open), its body if any read to the end."""
        answer: wire.Message | None = None
        while True:
            for event in self._receive(deadline_s, timeout_s):
                if isinstance(event, m.SendFrame):
                    self._send(event.frame)
                elif isinstance(event, (m.ErrorReceived, m.BodyFailed)):
                    raise event.error
                elif isinstance(event, m.ResponseReceived):
                    if not event.has_body:
                        return event.msg
                    answer = event.msg
                elif isinstance(event, m.BodyReceived):
                    for credit in self._mux.body_consumed(stream_id, event.data):
                        self._send(credit)
                elif isinstance(event, m.BodyEnded):
                    assert answer is not None
                    return answer

    def _receive(self, deadline_s: float, timeout_s: float) -> list[m.Event]:
        """What the peer's next frame means. A peer that breaks the protocol loses the
        connection, and the request fails as on a lost connection (as in ``net.Connection``)."""
        try:
            while (frame := self._decoder.next_frame()) is None:
                self._tls.settimeout(_remaining_s(deadline_s))
                data = self._tls.recv(RECEIVE_BYTES)
                if not data:
                    raise ConnectionClosed("peer closed the connection")
                self._decoder.feed(data)
            return self._mux.receive_frame(frame)
        except TimeoutError:
            raise RequestTimeout(f"no answer from {self.peer.short_id} within {timeout_s} s") from None
        except (ProtocolViolation, wire.WireError) as exc:
            raise ConnectionClosed(f"protocol error: {exc}") from None
        except OSError as exc:
            raise ConnectionClosed(f"connection lost: {exc!r}") from None

    def _send(self, frame: wire.Frame) -> None:
        try:
            self._tls.settimeout(self._config.send_timeout_s)
            self._tls.sendall(wire.encode_frame(frame))
        except TimeoutError:
            raise ConnectionClosed(f"peer did not read for {self._config.send_timeout_s} s") from None
        except OSError as exc:
            raise ConnectionClosed(f"connection lost: {exc!r}") from None


class Cluster:
    """The one-request operations of ``p2pfs.client.Cluster``, blocking: same arguments,
    answers, errors and failover. ``last_node`` and ``last_node_id`` name the node that
    served the last successful operation; ``passed_over`` the failures of those tried first."""

    def __init__(self, identity: Identity, nodes: Sequence[Address], *, remember_in: Path | None = None,
                 config: NetConfig = NetConfig()) -> None:
        if not nodes:
            raise errors.BadInput("no node given")
        self.identity = identity
        self.nodes = tuple(nodes)
        self.remember_in = remember_in
        self._config = config
        self._trust: TrustStore | None = None
        self.last_node: Address | None = None
        self.last_node_id: str | None = None
        self.passed_over: tuple[str, ...] = ()

    def _run(self, what: str, request: wire.Message, expect: type, timeout_s: float) -> Any:
        check_client_identity(self.identity.role.value, self.identity.directory)
        if self._trust is None:
            self._trust = TrustStore(self.identity)
        remembered = load_members(self.remember_in) if self.remember_in is not None else None
        attempts = Attempts(what, nodes_to_try(self.nodes, remembered.addresses if remembered else ()),
                            time.monotonic())
        while (node := attempts.next_node(time.monotonic())) is not None:
            try:
                with library_errors(node), Connection.dial(self.identity, self._trust, node, self._config) as conn:
                    reply = _expected(conn.request(request, timeout_s=timeout_s), expect, node)
                    self._refresh(conn, remembered)
            except errors.P2pfsError as exc:
                attempts.failed(node, exc, lambda: None)  # every request here may be repeated
                continue
            self.last_node, self.last_node_id, self.passed_over = node, conn.peer.node_id, tuple(attempts.failures)
            return reply
        raise attempts.exhausted()

    def _refresh(self, conn: Connection, remembered: RememberedMembers | None) -> None:
        """Learn the member list from ``conn``'s node when the remembered one is missing or stale."""
        if self.remember_in is None or not refresh_due(remembered, now_wall_ms := int(time.time() * 1000)):
            return
        try:
            found = _expected(conn.request(nm.MembersRequest(), timeout_s=REQUEST_TIMEOUT_S), nm.MembersReply,
                              None)
        except (errors.Unavailable, errors.PeerFault):
            return  # a cache: the operation succeeded, and the next one asks again
        remember(self.remember_in, found.members, now_wall_ms)

    def members(self) -> list[nm.MemberInfo]:
        return list(self._run("list the members", nm.MembersRequest(), nm.MembersReply, REQUEST_TIMEOUT_S).members)

    def status(self) -> nm.StatusReply:
        return self._run("ask a node's status", nm.StatusRequest(), nm.StatusReply, REQUEST_TIMEOUT_S)

    def ls(self, prefix: Name = "", *, after: str = "", limit: int = LS_PAGE_FILES_MAX) -> cm.ListFilesReply:
        """One page: at most ``limit`` files with ``prefix`` after the name ``after``, in name order."""
        check_page_files(limit)
        return self._run("list files", cm.ListFiles(os.fspath(prefix), after, limit), cm.ListFilesReply,
                         CLUSTER_REQUEST_TIMEOUT_S)

    def ls_pages(self, prefix: Name = "", *, after: str = "", limit: int | None = None,
                 page_files: int = LS_PAGE_FILES_MAX) -> Iterator[cm.ListFilesReply]:
        """Every page of the listing (or of its first ``limit`` files), one request each,
        each failing over on its own."""
        pager = Pager(after, limit, page_files)
        while (request := pager.next()) is not None:
            page = self.ls(prefix, after=request[0], limit=request[1])
            pager.got(page)
            yield page

    def stat(self, name: Name) -> cm.StatFileReply:
        name = cluster_name(name)
        return self._run(f"stat {name!r}", cm.StatFile(name), cm.StatFileReply, CLUSTER_REQUEST_TIMEOUT_S)

    def rm(self, name: Name) -> cm.RemoveFileReply:
        name = cluster_name(name)
        return self._run(f"remove {name!r}", cm.RemoveFile(name), cm.RemoveFileReply, CLUSTER_REQUEST_TIMEOUT_S)


def connect(identity: str | os.PathLike | None = None, nodes: Nodes | None = None, *,
            remember: bool = True) -> Cluster:
    """Like ``p2pfs.client.connect`` (same arguments and defaults), for the one-request operations."""
    directory = identity_directory(identity)
    return Cluster(load_identity(directory), node_addresses(nodes, directory),
                   remember_in=directory if remember else None)


def _expected(reply: wire.Message, expect: type, node: Address | None) -> Any:
    if not isinstance(reply, expect):
        raise errors.PeerFault(f"node {node} answered {type(reply).__name__}, expected {expect.__name__}")
    return reply
