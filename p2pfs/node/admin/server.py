"""The HTTP admin listener: a small ASGI app served by Hypercorn's trio worker in the
daemon's own nursery (same event loop, no thread, no second process).

Routes (GET unless noted):

- ``/health``: 200 while the event loop answers (liveness).
- ``/ready``: 200 when the node has joined, has enough live members for rf and
  can write its data directory; 503 with the reasons otherwise.
- ``/metrics``: Prometheus text format.
- ``/api/status``: the status page's data as JSON.
- ``/``: the status page, which fetches ``/api/status`` every
  ``STATUS_REFRESH_S`` and redraws itself.
- ``POST /api/log-level?level=debug``: change the log level until the next
  reload or restart.
- ``POST /api/reload``: reload the config file, as SIGHUP does; the answer says
  what was applied, what waits for a restart, or why the file was refused.

Anything else is 404. With a token configured, every route needs
``Authorization: Bearer TOKEN`` (the page takes it once as ``?token=`` and keeps
it in the browser's session storage). With client certificates and no token, the
POST routes are refused: any cluster certificate, whatever its role, passes TLS.
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import logging
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import Gauge, exposition

from p2pfs import net, observe, wire
from p2pfs.node.admin.metrics import CountedPieces, new_registry, operation_name
from p2pfs.node.admin.status import PeerUsage, readiness, status_document
from p2pfs.errors import ConfigError
from p2pfs.wire import Role

if TYPE_CHECKING:
    from p2pfs.node.daemon import Node

log = logging.getLogger(__name__)

# Seconds between the status page's refreshes: fast enough to watch a node go
# suspect then dead (about 5 s and 30 s after a crash), one small JSON request each.
STATUS_REFRESH_S = 1.0
# Longest request head the admin listener reads (it takes no bodies): far above any
# browser's or Prometheus' request, far below Hypercorn's 64 KiB default.
ADMIN_REQUEST_HEAD_BYTES_MAX = 16 * 1024
# Seconds an idle keep-alive admin connection is kept; Prometheus re-dials each scrape anyway.
ADMIN_KEEP_ALIVE_S = 30.0
# Token file size cap: a token is one short line.
TOKEN_FILE_BYTES_MAX = 4096


def load_token(node: Node) -> str | None:
    """The bearer token from ``[admin] token_file`` (relative to the config file), or None."""
    name = node.cfg.admin.token_file
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute() and node.cfg.path is not None:
        path = node.cfg.path.parent / path
    try:
        token = path.read_bytes()[:TOKEN_FILE_BYTES_MAX].decode().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"[admin] token_file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"[admin] token_file {path} is empty")
    return token


class AdminService:
    """Metrics, health, readiness and the status page of one node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.registry, self.requests, self.events, self.gossip, self.probes = new_registry(
            node, lambda: readiness(node))
        # CPU time rather than wall time: what a scrape costs the event loop, not how long
        # the machine's scheduler kept the thread waiting meanwhile.
        self.scrape_cpu = Gauge(
            "p2pfs_metrics_scrape_cpu_seconds",
            "CPU time the previous /metrics answer took to build in the event loop (HTTP excluded).",
            registry=self.registry,
        )
        self._peers = PeerUsage(node)
        self._token = load_token(node) if node.cfg.admin.enabled else None
        self._page = importlib.resources.files("p2pfs.node.admin").joinpath("status.html").read_bytes()
        self.url: str | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Watch membership transitions and, if enabled, serve HTTP. Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_members)
            if self._node.cfg.admin.enabled:
                try:
                    binds = await nursery.start(hypercorn_serve, self.asgi, self._hypercorn_config())
                except OSError as exc:
                    raise ConfigError(
                        f"[admin] listen {self._node.cfg.admin.listen}: {exc.strerror or exc}"
                    ) from None
                self.url = binds[0]
                log.info("admin listener on %s (status page %s/)", self.url, self.url)
            task_status.started()

    def _hypercorn_config(self) -> HypercornConfig:
        config = _TlsStrictConfig()
        listen = self._node.cfg.admin.listen
        host = f"[{listen.host}]" if ":" in listen.host else listen.host
        config.bind = [f"{host}:{listen.port}"]
        config.accesslog = None  # one line per request would drown the node's own events
        config.errorlog = logging.getLogger("p2pfs.node.admin.http")
        config.keep_alive_timeout = ADMIN_KEEP_ALIVE_S
        config.h11_max_incomplete_size = ADMIN_REQUEST_HEAD_BYTES_MAX
        if self._node.cfg.admin.client_certificates:
            ident = self._node.identity
            config.certfile, config.keyfile = str(ident.cert_path), str(ident.key_path)
            config.ca_certs = str(ident.ca_path)
            config.verify_mode = ssl.CERT_REQUIRED
        return config

    async def _watch_members(self) -> None:
        membership = self._node.membership
        version = -1
        while True:  # until the node's nursery is cancelled
            self.events.update(membership.members(), self._node.clock.wall_ms())
            version = await membership.wait_changed(version)

    # -- the ASGI app ---------------------------------------------------------

    async def asgi(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        assert scope["type"] == "http", scope["type"]
        status, content_type, body = await self._route(scope, receive)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope, receive) -> tuple[int, str, bytes]:
        path, method = scope["path"], scope["method"]
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
        if self._token is not None and not self._authorised(scope, query):
            return 401, "text/plain", b"missing or wrong bearer token\n"
        if method == "POST" and self._token is None and self._node.cfg.admin.client_certificates:
            # Any certificate of the cluster passes the TLS check here, whatever its role
            # (Hypercorn does not hand the certificate to the app): reading, yes; changing
            # the node needs the token, or `p2pfs reload` with an admin key.
            return 403, "text/plain", (b"changing the node through the admin listener needs [admin] token_file "
                                       b"when it is reached with client certificates; or use `p2pfs reload`\n")
        if path == "/api/log-level" and method == "POST":
            return self._set_log_level(query)
        if path == "/api/reload" and method == "POST":
            return self._reload()
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        if path == "/health":
            return 200, "text/plain", b"ok\n"
        if path == "/ready":
            ready = readiness(self._node)
            text = "ready\n" if ready.ok else "".join(f"{reason}\n" for reason in ready.reasons)
            return (200 if ready.ok else 503), "text/plain", text.encode()
        if path == "/metrics":
            started_s = time.thread_time()
            body = exposition.generate_latest(self.registry)
            self.scrape_cpu.set(time.thread_time() - started_s)
            return 200, exposition.CONTENT_TYPE_LATEST, body
        if path == "/api/status":
            await self._peers.refresh()
            document = status_document(self._node, self.events, self._peers)
            document["refresh_s"] = STATUS_REFRESH_S
            return 200, "application/json", json.dumps(document).encode()
        if path == "/":
            return 200, "text/html; charset=utf-8", self._page
        return 404, "text/plain", b"not found\n"

    def _authorised(self, scope, query) -> bool:
        presented = ""
        for name, value in scope["headers"]:
            if name == b"authorization" and value.startswith(b"Bearer "):
                presented = value[len(b"Bearer "):].decode(errors="replace")
        if not presented and scope["path"] == "/":
            presented = query.get("token", [""])[0]  # the page's first load; it sends a header after
        assert self._token is not None
        return hmac.compare_digest(presented.encode(), self._token.encode())

    def _set_log_level(self, query) -> tuple[int, str, bytes]:
        level = query.get("level", [""])[0]
        try:
            observe.set_level(level)
        except ValueError as exc:
            return 400, "text/plain", f"{exc}\n".encode()
        log.warning("log level set to %s through the admin listener", level)
        return 200, "text/plain", f"log level {level}\n".encode()

    def _reload(self) -> tuple[int, str, bytes]:
        """What SIGHUP does, with the outcome in the answer: 200 and what was applied and what
        waits for a restart, or 400 and why the file was refused (the running config stays)."""
        outcome = self._node.reload()
        if outcome.error is not None:
            return 400, "application/json", json.dumps({"error": outcome.error}).encode()
        return 200, "application/json", json.dumps(
            {"applied": list(outcome.applied), "restart": list(outcome.restart)}).encode()

    # -- the daemon's hooks -------------------------------------------------------

    def counted_request(self, request: net.IncomingRequest) -> net.IncomingRequest:
        """The request with its streamed body (if any) counted as it is read, by operation."""
        if request.body is None:
            return request
        operation = operation_name(type(request.msg))
        return net.IncomingRequest(request.conn, request.msg,
                                   CountedPieces(request.body, lambda n: self.requests.add_bytes_in(operation, n)))

    def count_gossip(self, direction: str, msg: wire.Message) -> None:
        self.gossip.count(direction, len(wire.encode_message(msg)))
        if direction == "received":
            self.probes.received(msg, trio.current_time())

    def gossip_sending(self, msg: wire.Message) -> None:
        """A membership message about to go out: a Ping's round trip starts here."""
        self.probes.sending(msg, trio.current_time())

    def record_request(self, request: net.IncomingRequest, outcome: str, started_s: float) -> None:
        """Count and time one answered request, and log it: a client's at info (one line per
        operation a person would grep for), a peer node's at debug (one per chunk)."""
        duration_s = trio.current_time() - started_s
        operation = operation_name(type(request.msg))
        self.requests.observe(operation, outcome, duration_s)
        peer = request.peer
        level = logging.INFO if peer.role is Role.CLIENT else logging.DEBUG
        if log.isEnabledFor(level):  # a peer's requests are most of them, and not logged by default
            fields = {"operation": operation, "outcome": outcome, "duration_s": round(duration_s, 6),
                      "peer": peer.short_id}
            name = getattr(request.msg, "name", None)
            if isinstance(name, str):
                fields["file_name"] = name
            if peer.role is Role.CLIENT:
                fields["client_id"] = peer.short_id
            log.log(level, "%s %s%s: %s in %.3f s", operation, "for client " if peer.role is Role.CLIENT else "from ",
                    peer.short_id, outcome, duration_s, extra=fields)

    def record_answer(self, request: net.IncomingRequest, answer: wire.Message | net.Reply,
                      started_s: float) -> wire.Message | net.Reply:
        """Count an answer; a streamed one when its body ends, with the bytes it carried."""
        if not isinstance(answer, net.Reply):
            self.record_request(request, "ok", started_s)
            return answer
        operation, write_body = operation_name(type(request.msg)), answer.body

        async def counted_body(send) -> None:
            async def counting_send(data) -> None:
                await send(data)
                self.requests.add_bytes_out(operation, len(data))

            outcome = "error"
            try:
                await write_body(counting_send)
                outcome = "ok"
            except net.RemoteError as exc:
                outcome = exc.code.name.lower()
                raise
            finally:
                self.record_request(request, outcome, started_s)

        return net.Reply(answer.msg, counted_body)


class _TlsStrictConfig(HypercornConfig):
    """Hypercorn's settings, with TLS (client_certificates) held to 1.3 and strict X.509
    checks like the node port, instead of Hypercorn's TLS 1.2 floor."""

    def create_ssl_context(self) -> ssl.SSLContext | None:
        context = super().create_ssl_context()
        if context is not None:
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context


async def _lifespan(receive, send) -> None:
    """Hypercorn's startup and shutdown handshake: nothing to set up."""
    while True:  # until the shutdown message
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
