"""The ``[admin]`` section: the HTTP admin listener, readiness and the log format.

The admin listener serves ``/metrics`` (Prometheus), ``/health``, ``/ready``,
``/api/status`` (JSON) and ``/`` (the status page). It is off by default. On
loopback it may be plain HTTP: the machine's own users may read it (what a local
Prometheus or an SSH tunnel needs). Anywhere else it needs a bearer token
(``token_file``) or client certificates (``client_certificates``: HTTPS with the
node's own certificate, and only clients with a certificate from the cluster CA),
because the status page names every member, its address and its load.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from p2pfs.address import Address

# Prometheus' own exporters are registered from 9100 up; 9470 is not taken there.
ADMIN_PORT_DEFAULT = 9470


def _doc(text: str, default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"doc": text})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class AdminConfig:
    """Operator-facing settings. Only ``log_format`` (and ``[node] log_level``) change on reload;
    the listener's settings take a restart."""

    enabled: bool = _doc(
        "Serve the HTTP admin listener (metrics, health, readiness, status page). Off by "
        "default: nothing listens that the operator did not ask for.",
        False,
    )
    listen: Address = _doc(
        "Address of the admin listener, HOST:PORT. Loopback needs no token; any other address "
        "needs token_file. Default port 9470 (free in Prometheus' port registry).",
        Address("127.0.0.1", ADMIN_PORT_DEFAULT),
    )
    token_file: str = _doc(
        "File holding a bearer token (one line) that every admin request must present as "
        "'Authorization: Bearer TOKEN'. Required when listen is not a loopback address. "
        "Relative paths are relative to the config file's directory. Empty: no token.",
        "",
    )
    client_certificates: bool = _doc(
        "Serve HTTPS with this node's certificate and admit only clients that present a "
        "certificate issued by the cluster CA (a `p2pfs client init` identity, or a node's). "
        "TLS 1.3 only, as on the node port. Prometheus presents one with tls_config cert_file "
        "and key_file.",
        False,
    )
    log_format: str = _doc(
        "Log line format: \"text\" (for people and grep) or \"json\" (one object per line with "
        "time, level, node, event and fields, for a log shipper). Changes on SIGHUP.",
        "text",
    )
    ready_join_timeout_s: float = _doc(
        "A node with seeds tells its service manager it is ready once another member is alive "
        "(it has joined), or after this many seconds regardless, so that a whole cluster "
        "restarted at once does not wait on itself. Must stay below systemd's "
        "TimeoutStartSec (90 s by default).",
        60.0,
    )

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format {self.log_format!r} is not \"text\" or \"json\"")
        guarded = self.token_file or self.client_certificates
        if self.enabled and not guarded and not is_loopback(self.listen.host):
            raise ValueError(
                f"an admin listener on {self.listen} (not loopback) needs token_file or "
                "client_certificates: anyone who can reach it would see the cluster's members and load"
            )
        if self.ready_join_timeout_s < 0:
            raise ValueError("ready_join_timeout_s cannot be negative")
