"""`put -r DIR` and `get -r PREFIX -o DIR`: what they print (the work is p2pfs/client/tree.py).

One progress line for the whole transfer; a line on stderr for each file that
failed or was skipped, as it happens; a summary at the end. The exit status is 1
(failure) when any file failed or, for get, when the listing of the names may be
incomplete; errors before any file moves (no such directory, no node) keep their
own codes.
"""

from __future__ import annotations

from typing import Any

import click

from p2pfs.cli.base import Context, ExitCode, emit, escaped, shown
from p2pfs.config import format_size


def _file_facts(outcome: Any, *, get: bool) -> dict[str, Any]:
    facts = {
        "path": outcome.path,
        "name": outcome.name,
        "size_bytes": outcome.size_bytes,
        "file_hash": outcome.file_hash.hex() if outcome.file_hash is not None else None,
        "error": outcome.error,
    }
    if get:
        facts.update(received_bytes=outcome.network_bytes, resumed_bytes=outcome.resumed_bytes)
    else:
        facts.update(sent_bytes=outcome.network_bytes)
    return facts


def _summary_facts(result: Any, *, get: bool) -> dict[str, Any]:
    moved = sum(f.network_bytes for f in result.files)
    facts = {
        "directory": result.directory,
        "prefix": result.prefix,
        "files_ok": len(result.files) - len(result.failed),
        "files_failed": len(result.failed),
        "size_bytes": result.size_bytes,
        ("received_bytes" if get else "sent_bytes"): moved,
    }
    if get:
        facts["complete"] = result.complete
    else:
        facts["skipped"] = [{"path": s.path, "reason": s.reason} for s in result.skipped]
    facts["files"] = [_file_facts(f, get=get) for f in result.files]
    return facts


def _on_file(progress: Any, as_json: bool):
    def on_file(outcome: Any) -> None:
        progress.file_done()
        if outcome.error is not None and not as_json:
            progress.note(f"failed {shown(outcome.name or outcome.path)}: {escaped(outcome.error)}")

    return on_file


def _finish(result: Any, as_json: bool, *, get: bool) -> None:
    if as_json:
        emit(_summary_facts(result, get=get), err=get)
    else:
        for skipped in result.skipped:
            click.echo(f"skipped {shown(skipped.path)}: {skipped.reason}", err=True)
        failed = f", {len(result.failed)} failed" if result.failed else ""
        skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
        ok = len(result.files) - len(result.failed)
        if get:
            click.echo(f"wrote {ok} file(s), {format_size(result.size_bytes)}, verified, to "
                       f"{shown(result.directory)}{failed}", err=True)
            if not result.complete:
                click.echo("warning: some nodes could not be asked; names may be missing from the listing",
                           err=True)
        else:
            click.echo(f"stored {ok} file(s), {format_size(result.size_bytes)}, under "
                       f"{shown(result.prefix or '(no prefix)')}{failed}{skipped}")
    if not result.ok:
        click.get_current_context().exit(int(ExitCode.FAILURE))


def put_tree(ctx: Context, directory: str, prefix: str | None, as_json: bool) -> None:
    from p2pfs.client import run
    from p2pfs.progress import Progress

    cluster = ctx.cluster()
    progress = Progress(f"put -r {shown(directory)}", None, enabled=False if as_json else None)

    async def go() -> Any:
        return await cluster.put_tree(directory, prefix, progress=progress, on_total=progress.set_files,
                                      on_file=_on_file(progress, as_json))

    try:
        result = run(go)
    finally:
        progress.finish()
    _finish(result, as_json, get=False)


def get_tree(ctx: Context, prefix: str, directory: str, force: bool, as_json: bool) -> None:
    from p2pfs.client import run
    from p2pfs.progress import Progress

    cluster = ctx.cluster()
    progress = Progress(f"get -r {shown(prefix)}", None, enabled=False if as_json else None)

    async def go() -> Any:
        return await cluster.get_tree(prefix, directory, force=force, progress=progress,
                                      on_total=progress.set_files, on_file=_on_file(progress, as_json))

    try:
        result = run(go)
    finally:
        progress.finish()
    _finish(result, as_json, get=True)
