"""Local files written by `get`, and names shown by every command: real CLI, real daemons."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from p2pfs.cli import ExitCode
from testnet_helpers import CLI_TIMEOUT_S, running_testnet

pytestmark = pytest.mark.integration

FILE_BYTES = 1024 * 1024
DATA = os.urandom(FILE_BYTES)
# A small file system for the disk-full case: smaller than FILE_BYTES.
SMALL_FS_BYTES = 256 * 1024
# A name made to attack a terminal: colour, a window-title escape, a bell, a newline,
# and a right-to-left override.
EVIL_NAME = "evil/\x1b[31mred\x1b]0;pwned\x07\nline2\u202eokay"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("files"), nodes=3) as network:
        network.cli("put", "-", "--name", "f.bin", stdin=DATA)
        yield network


def get(net, *args: str, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p2pfs", "--node", net.address("node1"), "get", "f.bin", *args],
        capture_output=True, env=net.env(), timeout=CLI_TIMEOUT_S,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, options: str) -> Iterator[Path]:
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def device_node(path: Path, major: int, minor: int) -> Path:
    """A character device node of our own (never the system's /dev: the bug replaced them)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("cannot create device nodes here (needs CAP_MKNOD)")
    return path


def test_a_full_device_is_written_through_and_reported_in_one_line(net, tmp_path):
    full = device_node(tmp_path / "full", 1, 7)  # what /dev/full is
    result = get(net, "-o", str(full), "--force")
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.LOCAL_DISK, stderr
    assert stderr.strip().splitlines() == [f"error: cannot write {full}: No space left on device"]
    assert stat.S_ISCHR(os.lstat(full).st_mode), "the device node was replaced"


def test_a_device_is_written_through_without_force(net, tmp_path):
    null = device_node(tmp_path / "null", 1, 3)  # what /dev/null is
    result = get(net, "-o", str(null))
    assert result.returncode == 0, result.stderr.decode()
    assert stat.S_ISCHR(os.lstat(null).st_mode), "the device node was replaced"


def test_a_fifo_is_written_through(net, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = bytearray()

    def read() -> None:
        with open(fifo, "rb") as f:
            while data := f.read(65536):
                received.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = get(net, "-o", str(fifo))
    with contextlib.suppress(OSError):  # a get that never opened the FIFO left the reader waiting
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr.decode()
    assert bytes(received) == DATA
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"


def test_a_symlink_is_followed_and_stays_a_link(net, tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    refused = get(net, "-o", str(link))
    assert refused.returncode == ExitCode.BAD_INPUT and b"--force" in refused.stderr
    result = get(net, "-o", str(link), "--force")
    assert result.returncode == 0, result.stderr.decode()
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == DATA


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_a_new_file_respects_the_umask(net, tmp_path, umask, mode):
    out = tmp_path / "out.bin"
    result = get(net, "-o", str(out), umask=umask)
    assert result.returncode == 0, result.stderr.decode()
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_an_overwritten_file_keeps_its_mode(net, tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    out.chmod(0o604)
    result = get(net, "-o", str(out), "--force", umask=0o077)
    assert result.returncode == 0, result.stderr.decode()
    assert stat.S_IMODE(out.stat().st_mode) == 0o604 and out.read_bytes() == DATA


def test_a_full_disk_is_one_line_and_leaves_nothing(net, tmp_path):
    with mounted_tmpfs(tmp_path / "small", f"size={SMALL_FS_BYTES}") as small:
        result = get(net, "-o", str(small / "out.bin"))
        left = list(small.iterdir())
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.LOCAL_DISK, stderr
    assert stderr.strip().splitlines() == [f"error: cannot write {small / 'out.bin'}: No space left on device"]
    assert left == []


def test_a_read_only_disk_is_one_line_and_leaves_nothing(net, tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as read_only:
        result = get(net, "-o", str(read_only / "out.bin"))
        left = list(read_only.iterdir())
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.LOCAL_DISK, stderr
    assert stderr.strip().splitlines() == [f"error: cannot write {read_only}: Read-only file system"]
    assert left == []


def test_names_with_control_characters_are_printed_escaped(net, tmp_path):
    outputs = [
        net.cli("put", "-", "--name", EVIL_NAME, stdin=b"x"),
        net.cli("ls"),
        net.cli("ls", "evil/"),
        net.cli("stat", EVIL_NAME),
        net.cli("get", EVIL_NAME, "-o", str(tmp_path / "evil.out")),
        net.cli("rm", EVIL_NAME),
        net.cli("stat", EVIL_NAME, check=False),
    ]
    for result in outputs:
        for stream in (result.stdout, result.stderr):
            text = stream.decode()
            assert all(c.isprintable() or c == "\n" for c in text), text
            assert "\nline2" not in text, text
    escaped = repr(EVIL_NAME)
    assert escaped in outputs[0].stdout.decode()
    assert escaped in outputs[1].stdout.decode()
    assert escaped in outputs[3].stdout.decode()
    assert escaped in outputs[5].stdout.decode()
    assert outputs[6].returncode == ExitCode.NOT_FOUND


def test_json_output_on_a_terminal_has_no_progress_line(net, tmp_path):
    """Progress is drawn on stderr when it is a terminal, but never under --json."""
    import json
    import pty

    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "p2pfs", "--node", net.address("node1"), "get", "f.bin",
             "-o", str(tmp_path / "out.bin"), "--json"],
            stdout=subprocess.PIPE, stderr=terminal, env=net.env(), timeout=CLI_TIMEOUT_S)
        os.close(terminal)
        terminal = -1
        printed = bytearray()
        with contextlib.suppress(OSError):  # EIO once everything written has been read
            while chunk := os.read(controller, 65536):
                printed.extend(chunk)
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert result.returncode == 0, printed.decode()
    assert json.loads(printed.decode())["size_bytes"] == FILE_BYTES
