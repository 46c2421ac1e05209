"""Who may read a node's files: its own user alone (storage/modes.py), and keys that others can
read are refused at load, as ssh refuses them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from p2pfs import identity, testnet
from p2pfs.cli.base import ExitCode
from p2pfs.errors import AuthError
from p2pfs.replication.antientropy import ANTI_ENTROPY_DIR_NAME
from p2pfs.storage.names import NameIndex
from p2pfs.wire import Role

from testnet_helpers import running_testnet, wait_for


def _modes_under(root) -> dict[str, int]:
    found = {str(root): stat.S_IMODE(os.stat(root).st_mode)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            found[path] = stat.S_IMODE(os.stat(path).st_mode)
    return found


@pytest.fixture
def usual_umask():
    """The usual umask, under which data was 0644 / 0755 before; the daemons inherit it."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_nodes_data_is_private_after_a_put(tmp_path, usual_umask):
    source = tmp_path / "file"
    source.write_bytes(os.urandom(300_000))
    data = tmp_path / "net" / "node1" / "data"
    overrides = {"replication": {"anti_entropy_interval_s": 1.0}}
    with running_testnet(tmp_path / "net", nodes=3, overrides=overrides) as net:
        net.cli("put", str(source), "--name", "private")
        # An anti-entropy round keeps what it walked on disk (the keys of each bucket).
        wait_for(lambda: any(f for _, _, f in os.walk(data / ANTI_ENTROPY_DIR_NAME)), timeout_s=60,
                 what="an anti-entropy round's key files")
        modes = _modes_under(data)
    files = {path: mode for path, mode in modes.items() if not os.path.isdir(path)}
    assert any("chunks" in path for path in files), sorted(modes)
    assert any(ANTI_ENTROPY_DIR_NAME in path for path in files), sorted(modes)
    assert any(path.endswith("names.sqlite") for path in files), sorted(modes)
    assert any(path.endswith("hints.sqlite") for path in files), sorted(modes)
    wrong = {path: f"{mode:04o}" for path, mode in modes.items()
             if mode != (0o700 if os.path.isdir(path) else 0o600)}
    assert not wrong, wrong


def test_a_name_index_left_readable_is_tightened_with_its_wal(tmp_path):
    path = tmp_path / "names.sqlite"
    with NameIndex(path):
        pass
    for leftover in (path, tmp_path / "names.sqlite-wal"):
        leftover.touch()
        os.chmod(leftover, 0o644)
    with NameIndex(path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "names.sqlite-wal").st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_others_can_read_is_refused_with_the_fix(tmp_path, mode):
    authority = identity.init_ca(tmp_path / "ca")
    identity.create_identity(tmp_path / "node", authority, Role.NODE)
    key = tmp_path / "node" / identity.KEY_FILE
    os.chmod(key, mode)
    with pytest.raises(AuthError, match=f"chmod 600 {key}"):
        identity.load_identity(tmp_path / "node")
    os.chmod(tmp_path / "ca" / identity.CA_KEY_FILE, mode)
    with pytest.raises(AuthError, match="chmod 600"):
        identity.load_ca(tmp_path / "ca")
    os.chmod(key, 0o600)
    assert identity.load_identity(tmp_path / "node").role is Role.NODE


def test_a_daemon_with_a_readable_key_does_not_start(tmp_path):
    testnet.create(tmp_path / "net", 1, 0)
    node_dir = tmp_path / "net" / "node1"
    key = node_dir / identity.KEY_FILE
    os.chmod(key, 0o644)
    result = subprocess.run([sys.executable, "-m", "p2pfs", "daemon", str(node_dir)],
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.AUTH, (result.returncode, stderr)
    assert f"chmod 600 {key}" in stderr, stderr
