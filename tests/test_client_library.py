"""p2pfs.client's arguments: str or Path for files and identities, names checked, nodes
from the caller, the environment or client.toml, and p2pfs.errors classes throughout."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
import trio

from p2pfs import errors
from p2pfs.address import Address
from p2pfs.client import Cluster, cluster_name, connect
from p2pfs.client.settings import CLIENT_CONFIG_FILE, node_addresses
from p2pfs.identity import Identity

A, B = Address("127.0.0.1", 7001), Address("127.0.0.1", 7002)


def test_names_are_str_or_path_like_and_checked():
    assert cluster_name("photos/a.jpg") == "photos/a.jpg"
    assert cluster_name(PurePosixPath("photos") / "a.jpg") == "photos/a.jpg"
    with pytest.raises(errors.BadInput, match="bad name"):
        cluster_name("")
    with pytest.raises(errors.BadInput, match="a name is text"):
        cluster_name(b"bytes")


def test_nodes_come_from_the_caller_then_the_environment_then_client_toml(tmp_path, monkeypatch):
    monkeypatch.delenv("P2PFS_NODE", raising=False)
    assert node_addresses(["127.0.0.1:7001", B, "127.0.0.1:7001"], tmp_path) == (A, B)
    assert node_addresses("127.0.0.1:7001, 127.0.0.1:7002", tmp_path) == (A, B)
    with pytest.raises(errors.BadInput, match="no node given"):
        node_addresses(None, tmp_path)
    (tmp_path / CLIENT_CONFIG_FILE).write_text('node = "127.0.0.1:7002,127.0.0.1:7001"\n')
    assert node_addresses(None, tmp_path) == (B, A)
    monkeypatch.setenv("P2PFS_NODE", "127.0.0.1:7001")
    assert node_addresses(None, tmp_path) == (A,)
    with pytest.raises(errors.BadInput, match="bad node address"):
        node_addresses("127.0.0.1", tmp_path)


def test_connect_needs_an_identity(monkeypatch, tmp_path):
    monkeypatch.delenv("P2PFS_IDENTITY", raising=False)
    with pytest.raises(errors.BadInput, match="no identity given"):
        connect()
    with pytest.raises(errors.BadInput, match="does not exist"):
        connect(tmp_path / "missing", nodes="127.0.0.1:7001")


def test_a_local_file_that_cannot_be_put_is_bad_input(tmp_path):
    cluster = Cluster(Identity.__new__(Identity), [A])
    with pytest.raises(errors.BadInput, match="no such file"):
        trio.run(cluster.put, tmp_path / "missing.txt")
    with pytest.raises(errors.BadInput, match="is a directory"):
        trio.run(cluster.put, str(tmp_path))
    with open(__file__, "rb") as stream, pytest.raises(errors.BadInput, match="needs a name"):
        trio.run(cluster.put, stream)
