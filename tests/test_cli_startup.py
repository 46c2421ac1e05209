"""Start-up time: a command imports only what it needs (measured with `python -X importtime`).

Wall-clock limits would fail on a loaded machine; which modules get imported does not
depend on the load, and it is what made `p2pfs --help` take 0.3 s.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from p2pfs.cli import ExitCode

# Imported by no command that does not talk to a node or run one.
HEAVY_FOR_HELP = ("trio", "cryptography", "ssl", "tomllib", "p2pfs.identity", "p2pfs.net", "p2pfs.wire",
                  "p2pfs.node.config", "p2pfs.membership")
# Imported by no client command: the daemon's rooms.
# The daemon's running parts. The CLI may load the rules messages are checked by (membership and
# data messages, storage.naming, hlc, manifest, ring for the digest tree) but none of these.
DAEMON_ONLY = ("p2pfs.node.config", "p2pfs.node.daemon", "p2pfs.membership.state", "p2pfs.membership.driver",
               "p2pfs.replication.service", "p2pfs.replication.coordinator", "p2pfs.storage.chunkstore",
               "p2pfs.storage.names", "sqlite3")


def imported_modules(*args: str, env: dict[str, str] | None = None) -> tuple[set[str], subprocess.CompletedProcess]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "p2pfs", *args],
                            capture_output=True, text=True, env=env, timeout=60)
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    return modules, result


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize("args", [["--help"], ["ls", "--help"], ["get", "--help"], ["testnet", "--help"]])
def test_help_imports_neither_trio_nor_cryptography_nor_the_daemon(args):
    modules, result = imported_modules(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "p2pfs.cli" in modules
    assert loaded(modules, HEAVY_FOR_HELP) == []


def test_ls_imports_no_room_of_the_daemon(tmp_path):
    from p2pfs import identity
    from p2pfs.wire import Role

    authority = identity.init_ca(tmp_path / "ca")
    identity.create_identity(tmp_path / "client", authority, Role.CLIENT)
    with socket.socket() as sock:  # a port nobody listens on: ls imports everything, then fails
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"P2PFS_IDENTITY": str(tmp_path / "client"), "P2PFS_NODE": f"127.0.0.1:{port}", "PATH": "/usr/bin:/bin"}
    modules, result = imported_modules("ls", env=env)
    assert result.returncode == ExitCode.UNAVAILABLE, result.stderr[-2000:]
    assert "p2pfs.client" in modules
    assert loaded(modules, DAEMON_ONLY) == []


def test_each_command_is_loaded_from_the_module_that_registers_it():
    from p2pfs.cli import admin, base, cluster, files, testnet  # noqa: F401  (registers every command)

    registered = {name: command.callback.__module__ for name, command in base.cli.commands.items()}
    assert registered == {name: f"p2pfs.cli.{module}" for name, module in base.COMMAND_MODULES.items()}


def test_a_command_loads_the_module_of_its_group_alone():
    # sys.modules at the end, not -X importtime: a module loaded by importlib.import_module
    # (as the group loads a command's) is not in importtime's report.
    code = ("import sys\nfrom p2pfs.cli import cli\ntry:\n    cli.main(['ls', '--help'], prog_name='p2pfs')\n"
            "except SystemExit:\n    pass\nprint(*sorted(sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Usage: p2pfs ls" in result.stdout, result.stderr[-2000:]
    modules = set(result.stderr.split())
    assert "p2pfs.cli.files" in modules
    assert loaded(modules, ("p2pfs.cli.admin", "p2pfs.cli.cluster", "p2pfs.cli.testnet")) == []
