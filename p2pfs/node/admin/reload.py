"""Reloading a node's config file (SIGHUP, or ``POST /api/reload``): apply what can change at
run time, name the rest.

What changes at once: ``[node] log_level``, ``[admin] log_format``, the bandwidth caps
``[replication] repair_bytes_per_s`` and ``client_bytes_per_s`` (the node hands the new
rates to its limiters), and the ``[net]`` limits (the memory budget at once; timeouts and
back-off for the handshakes and connections made after the reload). Every other option is read once, by the room that owns it, when
the node starts; a reload that changes one logs that it takes effect at the next restart
rather than pretending.
"""

from __future__ import annotations

import dataclasses
import logging

from p2pfs import observe
from p2pfs.errors import ConfigError
from p2pfs.net.config import NetConfig
from p2pfs.node.config import SECTIONS, NodeConfig, load_node_config

log = logging.getLogger(__name__)

# (section, option) pairs applied at run time.
RELOADABLE = frozenset({
    ("node", "log_level"),
    ("admin", "log_format"),
    ("replication", "repair_bytes_per_s"),
    ("replication", "client_bytes_per_s"),
    *(("net", field.name) for field in dataclasses.fields(NetConfig)),
})


@dataclasses.dataclass(frozen=True, slots=True)
class Reloaded:
    """What a reload did: the config now in force, what it changed, what waits for a restart,
    or why the file was refused (then ``config`` is the running one, unchanged)."""

    config: NodeConfig
    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    error: str | None = None


def changed_options(old: NodeConfig, new: NodeConfig) -> list[tuple[str, str]]:
    """Every (section, option) whose value differs between two configs, in file order."""
    changes = []
    for section in SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for field in dataclasses.fields(before):
            if getattr(before, field.name) != getattr(after, field.name):
                changes.append((section, field.name))
    return changes


def reload_config(current: NodeConfig) -> Reloaded:
    """Re-read ``current.path``; apply the log settings and return the config now in force
    (the caller applies the rest of ``RELOADABLE``: the caps).

    A file that no longer loads leaves everything as it was (and says why): a typo
    in a reload must not take a running node down.
    """
    assert current.path is not None, "a running node's config comes from a file"
    try:
        new = load_node_config(current.path)
    except ConfigError as exc:
        log.error("reload failed, keeping the running config: %s", exc)
        return Reloaded(current, error=str(exc))
    changes = changed_options(current, new)
    restart = tuple(f"[{section}] {option}" for section, option in changes if (section, option) not in RELOADABLE)
    observe.set_level(new.node.log_level)
    observe.set_format(new.admin.log_format)
    applied = tuple(f"[{section}] {option}" for section, option in changes if (section, option) in RELOADABLE)
    log.info("config reloaded from %s: applied %s", current.path, ", ".join(applied) or "nothing new")
    if restart:
        log.warning("changed options that take effect at the next restart: %s", ", ".join(restart))
    # Keep the running values of what was not applied, so status pages tell the truth.
    in_force = current
    for section, option in RELOADABLE:
        values = dataclasses.replace(getattr(in_force, section), **{option: getattr(getattr(new, section), option)})
        in_force = dataclasses.replace(in_force, **{section: values})
    return Reloaded(in_force, applied, restart)
