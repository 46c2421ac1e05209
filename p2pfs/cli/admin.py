"""Identities (``ca init``, ``node init``, ``client init``, ``whoami``) and the daemon."""

from __future__ import annotations

import datetime
from pathlib import Path

import click

from p2pfs import errors
from p2pfs.address import Address
from p2pfs.config import CONFIG_FILE, NodeSettings, format_size_exact
from p2pfs.errors import BadInput
from p2pfs.cli.base import (
    ADDRESS, CLIENT_CONFIG_FILE, JSON_OPTION, SIZE, Context, call_one, cli, emit, pass_context, shown,
    time_facts,
)


@cli.group()
def ca() -> None:
    """The cluster's certificate authority."""


@ca.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@JSON_OPTION
def ca_init(directory: Path, as_json: bool) -> None:
    """Create a cluster CA in DIR (its private key is written 0600).

    Refuses to overwrite an existing CA. Keep DIR safe: whoever holds ca.key can
    admit nodes and clients to the cluster.
    """
    from p2pfs import identity

    authority = identity.init_ca(directory)
    if as_json:
        emit({"directory": str(directory), "cluster_id": authority.cluster_id.hex()})
        return
    click.echo(f"created CA in {shown(str(directory))}")
    click.echo(f"cluster id: {authority.cluster_id.hex()[:16]}")


@ca.command("revoke")
@click.argument("what", metavar="ID|CERT")
@click.option("--ca", "ca_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              metavar="CA_DIR", help="The cluster CA directory (from `p2pfs ca init`).")
@JSON_OPTION
def ca_revoke(what: str, ca_dir: Path, as_json: bool) -> None:
    """Revoke a node's or client's key: ID (its id, or the first 8 or more hex digits of it) or
    CERT (a certificate file).

    Adds every certificate the CA issued for that key to CA_DIR/crl.pem, a standard
    X.509 CRL with a higher CRL number. Then hand it to any one node with
    `p2pfs crl push CA_DIR/crl.pem` (an admin client): it spreads to every node,
    which refuse the key and close its connections from then on.
    """
    import datetime as dt

    from p2pfs import identity, revocation

    authority = identity.load_ca(ca_dir)
    certs = _certificates_to_revoke(what, ca_dir)
    crl = revocation.revoke(ca_dir, authority.key, authority.cert, certs, dt.datetime.now(dt.timezone.utc))
    ids = sorted({identity.node_id_of(c) for c in certs})
    if as_json:
        emit({"crl": str(ca_dir / revocation.CRL_FILE), "crl_number": crl.number, "revoked_ids": ids,
              "revoked_serials": [f"{c.serial_number:x}" for c in certs], "revoked_total": len(crl.serials)})
        return
    for cert in certs:
        click.echo(f"revoked {identity.role_of(cert).value} {identity.node_id_of(cert)[:12]} "
                   f"(serial {cert.serial_number:x})")
    click.echo(f"CRL {crl.number} written to {shown(str(ca_dir / revocation.CRL_FILE))}; "
               f"hand it to a node with: p2pfs crl push {shown(str(ca_dir / revocation.CRL_FILE))}")


def _certificates_to_revoke(what: str, ca_dir: Path) -> list:
    """The certificates ``what`` names: a certificate file, or every one issued for a key id (prefix)."""
    from cryptography import x509

    from p2pfs import identity, revocation

    path = Path(what)
    if path.is_file():
        try:
            return [x509.load_pem_x509_certificate(path.read_bytes())]
        except ValueError as exc:
            raise BadInput(f"{what} is not a PEM certificate: {exc}") from None
    wanted = what.lower()
    if len(wanted) < revocation.ID_PREFIX_CHARS_MIN or not all(c in "0123456789abcdef" for c in wanted):
        raise BadInput(f"{what!r} is neither a certificate file nor an id "
                       f"({revocation.ID_PREFIX_CHARS_MIN} or more hex digits)")
    issued = revocation.issued_certificates(ca_dir)
    matches = [c for c in issued if identity.node_id_of(c).startswith(wanted)]
    ids = {identity.node_id_of(c) for c in matches}
    if not matches:
        raise BadInput(f"this CA has no record of issuing a certificate for id {what} "
                       f"(revoke it by its certificate file instead)")
    if len(ids) > 1:
        raise BadInput(f"{what} matches {len(ids)} ids ({', '.join(i[:16] for i in sorted(ids))}): give more digits")
    return matches


@cli.group()
def crl() -> None:
    """Certificate revocation lists (made by `p2pfs ca revoke`)."""


@crl.command("push")
@click.argument("crl_file", type=click.Path(path_type=Path, dir_okay=False, exists=True), metavar="CRL")
@JSON_OPTION
@pass_context
def crl_push(ctx: Context, crl_file: Path, as_json: bool) -> None:
    """Hand a CRL (e.g. CA_DIR/crl.pem) to the node given with --node (admin role).

    The node checks the CA's signature, takes it if its number is higher than the
    one it holds, and spreads it to every node; each then refuses the revoked keys
    at the handshake, closes their connections and drops revoked nodes from its
    member list. The CRL survives restarts.
    """
    from p2pfs import revocation

    try:
        crl_der = revocation.RevocationList.parse(crl_file.read_bytes()).der()
    except OSError as exc:
        raise BadInput(f"cannot read {crl_file}: {exc.strerror}") from None
    reply = call_one(ctx, "push_crl", crl_der)
    if as_json:
        emit({"address": str(ctx.node_address()), "accepted": reply.accepted, "crl_number": reply.crl_number})
        return
    if reply.accepted:
        click.echo(f"{ctx.node_address()} took CRL {reply.crl_number} and is spreading it")
    else:
        click.echo(f"{ctx.node_address()} already holds CRL {reply.crl_number}, as new or newer")


@cli.command("reload")
@JSON_OPTION
@pass_context
def reload_identity(ctx: Context, as_json: bool) -> None:
    """Have the node given with --node re-read its certificate, key, trusted CAs and CRL
    from its identity directory (admin role), as SIGHUP does; open connections stay."""
    reply = call_one(ctx, "reload")
    if as_json:
        emit({"address": str(ctx.node_address()), "changes": list(reply.changes)})
        return
    click.echo(f"{ctx.node_address()} reloaded: {', '.join(reply.changes) or 'nothing changed'}")


_CA_OPTION = click.option(
    "--ca", "ca_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
    metavar="CA_DIR", help="The cluster CA directory (from `p2pfs ca init`).",
)


@cli.group()
def node() -> None:
    """Node identities."""


@node.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@_CA_OPTION
@click.option("--listen", required=True, type=ADDRESS, help="Address the node accepts connections on.")
@click.option("--advertise", type=ADDRESS, default=None,
              help="Address peers and clients dial, if not --listen (needed with 0.0.0.0 or [::]).")
@click.option("--seed", "seeds", multiple=True, type=ADDRESS,
              help="A member to join through (repeatable).")
@click.option("--zone", default="", help="Failure zone name (rack, machine, ...).")
@click.option("--capacity", "capacity_bytes", type=SIZE,
              default=str(format_size_exact(NodeSettings().capacity_bytes)), show_default=True,
              help="Disk space offered for chunks, e.g. 10GiB.")
@click.option("--capacity-max", "capacity_bytes_max", type=SIZE, default=None,
              help="Most capacity the certificate lets the node offer (default: --capacity); "
                   "peers refuse more.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("data"), show_default=True,
              help="Data directory (relative to DIR unless absolute).")
@JSON_OPTION
def node_init(directory: Path, ca_dir: Path, listen: Address, seeds: tuple[Address, ...],
              zone: str, capacity_bytes: int, capacity_bytes_max: int | None, data_dir: Path,
              as_json: bool, advertise: Address | None) -> None:
    """Create a node identity and a documented config file DIR/p2pfs.toml.

    The CA signs the node's address (the advertised one), zone and capacity ceiling
    into its certificate; peers refuse announcements beyond them.
    """
    if listen.port == 0:
        raise BadInput("--listen needs a fixed port, not 0")
    if capacity_bytes <= 0:
        raise BadInput("--capacity must be more than 0")
    if capacity_bytes_max is not None and capacity_bytes_max < capacity_bytes:
        raise BadInput("--capacity-max must be at least --capacity")
    if (directory / CONFIG_FILE).exists():
        raise BadInput(f"{directory / CONFIG_FILE} already exists; refusing to overwrite it")
    try:
        settings = NodeSettings(listen=listen, advertise=advertise, seeds=seeds, zone=zone,
                                capacity_bytes=capacity_bytes, data_dir=data_dir)
    except ValueError as exc:  # checked before anything is written
        raise BadInput(str(exc)) from None
    from p2pfs import identity
    from p2pfs.claims import NodeClaims
    from p2pfs.node.config import render_node_config
    from p2pfs.wire import Role

    authority = identity.load_ca(ca_dir)
    claims = NodeClaims(settings.advertise_address, zone,
                        capacity_bytes if capacity_bytes_max is None else capacity_bytes_max)
    ident = identity.create_identity(directory, authority, Role.NODE, claims=claims)
    (directory / CONFIG_FILE).write_text(render_node_config(settings))
    if as_json:
        emit({"node_id": ident.node_id, "directory": str(directory), "config": str(directory / CONFIG_FILE),
               "address": str(settings.advertise_address)})
        return
    click.echo(f"created node {ident.node_id} in {shown(str(directory))}")
    click.echo(f"start it with: p2pfs daemon {shown(str(directory))}")


@cli.group()
def client() -> None:
    """Client identities (for the CLI)."""


_ROLE_NAMES = ("read", "write", "admin")  # p2pfs.access.ClientRole, without importing it at start-up


@client.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@_CA_OPTION
@click.option("--node", "node_address", type=ADDRESS, default=None,
              help="Node this client talks to by default.")
@click.option("--role", type=click.Choice(_ROLE_NAMES), default="read", show_default=True,
              help="What the key may do: read (get, ls, stat, members, status), write (also put and rm), "
                   "admin (also leave, fsck, reload, revocation). The default is the least: a key made "
                   "in passing and then leaked exposes reads only.")
@click.option("--prefix", "prefixes", multiple=True, metavar="PREFIX",
              help="Limit put and rm to names starting with PREFIX (repeatable; write and admin roles). "
                   "Without it a write key may write every name.")
@JSON_OPTION
def client_init(directory: Path, ca_dir: Path, node_address: Address | None, role: str,
                prefixes: tuple[str, ...], as_json: bool) -> None:
    """Create a client identity in DIR for use with --identity.

    The role and prefixes are signed into the certificate by the CA, and every node
    judges every request by them; to change them, make a new identity and revoke
    the old one (`p2pfs ca revoke`).
    """
    from p2pfs import access, identity
    from p2pfs.wire import Role

    try:
        grant = access.Grant(access.ClientRole(role), prefixes)
    except access.GrantError as exc:
        raise BadInput(f"--prefix: {exc}") from None
    authority = identity.load_ca(ca_dir)
    ident = identity.create_identity(directory, authority, Role.CLIENT, grant=grant)
    if node_address is not None:
        import tomli_w

        (directory / CLIENT_CONFIG_FILE).write_text(
            "# Default node for this client; --node or P2PFS_NODE override it.\n"
            + tomli_w.dumps({"node": str(node_address)})
        )
    if as_json:
        emit({"node_id": ident.node_id, "directory": str(directory),
               "address": str(node_address) if node_address else None,
               "role": grant.role.value, "prefixes": list(grant.prefixes)})
        return
    click.echo(f"created {grant.describe()} client {ident.node_id[:12]} in {shown(str(directory))}")
    click.echo(f"use it with: export P2PFS_IDENTITY={directory.resolve()}")


def _renew(directory: Path, ca_dir: Path, days: int, as_json: bool, role: str) -> None:
    from p2pfs import identity

    authority = identity.load_ca(ca_dir)
    before = identity.load_identity(directory)
    if before.role.value != role:
        raise BadInput(f"{directory} holds a {before.role.value} identity; use `p2pfs {before.role.value} renew`")
    ident = identity.renew_identity(directory, authority, days=days)
    facts = {"node_id": ident.node_id, "directory": str(directory), "serial": f"{ident.cert.serial_number:x}",
             **time_facts("not_valid_after", int(ident.cert.not_valid_after_utc.timestamp() * 1000))}
    if as_json:
        emit(facts)
        return
    click.echo(f"renewed {role} {ident.node_id[:12]} in {shown(str(directory))}: valid to "
               f"{ident.cert.not_valid_after_utc:%Y-%m-%d}")
    if role == "node":
        click.echo("a running node takes it up on SIGHUP or `p2pfs --node ADDRESS reload`")


_DAYS_OPTION = click.option(
    "--days", type=click.IntRange(min=1), default=365, show_default=True,
    help="Days the new certificate is valid (p2pfs.identity.CERT_VALIDITY_DAYS_DEFAULT says why a year).",
)


@node.command("renew")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@_CA_OPTION
@_DAYS_OPTION
@JSON_OPTION
def node_renew(directory: Path, ca_dir: Path, days: int, as_json: bool) -> None:
    """Give the node in DIR a new certificate for its key (its id stays), signed by CA_DIR.

    Everything the old certificate said is kept; only the validity window and serial are new.
    With a new CA (a rotation) that CA is also added to DIR/ca.pem. A running node takes
    it up on SIGHUP or `p2pfs reload`, without dropping connections.
    """
    _renew(directory, ca_dir, days, as_json, "node")


@client.command("renew")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@_CA_OPTION
@_DAYS_OPTION
@JSON_OPTION
def client_renew(directory: Path, ca_dir: Path, days: int, as_json: bool) -> None:
    """Give the client in DIR a new certificate for its key, with the same role and prefixes."""
    _renew(directory, ca_dir, days, as_json, "client")


@cli.command("whoami")
@click.argument("directory", required=False, type=click.Path(path_type=Path, file_okay=False),
                metavar="[DIR]")
@JSON_OPTION
@pass_context
def whoami(ctx: Context, directory: Path | None, as_json: bool) -> None:
    """Show an identity: id, role, cluster and validity (DIR or --identity)."""
    directory = directory or ctx.identity_dir
    if directory is None:
        raise BadInput("give an identity DIR or --identity")
    from p2pfs import identity

    ident = identity.load_identity(directory)
    facts = {
        "node_id": ident.node_id,
        "role": ident.role.value,
        **({"client_role": ident.grant.role.value, "prefixes": list(ident.grant.prefixes)}
           if ident.grant is not None else {}),
        "cluster_id": ident.cluster_id.hex(),
        **time_facts("not_valid_before", int(ident.cert.not_valid_before_utc.timestamp() * 1000)),
        **time_facts("not_valid_after", int(ident.cert.not_valid_after_utc.timestamp() * 1000)),
        "directory": str(directory),
    }
    if as_json:
        emit(facts)
        return
    expires = ident.cert.not_valid_after_utc
    days = (expires - datetime.datetime.now(datetime.timezone.utc)).days
    click.echo(f"id:        {facts['node_id']}")
    click.echo(f"role:      {facts['role']}" + (f", may {ident.grant.describe()}" if ident.grant else ""))
    click.echo(f"cluster:   {facts['cluster_id'][:16]}")
    click.echo(f"valid to:  {expires:%Y-%m-%d} ({days} days)")


# ---------------------------------------------------------------------------
# The daemon


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), metavar="DIR")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Config file (default: DIR/p2pfs.toml).")
def daemon(directory: Path, config_file: Path | None) -> None:
    """Run a node in the foreground, with its identity in DIR.

    Logs go to stderr. SIGTERM or SIGINT stop it within seconds without leaving
    the cluster (it rejoins with its data when started again); `p2pfs leave`
    decommissions it. SIGHUP reloads the config file.
    """
    import trio

    from p2pfs import identity
    from p2pfs.node.config import load_node_config
    from p2pfs.node.daemon import serve
    from p2pfs.observe import setup_logging
    from p2pfs.wire import Role

    cfg = load_node_config(config_file or directory / CONFIG_FILE)
    ident = identity.load_identity(directory)
    if ident.role is not Role.NODE:
        raise errors.AuthError(f"{directory} holds a client identity; a daemon needs a node's")
    ident.server_context()  # fail now, clearly, if the key or certificate cannot be loaded
    setup_logging(cfg.node.log_level, ident.node_id[:12], cfg.admin.log_format)
    trio.run(serve, cfg, ident)


