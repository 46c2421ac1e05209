"""Node-certificate claims (issue 12): `node init` has the CA sign them; a daemon that oversteps them does not start."""

from __future__ import annotations

import dataclasses

import pytest
import trio
from click.testing import CliRunner

from p2pfs import identity
from p2pfs.address import Address
from p2pfs.claims import NodeClaims, claims_of
from p2pfs.cli import cli
from p2pfs.errors import ConfigError
from p2pfs.node.config import load_node_config
from p2pfs.node.daemon import Node


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def node_dir(tmp_path):
    ca, n1 = tmp_path / "ca", tmp_path / "n1"
    assert run("ca", "init", str(ca)).exit_code == 0
    result = run("node", "init", str(n1), "--ca", str(ca), "--listen", "127.0.0.1:7101",
                 "--zone", "rack1", "--capacity", "2GiB", "--capacity-max", "4GiB")
    assert result.exit_code == 0, result.output
    return n1


def test_node_init_has_the_ca_sign_address_zone_and_capacity_ceiling(node_dir):
    cert = identity.load_identity(node_dir).cert
    assert claims_of(cert) == NodeClaims(Address("127.0.0.1", 7101), "rack1", 4 * 1024**3)


def test_capacity_max_below_capacity_is_refused(tmp_path):
    assert run("ca", "init", str(tmp_path / "ca")).exit_code == 0
    result = CliRunner().invoke(cli, ["node", "init", str(tmp_path / "n"), "--ca", str(tmp_path / "ca"),
                                      "--listen", "127.0.0.1:7101", "--capacity", "2GiB", "--capacity-max", "1GiB"])
    assert result.exit_code != 0 and "--capacity-max" in result.output


@pytest.mark.parametrize("change", [
    {"capacity_bytes": 5 * 1024**3},
    {"zone": "rack2"},
    {"listen": Address("127.0.0.1", 7102)},
])
def test_a_daemon_whose_configuration_oversteps_its_certificate_does_not_start(node_dir, change):
    cfg = load_node_config(node_dir / "p2pfs.toml")
    cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, **change))
    ident = identity.load_identity(node_dir)

    async def build():
        Node(cfg, ident)

    with pytest.raises(ConfigError, match="oversteps"):
        trio.run(build)


def test_a_daemon_within_its_certificate_is_built(node_dir):
    cfg = load_node_config(node_dir / "p2pfs.toml")
    cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, capacity_bytes=4 * 1024**3))

    async def build():
        return Node(cfg, identity.load_identity(node_dir))

    assert trio.run(build).records.certificate(identity.load_identity(node_dir).node_id)
