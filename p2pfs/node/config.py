"""The whole of a node's configuration: one section per room, in one TOML file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from p2pfs import config
from p2pfs.node.admin.config import AdminConfig
from p2pfs.config import NodeSettings
from p2pfs.errors import ConfigError
from p2pfs.membership import MembershipConfig
from p2pfs.net import NetConfig
from p2pfs.replication.config import ReplicationConfig

# Section name -> the room's config dataclass. The order is the order in the file.
SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "replication": ReplicationConfig,
    "membership": MembershipConfig,
    "net": NetConfig,
    "admin": AdminConfig,
}

_HEADER = """\
# p2pfs node configuration.
#
# Every option is listed with its documentation and default. Lines starting
# with '#' are defaults left as they are: uncomment and edit to change one.
# Units are in the option names (_s: seconds, _bytes: bytes; sizes may also be
# written like "10GiB"). `p2pfs daemon DIR` reads DIR/p2pfs.toml.
"""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSettings
    replication: ReplicationConfig
    membership: MembershipConfig
    net: NetConfig
    admin: AdminConfig
    path: Path | None = None

    @property
    def data_dir(self) -> Path:
        """The data directory, relative paths taken from the config file's directory."""
        if self.node.data_dir.is_absolute() or self.path is None:
            return self.node.data_dir
        return self.path.parent / self.node.data_dir


def load_node_config(path: Path) -> NodeConfig:
    """Read and check a node's config file. Raises ConfigError naming the key."""
    table = config.read_toml(path)
    for key in table:
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{key}] (known: {', '.join(SECTIONS)})")
    sections = {
        name: config.load_section(cls, table.get(name, {}), name) for name, cls in SECTIONS.items()
    }
    if "node" not in table or "listen" not in table["node"]:
        raise ConfigError(f"{path}: [node] listen is required")
    return NodeConfig(**sections, path=path)


def render_node_config(node: NodeSettings, overrides: dict[str, dict] | None = None) -> str:
    """A complete, documented config file: [node] values set, ``overrides`` (section ->
    option -> value) set in other sections, everything else commented out at its default."""
    overrides = overrides or {}
    unknown = set(overrides) - set(SECTIONS) - {"node"}
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
    parts = [_HEADER]
    for name, cls in SECTIONS.items():
        if name == "node":
            values = node
        else:
            try:
                values = dataclasses.replace(cls(), **overrides.get(name, {}))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"[{name}] {exc}") from None
        parts.append(config.render_section(name, values, commented=name != "node"))
    return "\n".join(parts).rstrip() + "\n"


def parse_override(text: str) -> tuple[str, str, object]:
    """``SECTION.OPTION=VALUE`` (VALUE as TOML) for ``testnet up --set``; ConfigError if malformed."""
    import tomllib

    key, sep, value = text.partition("=")
    section, dot, option = key.strip().partition(".")
    if not sep or not dot or section not in SECTIONS:
        raise ConfigError(f"{text!r} is not SECTION.OPTION=VALUE (sections: {', '.join(SECTIONS)})")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word: take it as a string
    known = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if option not in known:
        raise ConfigError(f"[{section}] {option}: unknown option")
    table = config.load_section(SECTIONS[section], {option: parsed}, section)
    return section, option, getattr(table, option)


def example_config() -> str:
    """The text of configs/node.example.toml: every option at its default."""
    return render_node_config(NodeSettings())


if __name__ == "__main__":
    print(example_config(), end="")
