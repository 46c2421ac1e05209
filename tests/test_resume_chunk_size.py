"""A put of a file is cut by the client: at the size the cluster is configured for, not the default."""

from __future__ import annotations

import json
import os

import pytest

from testnet_helpers import running_testnet

CHUNK_BYTES = 64 * 1024  # the cluster's, not the client's default (1 MiB)


@pytest.mark.integration
def test_a_file_put_is_cut_at_the_clusters_chunk_size(tmp_path):
    overrides = {"replication": {"chunk_size_bytes": CHUNK_BYTES}}
    with running_testnet(tmp_path / "net", nodes=3, overrides=overrides) as net:
        data = os.urandom(5 * CHUNK_BYTES + 123)
        source = tmp_path / "f.bin"
        source.write_bytes(data)
        stored = json.loads(net.cli("put", str(source), "--json", node="node1").stdout)
        assert stored["chunks"] == 6 and stored["sent_bytes"] == len(data)
        facts = json.loads(net.cli("stat", "f.bin", "--json", node="node2").stdout)
        assert [c["size_bytes"] for c in facts["chunks"]] == [CHUNK_BYTES] * 5 + [123]
        # Content addressing then works across both ways in: the same bytes streamed from
        # stdin (cut by the node) are already held, so a put of the file sends nothing.
        net.cli("put", "-", "--name", "g.bin", node="node3", stdin=data)
        again = json.loads(net.cli("put", str(source), "--name", "h.bin", "--json", node="node1").stdout)
        assert again["sent_bytes"] == 0
        back = tmp_path / "back.bin"
        net.cli("get", "h.bin", "-o", str(back), node="node3")
        assert back.read_bytes() == data
