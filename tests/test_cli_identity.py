"""Identity commands and config loading, through the CLI as a user runs them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from p2pfs import identity
from p2pfs.config import NodeSettings
from p2pfs.cli import ExitCode, cli
from p2pfs.errors import ConfigError
from p2pfs.node.config import load_node_config, render_node_config
from p2pfs.wire import Role


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_init_commands_create_identities_with_private_keys_0600(tmp_path):
    ca, n1, c = tmp_path / "ca", tmp_path / "n1", tmp_path / "c"
    assert run("ca", "init", str(ca)).exit_code == 0
    result = run("node", "init", str(n1), "--ca", str(ca), "--listen", "127.0.0.1:7101",
                 "--seed", "127.0.0.1:7102", "--zone", "rack1", "--capacity", "2GiB")
    assert result.exit_code == 0, result.output
    assert run("client", "init", str(c), "--ca", str(ca), "--node", "127.0.0.1:7101").exit_code == 0
    for key in (ca / "ca.key", n1 / "key.pem", c / "key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    node_ident = identity.load_identity(n1)
    client_ident = identity.load_identity(c)
    assert node_ident.role is Role.NODE and client_ident.role is Role.CLIENT
    assert node_ident.cluster_id == client_ident.cluster_id
    assert node_ident.node_id in result.output
    cfg = load_node_config(n1 / "p2pfs.toml")
    assert str(cfg.node.listen) == "127.0.0.1:7101"
    assert [str(s) for s in cfg.node.seeds] == ["127.0.0.1:7102"]
    assert cfg.node.zone == "rack1" and cfg.node.capacity_bytes == 2 * 1024**3
    assert cfg.data_dir == n1 / "data"


def test_init_commands_refuse_to_overwrite(tmp_path):
    ca, n1 = tmp_path / "ca", tmp_path / "n1"
    run("ca", "init", str(ca))
    before = (ca / "ca.key").read_bytes()
    result = run("ca", "init", str(ca))
    assert result.exit_code == ExitCode.BAD_INPUT and "refusing to overwrite" in result.output
    assert (ca / "ca.key").read_bytes() == before
    run("node", "init", str(n1), "--ca", str(ca), "--listen", "127.0.0.1:7101")
    key_before = (n1 / "key.pem").read_bytes()
    result = run("node", "init", str(n1), "--ca", str(ca), "--listen", "127.0.0.1:7101")
    assert result.exit_code == ExitCode.BAD_INPUT and "refusing to overwrite" in result.output
    assert (n1 / "key.pem").read_bytes() == key_before


@pytest.mark.parametrize(
    "args,message",
    [
        (["node", "init", "X", "--ca", "CA", "--listen", "nohost"], "not HOST:PORT"),
        (["node", "init", "X", "--ca", "CA", "--listen", "127.0.0.1:99999"], "out of range"),
        (["node", "init", "X", "--ca", "CA", "--listen", "127.0.0.1:7000", "--capacity", "lots"],
         "not a size"),
        (["node", "init", "X", "--ca", "missing", "--listen", "127.0.0.1:7000"], "not found"),
        (["whoami"], "give an identity"),
    ],
)
def test_bad_input_is_a_clear_error_without_traceback(tmp_path, args, message):
    run("ca", "init", str(tmp_path / "CA"))
    args = [str(tmp_path / a) if a in ("X", "CA", "missing") else a for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_help_lists_the_commands():
    result = run("--help")
    for command in ("ca", "node", "client", "whoami"):
        assert f"  {command}" in result.output


def test_rendered_config_loads_back_to_the_same_settings(tmp_path):
    settings = NodeSettings()
    path = tmp_path / "p2pfs.toml"
    path.write_text(render_node_config(settings))
    assert load_node_config(path).node == settings


@pytest.mark.parametrize(
    "text,message",
    [
        ('[node]\nlisten = "127.0.0.1:7000"\nprobe = 1\n', "[node] probe: unknown option"),
        ('[node]\nlisten = 7000\n', "[node] listen: expected a string"),
        ('[node]\nlisten = "127.0.0.1:7000"\ncapacity_bytes = "huge"\n', "[node] capacity_bytes"),
        ('[node]\nlisten = "127.0.0.1:7000"\n[net]\nconnect_timeout_s = "soon"\n',
         "[net] connect_timeout_s: expected a number"),
        ('[node]\nlisten = "127.0.0.1:7000"\n[nett]\n', "unknown section [nett]"),
        ('[node]\nzone = "a"\n', "[node] listen is required"),
        ('[node\n', "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "p2pfs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    assert message in str(info.value)


def test_example_config_in_the_repository_is_current():
    """configs/node.example.toml is generated from the code; regenerate it if this fails
    (python -m p2pfs.node.config > configs/node.example.toml)."""
    from pathlib import Path

    from p2pfs.node.config import example_config

    example = Path(__file__).parent.parent / "configs" / "node.example.toml"
    assert example.read_text() == example_config()


def test_node_init_refuses_a_zone_with_control_characters_and_writes_nothing(tmp_path):
    run("ca", "init", str(tmp_path / "ca"))
    node_dir = tmp_path / "n1"
    result = CliRunner().invoke(cli, ["node", "init", str(node_dir), "--ca", str(tmp_path / "ca"),
                                      "--listen", "127.0.0.1:7101", "--zone", "rack\n1"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "control characters" in result.output and "Traceback" not in result.output
    assert not (node_dir / "key.pem").exists() and not (node_dir / "p2pfs.toml").exists()


def test_node_init_writes_any_printable_zone_and_sizes_as_units(tmp_path):
    run("ca", "init", str(tmp_path / "ca"))
    zone = 'rack "1" \\ ünï = [x]'
    result = run("node", "init", str(tmp_path / "n1"), "--ca", str(tmp_path / "ca"),
                 "--listen", "127.0.0.1:7101", "--zone", zone, "--capacity", "2GiB")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "n1" / "p2pfs.toml").read_text()
    assert 'capacity_bytes = "2GiB"' in text
    assert '# chunk_size_bytes = "1MiB"' in text
    cfg = load_node_config(tmp_path / "n1" / "p2pfs.toml")
    assert cfg.node.zone == zone and cfg.node.capacity_bytes == 2 * 1024**3


def test_rendered_config_escapes_every_string(tmp_path):
    settings = NodeSettings(data_dir=Path('da\nta "x" \\ \t'))
    path = tmp_path / "p2pfs.toml"
    path.write_text(render_node_config(settings))
    assert load_node_config(path).node == settings


def test_help_shows_the_capacity_default_as_a_size():
    result = run("node", "init", "--help")
    assert "[default: 10GiB]" in " ".join(result.output.split())


def test_client_init_saves_the_node_as_toml(tmp_path):
    run("ca", "init", str(tmp_path / "ca"))
    result = run("client", "init", str(tmp_path / "c"), "--ca", str(tmp_path / "ca"),
                 "--node", "[::1]:7101")
    assert result.exit_code == 0, result.output
    import tomllib

    assert tomllib.loads((tmp_path / "c" / "client.toml").read_text()) == {"node": "[::1]:7101"}
