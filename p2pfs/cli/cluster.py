"""The cluster as a node sees it: ``members``, ``status``, ``fsck``, ``leave``."""

from __future__ import annotations

import dataclasses

import click

from p2pfs.cli.base import (
    JSON_OPTION, Context, ExitCode, call, call_blocking, call_one, cli, emit, escaped, pass_context, shown, table,
)
from p2pfs.config import format_size
from p2pfs.ids import short_id


@cli.command()
@JSON_OPTION
@pass_context
def members(ctx: Context, as_json: bool) -> None:
    """List the cluster's members as the node sees them.

    Nodes see members a little differently while news spreads, so when the
    first node given does not answer and another does, a note on stderr says
    which node answered and why the others were passed over (in --json, the
    answering node's entry has "answering": true).
    """
    cluster = ctx.blocking_cluster()
    found = cluster.members()
    if cluster.passed_over and not as_json:
        click.echo(f"note: the members as {cluster.last_node} (node {short_id(cluster.last_node_id)}) sees them; "
                   f"passed over: {escaped('; '.join(cluster.passed_over))}", err=True)
    if as_json:
        from p2pfs import wire  # loaded by the request already; `p2pfs --help` must not load it

        emit([{**dataclasses.asdict(mb), "address": f"{mb.host}:{mb.port}",
               "protocol_version": wire.wire_version_of(mb.protocol_version),
               "placement_version": wire.placement_version_of(mb.protocol_version),
               "answering": mb.node_id == cluster.last_node_id} for mb in found])
        return
    table(
        [[mb.node_id[:12], f"{mb.host}:{mb.port}", mb.state, str(mb.incarnation), shown(mb.zone) or "-",
          format_size(mb.capacity_bytes)] for mb in found],
        ["NODE", "ADDRESS", "STATE", "INCARNATION", "ZONE", "CAPACITY"],
    )


@cli.command()
@JSON_OPTION
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Show the node: id, address, uptime, members by state, version."""
    reply = call_blocking(ctx, "status")
    facts = {**dataclasses.asdict(reply), "address": f"{reply.host}:{reply.port}"}
    if as_json:
        emit(facts)
        return
    click.echo(f"node:     {reply.node_id}")
    click.echo(f"address:  {reply.host}:{reply.port}")
    click.echo(f"version:  {reply.version}")
    click.echo(f"uptime:   {reply.uptime_s:.0f} s")
    click.echo(f"zone:     {shown(reply.zone) or '-'}")
    click.echo(f"storage:  {format_size(reply.used_bytes)} of {format_size(reply.capacity_bytes)}")
    click.echo(
        f"members:  {reply.members_alive} alive, {reply.members_suspect} suspect, "
        f"{reply.members_dead} dead, {reply.members_left} left"
    )
    if reply.cert_not_valid_after_ms:
        click.echo(f"cert:     valid to {_day(reply.cert_not_valid_after_ms)}, CA to "
                   f"{_day(reply.ca_not_valid_after_ms)}; CRL {reply.crl_number or 'none'}")


def _day(unix_ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")


@cli.command()
@JSON_OPTION
@pass_context
def fsck(ctx: Context, as_json: bool) -> None:
    """Check the cluster's replication health (as the node's ring sees it).

    Counts names and chunks checked, under-replicated (fewer than rf live
    copies), misplaced (enough copies, not yet on the nodes that own them),
    over-replicated, missing and corrupt. Exits 1 when data is at risk
    (anything under-replicated, missing or corrupt, or a node that did not
    answer); 0 otherwise.
    """
    reply = call(ctx, "fsck")
    at_risk = bool(
        reply.names_under_replicated or reply.chunks_under_replicated or reply.chunks_missing
        or reply.chunks_corrupt or reply.nodes_unreachable
    )
    facts = dataclasses.asdict(reply)
    facts["at_risk"] = at_risk
    if as_json:
        emit(facts)
    else:
        click.echo(f"nodes asked:        {reply.nodes_asked} ({len(reply.nodes_unreachable)} unreachable)")
        click.echo(f"names checked:      {reply.names_checked}")
        click.echo(f"chunks checked:     {reply.chunks_checked}")
        click.echo(f"under-replicated:   {reply.names_under_replicated} names, "
                   f"{reply.chunks_under_replicated} chunks")
        click.echo(f"over-replicated:    {reply.names_over_replicated} names, "
                   f"{reply.chunks_over_replicated} chunks")
        click.echo(f"misplaced:          {reply.names_misplaced} names, "
                   f"{reply.chunks_misplaced} chunks (enough copies; moving to their owners)")
        click.echo(f"missing chunks:     {reply.chunks_missing}")
        click.echo(f"corrupt chunks:     {reply.chunks_corrupt}")
        for problem in reply.problems:
            click.echo(f"  {problem.kind} {problem.what[:-1]} {shown(problem.key[:40])} "
                       f"held by [{' '.join(h[:12] for h in problem.holders)}] "
                       f"wanted on [{' '.join(w[:12] for w in problem.wanted)}]")
        click.echo("status:             " + ("DATA AT RISK" if at_risk else "healthy"))
    if at_risk:
        ctx_exit = click.get_current_context()
        ctx_exit.exit(int(ExitCode.FAILURE))


@cli.command()
@JSON_OPTION
@pass_context
def leave(ctx: Context, as_json: bool) -> None:
    """Ask the node to hand its data to the other nodes, leave the cluster and exit."""
    reply = call_one(ctx, "leave")
    if as_json:
        emit({"address": str(ctx.node_address()), "accepted": reply.accepted})
        return
    click.echo(f"{ctx.node_address()} is handing off its data and will leave (see its log)")
