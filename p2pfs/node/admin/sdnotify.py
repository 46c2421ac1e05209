"""Telling a service manager (systemd's ``Type=notify``) how the daemon is doing.

The protocol is sd_notify(3): datagrams of ``KEY=VALUE`` lines to the unix socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace). Without
the variable every call does nothing, so the daemon runs the same by hand.

- ``READY=1`` once the node has joined: another member is alive, or it has no
  seeds (the first node), or ``[admin] ready_join_timeout_s`` passed (a whole
  cluster restarted at once must not wait on itself until systemd gives up).
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``, from the event loop: a loop
  stalled for longer gets the daemon restarted.
- ``STOPPING=1`` when a stop begins, ``STATUS=...`` lines for ``systemctl status``.

Ten lines of socket code, so no library: the ``sdnotify`` packages on PyPI do the
same and block the same way.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

import trio

from p2pfs.membership import MemberState

if TYPE_CHECKING:
    from p2pfs.node.daemon import Node

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one notification; False when there is no service manager to tell (or it is gone).

    A datagram to a local socket never waits in practice; the socket is
    non-blocking anyway so a stuck manager cannot stall the event loop.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.debug("cannot notify the service manager at %s: %s", address, exc)
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd asked for (sd_watchdog_enabled(3)), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


async def run(node: Node) -> None:
    """Notify readiness once joined, then ping the watchdog until cancelled."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    notify("STATUS=joining the cluster")
    with trio.move_on_after(node.cfg.admin.ready_join_timeout_s) as scope:
        await _joined(node)
    if scope.cancelled_caught:
        log.warning("not joined after %s s; telling the service manager we are ready anyway",
                    node.cfg.admin.ready_join_timeout_s)
        notify("READY=1\nSTATUS=serving, but no other member is alive yet")
    else:
        notify("READY=1\nSTATUS=serving")
    interval_s = watchdog_interval_s()
    if interval_s is None:
        return
    while True:  # until the daemon stops
        notify("WATCHDOG=1")
        await trio.sleep(interval_s)


async def _joined(node: Node) -> None:
    if not node.cfg.node.seeds:
        return  # the first node of a cluster has no one to join
    version = -1
    while not any(mb.node_id != node.node_id and mb.state is MemberState.ALIVE for mb in node.membership.members()):
        version = await node.membership.wait_changed(version)
