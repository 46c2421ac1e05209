"""docs/CLI.md: every command has --json, and every documented example runs and prints
exactly the documented shape (keys and value types), through the real CLI against
real daemons."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from p2pfs.cli import ExitCode, admin, cli, cluster, files, testnet  # noqa: F401  (registers every command)
from testnet_helpers import CLI_TIMEOUT_S, running_testnet

DOC = Path(__file__).resolve().parent.parent / "docs" / "CLI.md"
EXAMPLE = re.compile(r"```console\n\$ p2pfs (?P<command>[^\n]+)\n(?P<output>.*?)```", re.S)
NO_JSON = {"daemon"}  # runs in the foreground and logs


def examples() -> list[tuple[list[str], object]]:
    return [(shlex.split(m["command"]), json.loads(m["output"])) for m in EXAMPLE.finditer(DOC.read_text())]


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(commands(command, (*prefix, name)))
        else:
            found[(*prefix, name)] = command
    return found


def shape_errors(documented: object, actual: object, where: str = "$") -> list[str]:
    """Where ``actual`` differs from ``documented`` in keys or value types."""
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        if set(documented) != set(actual):
            return [f"{where}: keys {sorted(actual)} instead of {sorted(documented)}"]
        return [e for key in documented for e in shape_errors(documented[key], actual[key], f"{where}.{key}")]
    if isinstance(documented, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {actual!r}"]
        if not documented:
            return []
        return [e for i, item in enumerate(actual) for e in shape_errors(documented[0], item, f"{where}[{i}]")]
    if isinstance(documented, float):
        ok = isinstance(actual, (int, float)) and not isinstance(actual, bool)
    else:
        ok = type(actual) is type(documented)
    return [] if ok else [f"{where}: {actual!r} is not like {documented!r}"]


def test_every_command_has_json_and_an_example():
    documented = {tuple(c for c in args if not c.startswith("-"))[:2] for args, _ in examples()}
    for path, command in commands(cli).items():
        if path[0] in NO_JSON:
            continue
        assert "as_json" in [p.name for p in command.params], f"p2pfs {' '.join(path)} has no --json"
        assert any(d[:len(path)] == path for d in documented), f"p2pfs {' '.join(path)} has no example"


@pytest.mark.integration
def test_the_examples_run_and_print_the_documented_shape(tmp_path):
    (tmp_path / "report.pdf").write_bytes(os.urandom(3_000_000))
    (tmp_path / "photos" / "2024").mkdir(parents=True)  # for put -r and get -r
    for name in ("a.jpg", "2024/d.jpg"):
        (tmp_path / "photos" / name).write_bytes(os.urandom(20_000))
    with running_testnet(tmp_path / "testnet", nodes=3) as net:
        env = net.env()
        env["P2PFS_NODE"] = net.address("node1")
        for args, documented in examples():
            result = subprocess.run([sys.executable, "-m", "p2pfs", *args], capture_output=True, env=env,
                                    cwd=tmp_path, timeout=CLI_TIMEOUT_S)
            # get's answer, and any error, are on stderr (stdout may hold the file)
            printed = result.stderr if args[0] in ("get", "cat") or result.returncode else result.stdout
            try:
                actual = json.loads(printed)
            except json.JSONDecodeError:
                raise AssertionError(f"p2pfs {' '.join(args)} exited {result.returncode}: {result.stderr!r}")
            assert result.returncode == (actual.get("exit_code", 0) if isinstance(actual, dict) else 0)
            if result.returncode:
                assert actual["exit_code"] != ExitCode.OK and actual["error"] == ExitCode(result.returncode).name.lower()
            assert shape_errors(documented, actual) == [], f"p2pfs {' '.join(args)}"


def test_bash_completion_completes_commands():
    env = {**os.environ, "_P2PFS_COMPLETE": "bash_complete", "COMP_WORDS": "p2pfs st", "COMP_CWORD": "1"}
    result = subprocess.run([sys.executable, "-m", "p2pfs"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "plain,stat" in result.stdout.split() and "plain,status" in result.stdout.split()
    script = subprocess.run([sys.executable, "-m", "p2pfs"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "_P2PFS_COMPLETE": "bash_source"})
    assert "complete -o nosort -F _p2pfs_completion p2pfs" in script.stdout
