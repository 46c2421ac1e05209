"""The chaos run's own network namespace, and the packet filter inside it.

The whole run (harness, daemons, delay helper) lives in a throw-away
``unshare --net --mount --pid --fork --kill-child`` sandbox. The new network
namespace has only ``lo``, and all of 127.0.0.0/8 is local on it, so node I
listens on 127.0.0.(I+1) and binds its outgoing connections there
(``[node] bind_outgoing = true``): a packet's source and destination then name
the two nodes, which is what per-pair filtering needs. The pid namespace makes
the harness its init: when it dies, even by SIGKILL, the kernel kills every
process in the namespace, and the network namespace (with its rules) goes with
the last of them. The host's namespace is never touched.

Faults (the kernel has no sch_netem; see shared/notes/FAULT-INJECTION.md):

* partitions: nft ``drop`` rules between address sets, in an ``inet`` table on
  the output hook (loopback packets pass output once, so one rule per
  direction is enough);
* loss: an nft rule dropping ``numgen random mod 10000 < N`` of all packets;
* delay: ``iptables -j NFQUEUE --queue-bypass`` on output plus the user-space
  delayer ``p2pfs.chaos.nfq``, which returns each packet's verdict later.

Every command runs with a deadline, and ``Firewall`` refuses to run at all
unless it is inside a network namespace other than the host's.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import trio

log = logging.getLogger(__name__)

# Set in the sandbox's environment: the host's network namespace (as
# /proc/self/ns/net reads there), so code inside can prove it is elsewhere.
HOST_NETNS_ENV = "P2PFS_CHAOS_HOST_NETNS"
# A packet-filter command that has not finished in this many seconds is a failure.
COMMAND_TIMEOUT_S = 10.0
# Seconds the delay helper has to bind its queue and say so: a Python start-up, which took more
# than 10 s at a load average of 40 on this 2-core machine (a 30-minute run ended at its first
# delay fault, the helper's log still empty).
DELAYER_START_TIMEOUT_S = 60.0
# Seconds the delay helper has to flush its held packets and exit on SIGTERM.
DELAYER_STOP_TIMEOUT_S = 5.0
# The nft table holding every fault rule; flushing it heals partitions and loss.
NFT_TABLE = "p2pfs_chaos"
# The NFQUEUE number the delay helper binds (queues are per namespace).
DELAY_QUEUE_NUM = 7
TOOLS_REQUIRED = ("unshare", "nft", "iptables", "ip")


class SandboxUnavailable(Exception):
    """This machine cannot host the sandbox; the message says what is missing."""


class FirewallError(Exception):
    """A packet-filter command failed or was refused."""


def missing_capabilities() -> list[str]:
    """What stops a chaos run here, as phrases a person can act on (empty: nothing)."""
    missing = []
    if sys.platform != "linux":
        missing.append("network namespaces need Linux")
    if os.geteuid() != 0:
        missing.append("not root (unshare --net and packet filters need root)")
    for tool in TOOLS_REQUIRED:
        if shutil.which(tool) is None:
            missing.append(f"`{tool}` not found (apt-get install iproute2 iptables nftables util-linux)")
    return missing


def inside_sandbox() -> bool:
    return HOST_NETNS_ENV in os.environ


def _netns_id() -> str:
    return os.readlink("/proc/self/ns/net")


def sandbox_argv(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``argv`` inside a fresh sandbox.

    ``--kill-child`` makes the sandbox's init die with unshare; ``--mount-proc``
    gives it a /proc of its own pid namespace, so pids it sees are its own.
    """
    env = dict(os.environ)
    env[HOST_NETNS_ENV] = _netns_id()
    command = [
        "unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
        "--propagation", "private", "--", *argv,
    ]
    return command, env


def enter_sandbox(argv: list[str]) -> None:
    """Replace this process with ``argv`` run inside a new sandbox (does not return)."""
    missing = missing_capabilities()
    if missing:
        raise SandboxUnavailable("; ".join(missing))
    command, env = sandbox_argv(argv)
    os.execvpe(command[0], command, env)


def _require_private_netns() -> None:
    host = os.environ.get(HOST_NETNS_ENV)
    if host is None or host == _netns_id():
        raise FirewallError(
            "refusing to touch the packet filter: not inside the chaos run's own network namespace"
        )


async def _run(command: list[str], stdin: bytes | None = None) -> str:
    _require_private_netns()
    try:
        with trio.fail_after(COMMAND_TIMEOUT_S):
            done = await trio.run_process(command, stdin=stdin, capture_stdout=True,
                                          capture_stderr=True, check=False)
    except trio.TooSlowError:
        raise FirewallError(f"{' '.join(command)} did not finish in {COMMAND_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise FirewallError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


async def bring_up_loopback() -> None:
    await _run(["ip", "link", "set", "lo", "up"])


def _set(addresses: list[str]) -> str:
    return "{ " + ", ".join(addresses) + " }"


class Firewall:
    """Faults on the namespace's loopback: partitions, loss, delay. One instance per run."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._delayer: trio.Process | None = None
        self._delay_rule: list[str] | None = None

    async def setup(self) -> None:
        """Create the fault table and check that every kind of rule is accepted here."""
        await _run(["nft", "-f", "-"], stdin=(
            f"table inet {NFT_TABLE} {{\n"
            "  chain output { type filter hook output priority 0; policy accept; }\n"
            "}\n"
        ).encode())
        # Probe what the faults will use, so a missing kernel feature fails now, clearly.
        await self.set_loss(0.0)
        await _run(["iptables", "-A", "OUTPUT", "-d", "127.0.0.254", "-j", "NFQUEUE",
                    "--queue-num", str(DELAY_QUEUE_NUM), "--queue-bypass"])
        await _run(["iptables", "-D", "OUTPUT", "-d", "127.0.0.254", "-j", "NFQUEUE",
                    "--queue-num", str(DELAY_QUEUE_NUM), "--queue-bypass"])
        await self.heal()

    async def partition(self, side_a: list[str], side_b: list[str]) -> None:
        """Drop every packet between the hosts of ``side_a`` and those of ``side_b``, both ways."""
        assert side_a and side_b and not set(side_a) & set(side_b)
        a, b = _set(side_a), _set(side_b)
        await _run(["nft", "-f", "-"], stdin=(
            f"add rule inet {NFT_TABLE} output ip saddr {a} ip daddr {b} drop\n"
            f"add rule inet {NFT_TABLE} output ip saddr {b} ip daddr {a} drop\n"
        ).encode())

    async def set_loss(self, fraction: float) -> None:
        """Drop ``fraction`` (0..1) of all loopback packets at random (0 adds a rule that drops none)."""
        assert 0.0 <= fraction <= 1.0
        per_10000 = round(fraction * 10000)
        await _run(["nft", "add", "rule", "inet", NFT_TABLE, "output",
                    "numgen", "random", "mod", "10000", "<", str(per_10000), "drop"])

    async def set_delay(self, delay_ms: float, jitter_ms: float, seed: int) -> None:
        """Hold every loopback packet ``delay_ms`` +- ``jitter_ms`` before it goes on."""
        assert self._delayer is None
        log_path = self._state_dir / "nfq-delay.log"
        log_file = open(log_path, "ab")
        try:
            self._delayer = await trio.lowlevel.open_process(
                [sys.executable, "-m", "p2pfs.chaos.nfq", "--queue", str(DELAY_QUEUE_NUM),
                 "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms), "--seed", str(seed)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            )
        finally:
            log_file.close()
        await self._await_delayer_ready(log_path)
        self._delay_rule = ["OUTPUT", "-o", "lo", "-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE_NUM),
                            "--queue-bypass"]
        await _run(["iptables", "-A", *self._delay_rule])

    async def _await_delayer_ready(self, log_path: Path) -> None:
        with trio.move_on_after(DELAYER_START_TIMEOUT_S):
            while self._delayer.poll() is None:
                if b"bound queue" in log_path.read_bytes():
                    return
                await trio.sleep(0.05)  # polling the helper's log under a deadline
        raise FirewallError(f"the delay helper did not bind its queue: see {log_path}")

    async def heal(self) -> None:
        """Remove every network fault: flush the nft chain, drop the NFQUEUE rule, stop the delayer."""
        await _run(["nft", "flush", "chain", "inet", NFT_TABLE, "output"])
        if self._delay_rule is not None:
            await _run(["iptables", "-D", *self._delay_rule])
            self._delay_rule = None
        if self._delayer is not None:
            delayer, self._delayer = self._delayer, None
            delayer.terminate()  # it flushes what it holds, then unbinds
            with trio.move_on_after(DELAYER_STOP_TIMEOUT_S) as scope:
                await delayer.wait()
            if scope.cancelled_caught:
                delayer.kill()
                with trio.fail_after(DELAYER_STOP_TIMEOUT_S):
                    await delayer.wait()
