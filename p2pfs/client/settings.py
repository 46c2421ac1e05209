"""Who speaks and to which nodes, found the way the CLI finds them.

The identity directory comes from the caller or ``P2PFS_IDENTITY``; the nodes
from the caller, else ``P2PFS_NODE``, else those ``p2pfs client init --node``
saved in the identity's ``client.toml``. A script then needs no more set-up
than the shell it runs in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

from p2pfs import errors
from p2pfs.address import Address, parse_address

IDENTITY_ENV = "P2PFS_IDENTITY"
NODE_ENV = "P2PFS_NODE"
CLIENT_CONFIG_FILE = "client.toml"

# What a caller may give for the nodes: "HOST:PORT", "A:1,B:2", an Address, or several of these.
Nodes = Union[str, Address, Iterable[Union[str, Address]]]


def parse_addresses(text: str) -> tuple[Address, ...]:
    """``HOST:PORT[,HOST:PORT...]``: several nodes to try, in order (spaces around commas allowed)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise ValueError(f"empty address in {text!r}")
    return tuple(parse_address(part) for part in parts)


def identity_directory(identity: str | os.PathLike | None) -> Path:
    if identity is None:
        identity = os.environ.get(IDENTITY_ENV) or None
    if identity is None:
        raise errors.BadInput(
            f"no identity given: pass one or set {IDENTITY_ENV} "
            "(create one with `p2pfs client init DIR --ca CA_DIR`)"
        )
    return Path(identity).expanduser()


def saved_nodes(directory: Path) -> tuple[Address, ...]:
    """The nodes ``client init --node`` saved in ``directory``, or none."""
    import tomllib

    path = directory / CLIENT_CONFIG_FILE
    try:
        with open(path, "rb") as f:
            saved = tomllib.load(f).get("node")
    except FileNotFoundError:
        return ()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise errors.BadInput(f"cannot read {path}: {exc}") from None
    if not saved:
        return ()
    try:
        return parse_addresses(str(saved))
    except ValueError as exc:
        raise errors.BadInput(f"{path}: node: {exc}") from None


def node_addresses(nodes: Nodes | None, directory: Path) -> tuple[Address, ...]:
    """The nodes to try, in order and without repeats, from the first source that names any."""
    if nodes is None:
        nodes = os.environ.get(NODE_ENV) or None
    if nodes is None:
        found = saved_nodes(directory)
        if not found:
            raise errors.BadInput(f"no node given: pass some or set {NODE_ENV} (HOST:PORT[,HOST:PORT...])")
        return found
    items = [nodes] if isinstance(nodes, (str, Address)) else list(nodes)
    found: list[Address] = []
    for item in items:
        try:
            found.extend([item] if isinstance(item, Address) else parse_addresses(item))
        except ValueError as exc:
            raise errors.BadInput(f"bad node address {item!r}: {exc}") from None
    if not found:
        raise errors.BadInput("no node given")
    return tuple(dict.fromkeys(found))
