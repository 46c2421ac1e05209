"""The client library for code without trio: each call runs to completion.

``sync.connect()`` takes what ``p2pfs.client.connect()`` takes and returns a
``Cluster`` whose methods are the same, minus ``await``. Each call starts its
own trio run, so it must not be made from inside one (use the async
``p2pfs.client.Cluster`` there).
"""

from __future__ import annotations

import functools
import os
from typing import Any, BinaryIO, Callable, Iterator

import trio

from p2pfs import client
from p2pfs.client.failover import LocalPath, Name
from p2pfs.client.listing import LS_PAGE_FILES_MAX, Pager
from p2pfs.client.settings import Nodes


class Cluster:
    """Blocking twins of ``p2pfs.client.Cluster``'s operations (same arguments, answers, errors)."""

    def __init__(self, cluster: client.Cluster) -> None:
        self.cluster = cluster

    def _run(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return trio.run(functools.partial(operation, *args, **kwargs))

    def put(self, source: LocalPath | BinaryIO, name: Name | None = None, size_bytes: int = -1) -> Any:
        return self._run(self.cluster.put, source, name, size_bytes)

    def get(self, name: Name, target: LocalPath | BinaryIO) -> Any:
        return self._run(self.cluster.get, name, target)

    def put_tree(self, directory: LocalPath, prefix: Name | None = None) -> Any:
        return self._run(self.cluster.put_tree, directory, prefix)

    def get_tree(self, prefix: Name, directory: LocalPath, *, force: bool = False) -> Any:
        return self._run(self.cluster.get_tree, prefix, directory, force=force)

    def ls(self, prefix: Name = "", *, after: str = "", limit: int = LS_PAGE_FILES_MAX) -> Any:
        return self._run(self.cluster.ls, prefix, after=after, limit=limit)

    def ls_pages(self, prefix: Name = "", *, after: str = "", limit: int | None = None,
                 page_files: int = LS_PAGE_FILES_MAX) -> Iterator[Any]:
        """Every page of the listing, one request (and one trio run) each."""
        pager = Pager(after, limit, page_files)
        while (request := pager.next()) is not None:
            page = self.ls(prefix, after=request[0], limit=request[1])
            pager.got(page)
            yield page

    def stat(self, name: Name) -> Any:
        return self._run(self.cluster.stat, name)

    def rm(self, name: Name) -> Any:
        return self._run(self.cluster.rm, name)

    def members(self) -> Any:
        return self._run(self.cluster.members)

    def status(self) -> Any:
        return self._run(self.cluster.status)

    @property
    def last_node(self):
        """The node that served the last successful operation."""
        return self.cluster.last_node


def connect(identity: str | os.PathLike | None = None, nodes: Nodes | None = None, *,
            remember: bool = True) -> Cluster:
    """Like ``p2pfs.client.connect``, for code without trio."""
    return Cluster(client.connect(identity, nodes, remember=remember))
