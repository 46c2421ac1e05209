"""Network addresses as typed values, parsed once at the edge."""

from __future__ import annotations

import dataclasses
import ipaddress


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Address:
    """A TCP endpoint. ``host`` is an IP literal or a host name."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("address has an empty host")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} is out of range 0-65535")

    def __str__(self) -> str:
        if ":" in self.host:  # IPv6 literal
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``. Raises ValueError with a message a person can act on."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not HOST:PORT (IPv6 as [ADDR]:PORT)")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not HOST:PORT")
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} in {text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} in {text!r} is out of range 1-65535")
    return Address(host, port)
