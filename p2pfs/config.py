"""Node configuration: one TOML file per node, one dataclass per room.

Every option has a default, a unit in its name, and a ``doc`` (in the field's
metadata) that ``render_config`` writes next to it, so that the generated
``p2pfs.toml`` and ``configs/node.example.toml`` document themselves. Loading
checks every key: an unknown key, a wrong type or a bad value is a
``ConfigError`` naming ``[section] key``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from pathlib import Path
from typing import Any

from p2pfs.address import Address, parse_address
from p2pfs.errors import ConfigError

CONFIG_FILE = "p2pfs.toml"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
    "p": 1000**5, "pb": 1000**5, "pib": 1024**5,
}


def parse_size(value: str | int) -> int:
    """``"10GiB"``, ``"500MB"``, ``"4096"`` or an int, to bytes."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '10GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(value)
    unit = (match.group(2) or "").lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size (examples: 4096, '500MB', '10GiB')")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


_BINARY_UNITS = (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def format_size_exact(size_bytes: int) -> str | int:
    """``"10GiB"`` for a whole number of a binary unit, else the bytes as an int: the way a
    config file or a help text shows a size, exactly (``parse_size`` reads both back)."""
    for unit, factor in _BINARY_UNITS:
        if size_bytes >= factor and size_bytes % factor == 0:
            return f"{size_bytes // factor}{unit}"
    return size_bytes


def format_size(size_bytes: int) -> str:
    for unit, factor in (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size_bytes >= factor:
            return f"{size_bytes / factor:.1f} {unit}"
    return f"{size_bytes} B"


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field with documentation for the rendered config file."""
    return dataclasses.field(metadata={"doc": text}, **kwargs)


def is_wildcard(host: str) -> bool:
    """True for 0.0.0.0 and :: (listen on every interface): an address to bind, never to dial."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSettings:
    """The ``[node]`` section: who this node is and where it lives."""

    listen: Address = doc(
        "Address to accept connections on, HOST:PORT. Peers and clients dial it unless "
        "advertise is set. 0.0.0.0 or [::] (every interface) needs advertise.",
        default=Address("127.0.0.1", 7000),
    )
    advertise: Address | None = doc(
        "Address peers and clients are told to dial, HOST:PORT: what the member table and the "
        "node's status show. Needed when listen is a wildcard (a peer cannot dial 0.0.0.0) or "
        "behind NAT or a port forward. Unset: the listen address.",
        default=None,
    )
    seeds: tuple[Address, ...] = doc(
        "Members to join through, [\"HOST:PORT\", ...]. One reachable seed is enough; "
        "the first node of a cluster has none.",
        default=(),
    )
    zone: str = doc(
        "Failure zone (rack, machine, data centre). Replicas spread across zones when "
        "there are enough of them. Empty: no zone.",
        default="",
    )
    capacity_bytes: int = doc(
        "Disk space this node offers for chunks, in bytes or as a size like \"10GiB\". "
        "Also the node's weight on the hash ring.",
        default=10 * 1024**3,
    )
    data_dir: Path = doc(
        "Where chunks and the name index live. Relative paths are relative to this file's directory.",
        default=Path("data"),
    )
    bind_outgoing: bool = doc(
        "Bind outgoing connections to the listen host, so that a node's traffic comes from "
        "its own address (needed for per-pair fault injection on one machine).",
        default=False,
    )
    log_level: str = doc("Log level: debug, info, warning or error.", default="info")

    @property
    def advertise_address(self) -> Address:
        """The address others are told to dial: ``advertise``, else ``listen``."""
        return self.advertise if self.advertise is not None else self.listen

    def __post_init__(self) -> None:
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"{self.log_level!r} is not one of debug, info, warning, error")
        if self.capacity_bytes <= 0:
            raise ValueError("must be more than 0")
        if self.listen.port == 0:
            raise ValueError("a node needs a fixed port to listen on")
        if is_wildcard(self.listen.host) and self.advertise is None:
            raise ValueError(
                f"listen = \"{self.listen}\" accepts on every interface, which no peer can dial: "
                "set [node] advertise = \"HOST:PORT\" to the address peers and clients reach this "
                "node at (`p2pfs node init --advertise`)"
            )
        if self.advertise is not None and (is_wildcard(self.advertise.host) or self.advertise.port == 0):
            raise ValueError(f"advertise = \"{self.advertise}\" must be an address peers can dial "
                             "(a host and a fixed port, not a wildcard)")
        if not self.zone.isprintable():
            raise ValueError(f"zone {self.zone!r} has control characters; use letters, digits and punctuation")


def _convert(tp: Any, value: Any) -> Any:
    """Convert a TOML value to the annotated type, or raise ValueError/TypeError."""
    origin = typing.get_origin(tp)
    if tp is Address:
        if not isinstance(value, str):
            raise TypeError("expected a string \"HOST:PORT\"")
        return parse_address(value)
    if tp is Path:
        if not isinstance(value, str):
            raise TypeError("expected a path string")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError("expected an integer")
        return parse_size(value) if isinstance(value, str) else value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise TypeError("expected a list")
        return tuple(_convert(inner, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner, value)
    raise AssertionError(f"unsupported config type {tp}")


def load_section(cls: type, table: Any, section: str) -> Any:
    """Build ``cls`` from a TOML table, naming ``[section] key`` in every error."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(
                f"[{section}] {key}: unknown option (known: {', '.join(sorted(known))})"
            )
    kwargs = {}
    for key, value in table.items():
        try:
            kwargs[key] = _convert(hints[key], value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[{section}] {key}: {exc}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}] {exc}") from None


def read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # here, not at the top: the CLI imports this module for every command

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except PermissionError:
        raise ConfigError(f"cannot read config file {path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file") from None


def _toml_value(value: Any, *, size: bool = False) -> str:
    """One value as TOML, escaped by tomli_w; a size (``size``) as "10GiB" when exact.

    Arrays stay on one line (tomli_w would spread them over several), each item
    rendered by tomli_w.
    """
    import tomli_w

    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, (Address, Path)):
        value = str(value)
    elif size and isinstance(value, int) and not isinstance(value, bool):
        value = format_size_exact(value)
    line = tomli_w.dumps({"v": value})
    assert line.startswith("v = ") and line.endswith("\n"), line
    return line[len("v = "):-1]


def render_section(section: str, values: Any, *, commented: bool) -> str:
    """A TOML table with each option's documentation; defaults commented out if ``commented``."""
    lines = [f"[{section}]"]
    defaults = type(values)()
    for f in dataclasses.fields(values):
        text = f.metadata.get("doc")
        assert text, f"{type(values).__name__}.{f.name} has no doc"
        lines.extend(f"# {line}" for line in _wrap(text))
        value = getattr(values, f.name)
        if value is None:  # an optional setting left unset: TOML has no null
            lines.append(f"# {f.name} =")
            lines.append("")
            continue
        prefix = "# " if commented and value == getattr(defaults, f.name) else ""
        lines.append(f"{prefix}{f.name} = {_toml_value(value, size='_bytes' in f.name)}")
        lines.append("")
    return "\n".join(lines)


def _wrap(text: str, width: int = 96) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])
