"""``p2pfs put PATH`` and ``p2pfs get NAME -o PATH`` of a file of at most 64 KiB use the
small-file messages (one ``PutSmallFile``, one ``GetSmallFile``) with a node that offers them,
and the resumable requests otherwise; what the CLI prints and exits with is the same either way.

The requests a node served are read from its admin metrics (``p2pfs_requests_total`` by
operation): the CLI runs as a process of its own, as a user runs it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from click.testing import CliRunner

from p2pfs.cli import ExitCode, cli
from p2pfs.client import Client
from p2pfs.client.resume import PART_SUFFIX, STATE_SUFFIX

from admin_helpers import samples
from testnet_helpers import running_testnet

OPERATIONS = ("put_small_file", "get_small_file", "put_file", "get_file", "held_chunks")


def _served(net) -> dict[str, float]:
    """Requests node1 served, by operation (any outcome)."""
    counts = {op: 0.0 for op in OPERATIONS}
    for (sample, labels), count in samples(net.status()["node1"].status_page).items():
        labels = dict(labels)
        if sample == "p2pfs_requests_total" and labels.get("operation") in counts:
            counts[labels["operation"]] += count
    return counts


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {op: int(after[op] - before[op]) for op in after if after[op] != before[op]}


def _no_leftovers(target: Path) -> bool:
    return not any(p.name.endswith((PART_SUFFIX, STATE_SUFFIX)) for p in target.parent.iterdir())


def test_the_cli_puts_and_gets_small_files_in_one_message_and_larger_ones_resumably(tmp_path: Path) -> None:
    with running_testnet(tmp_path / "net", nodes=3) as net:
        files = {"inline.bin": os.urandom(4096), "chunked.bin": os.urandom(40 * 1024),
                 "cap.bin": os.urandom(64 * 1024), "empty.bin": b""}
        for name, data in files.items():
            source = tmp_path / name
            source.write_bytes(data)
            before = _served(net)
            stored = json.loads(net.cli("put", str(source), "--json").stdout)
            assert _delta(before, _served(net)) == {"put_small_file": 1}, name
            assert (stored["name"], stored["size_bytes"], stored["sent_bytes"]) == (name, len(data), len(data))
            assert stored["chunks"] in (0, 1) and set(stored["version"]) >= {"logical", "wall_ms"}

            out = tmp_path / "out" / name
            out.parent.mkdir(exist_ok=True)
            before = _served(net)
            got = json.loads(net.cli("get", name, "-o", str(out), "--json").stderr)
            assert _delta(before, _served(net)) == {"get_small_file": 1}, name
            assert out.read_bytes() == data
            assert (got["size_bytes"], got["received_bytes"], got["resumed_bytes"]) == (len(data), len(data), 0)
            assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
            assert _no_leftovers(out)

        # One byte past the cap: the resumable requests, as before (the get asked small first).
        large = os.urandom(64 * 1024 + 1)
        (tmp_path / "large.bin").write_bytes(large)
        before = _served(net)
        stored = json.loads(net.cli("put", str(tmp_path / "large.bin"), "--json").stdout)
        assert _delta(before, _served(net)) == {"held_chunks": 1, "put_file": 1}
        assert stored["sent_bytes"] == len(large)
        out = tmp_path / "out" / "large.bin"
        before = _served(net)
        got = json.loads(net.cli("get", "large.bin", "-o", str(out), "--json").stderr)
        assert _delta(before, _served(net)) == {"get_small_file": 1, "get_file": 1}
        assert out.read_bytes() == large and got["received_bytes"] == len(large)
        assert _no_leftovers(out)

        # What the CLI said before about a target that exists, and a name that does not.
        refused = net.cli("get", "inline.bin", "-o", str(tmp_path / "out" / "inline.bin"), check=False)
        assert refused.returncode == ExitCode.BAD_INPUT and b"exists" in refused.stderr
        forced = net.cli("get", "chunked.bin", "-o", str(tmp_path / "out" / "inline.bin"), "--force")
        assert forced.returncode == 0 and (tmp_path / "out" / "inline.bin").read_bytes() == files["chunked.bin"]
        missing = net.cli("get", "nothing.bin", "-o", str(tmp_path / "out" / "nothing.bin"), check=False)
        assert missing.returncode == ExitCode.NOT_FOUND and b"nothing.bin" in missing.stderr
        assert _no_leftovers(tmp_path / "out" / "nothing.bin")


def test_with_a_node_that_does_not_offer_them_the_cli_uses_the_resumable_requests(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    with running_testnet(tmp_path / "net", nodes=3) as net:
        # As with a node from before the small-file messages: the handshake agrees on nothing.
        monkeypatch.setattr(Client, "speaks_small_files", property(lambda self: False))
        data = os.urandom(4096)
        source = tmp_path / "old.bin"
        source.write_bytes(data)
        env = net.env()

        def cli_here(*args: str):
            return CliRunner().invoke(cli, ["--node", net.address("node1"), *args], env=env,
                                      catch_exceptions=False)

        before = _served(net)
        put = cli_here("put", str(source), "--json")
        assert put.exit_code == 0, put.output
        assert _delta(before, _served(net)) == {"held_chunks": 1, "put_file": 1}
        out = tmp_path / "back.bin"
        before = _served(net)
        got = cli_here("get", "old.bin", "-o", str(out))
        assert got.exit_code == 0, got.output
        assert _delta(before, _served(net)) == {"get_file": 1}
        assert out.read_bytes() == data


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
