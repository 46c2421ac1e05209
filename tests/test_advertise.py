"""The advertise address: a node listening on every interface tells its peers the address
they can dial, and refuses to start when it has none to tell."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p2pfs import identity, testnet
from p2pfs.address import Address
from p2pfs.config import CONFIG_FILE, NodeSettings
from p2pfs.errors import ConfigError
from p2pfs.node.config import load_node_config, render_node_config
from p2pfs.wire import Role

from testnet_helpers import CLI_TIMEOUT_S, running_testnet, wait_for

WILDCARD_MESSAGE = "set [node] advertise"


def test_a_wildcard_listen_needs_an_advertise_address(tmp_path):
    path = tmp_path / CONFIG_FILE
    for wildcard in ("0.0.0.0", "::"):
        path.write_text(f'[node]\nlisten = "{Address(wildcard, 7000)}"\n')
        with pytest.raises(ConfigError, match=r"every interface.*set \[node\] advertise"):
            load_node_config(path)
    path.write_text('[node]\nlisten = "0.0.0.0:7000"\nadvertise = "10.0.0.5:7000"\n')
    settings = load_node_config(path).node
    assert settings.listen == Address("0.0.0.0", 7000) and settings.advertise_address == Address("10.0.0.5", 7000)
    path.write_text('[node]\nlisten = "0.0.0.0:7000"\nadvertise = "0.0.0.0:7000"\n')
    with pytest.raises(ConfigError, match="must be an address peers can dial"):
        load_node_config(path)
    assert NodeSettings(listen=Address("10.0.0.5", 7000)).advertise_address == Address("10.0.0.5", 7000)


def test_the_rendered_file_reads_back_with_and_without_advertise(tmp_path):
    path = tmp_path / CONFIG_FILE
    for settings in (NodeSettings(), NodeSettings(listen=Address("::", 7000), advertise=Address("fd00::5", 7000))):
        path.write_text(render_node_config(settings))
        assert load_node_config(path).node == settings


def p2pfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2pfs", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


@pytest.mark.integration
def test_a_node_on_every_interface_is_known_by_its_advertised_address(tmp_path):
    with running_testnet(tmp_path / "net", nodes=2) as net:
        (port,) = testnet.os_chosen_ports(1)
        node_dir = net.directory / "node3"  # a testnet node by name: stopped with the others
        seed = net.address("node1")
        ca = str(net.directory / testnet.CA_DIR)

        refused = p2pfs("node", "init", str(node_dir), "--ca", ca, "--listen", f"0.0.0.0:{port}", "--seed", seed)
        assert refused.returncode != 0 and WILDCARD_MESSAGE in refused.stderr, refused.stderr
        assert not (node_dir / CONFIG_FILE).exists()

        created = p2pfs("node", "init", str(node_dir), "--ca", ca, "--listen", f"0.0.0.0:{port}",
                        "--advertise", f"127.0.0.1:{port}", "--seed", seed)
        assert created.returncode == 0, created.stderr
        testnet.start_node(node_dir)
        node3 = testnet.node_process(node_dir).node_id

        def seen_by_all() -> bool:
            for name in ("node1", "node2", "node3"):
                found = {mb["node_id"]: mb for mb in net.json("members", node=name)}
                if found.get(node3, {}).get("state") != "alive" or len(found) != 3:
                    return False
                assert found[node3]["address"] == f"127.0.0.1:{port}", found[node3]
            return True

        # Alive at node1 and node2: their probes reached it at the advertised address.
        wait_for(seen_by_all, timeout_s=60, what="node3 alive at 127.0.0.1 in every member table")
        assert net.json("status", node="node3")["address"] == f"127.0.0.1:{port}"


@pytest.mark.integration
def test_the_daemon_refuses_a_wildcard_without_advertise_and_says_what_to_set(tmp_path):
    authority = identity.init_ca(tmp_path / "ca")
    node_dir = tmp_path / "node"
    identity.create_identity(node_dir, authority, Role.NODE)
    (port,) = testnet.os_chosen_ports(1)
    (node_dir / CONFIG_FILE).write_text(f'[node]\nlisten = "0.0.0.0:{port}"\n')
    started = p2pfs("daemon", str(node_dir))
    assert started.returncode != 0
    assert "every interface" in started.stderr and WILDCARD_MESSAGE in started.stderr, started.stderr
