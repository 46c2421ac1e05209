"""The global --node: one address, several (comma-separated, repeated, or in P2PFS_NODE),
and the commands that must speak to exactly one node."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from p2pfs import identity
from p2pfs.cli import ExitCode, cli
from p2pfs.wire import Role


@pytest.fixture
def client_dir(tmp_path):
    authority = identity.init_ca(tmp_path / "ca")
    identity.create_identity(tmp_path / "client", authority, Role.CLIENT)
    return tmp_path / "client"


@pytest.mark.parametrize("args, env", [
    (["--node", "127.0.0.1:7001,127.0.0.1:7002"], {}),
    (["--node", "127.0.0.1:7001", "--node", "127.0.0.1:7002"], {}),
    ([], {"P2PFS_NODE": "127.0.0.1:7001,127.0.0.1:7002"}),
    ([], {"P2PFS_NODE": "127.0.0.1:7001 127.0.0.1:7002"}),
])
def test_every_form_gives_both_nodes_and_leave_refuses_more_than_one(client_dir, args, env):
    result = CliRunner().invoke(cli, ["--identity", str(client_dir), *args, "leave"], env=env)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "2 were given (127.0.0.1:7001, 127.0.0.1:7002)" in result.output


def test_an_empty_address_in_the_list_is_a_usage_error():
    result = CliRunner().invoke(cli, ["--node", "127.0.0.1:7001,", "ls"])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "empty address" in result.output
