"""What the library raises for a network or remote failure: the classes of ``p2pfs.errors``.

Shared by both drivers of a connection to one node (``node.py`` over trio,
``blocking.py`` over a plain socket), so that a failure reads the same and
fails over the same whichever ran the operation. Pure: it maps errors only.
"""

from __future__ import annotations

import contextlib

from p2pfs import errors
from p2pfs.address import Address
from p2pfs.net.errors import ConnectError, ConnectionClosed, HandshakeError, RemoteError, RequestTimeout
from p2pfs.wire import ErrorCode

# The class each error code of a node's answer becomes. A code not here (INTERNAL,
# CORRUPT, CANCELLED) is a plain P2pfsError: the node failed, and its text says how.
_ERROR_FOR_CODE: dict[ErrorCode, type[errors.P2pfsError]] = {
    ErrorCode.NOT_FOUND: errors.NotFound,
    ErrorCode.UNAVAILABLE: errors.Unavailable,
    ErrorCode.TIMEOUT: errors.Unavailable,
    ErrorCode.BAD_REQUEST: errors.BadInput,
    ErrorCode.FORBIDDEN: errors.AuthError,
    ErrorCode.STORAGE_FULL: errors.StorageFull,
}


class NodeUnreachable(errors.Unavailable):
    """No connection to a node could be made (refused, timed out, silent after
    accepting): nothing was sent, so any operation may be tried elsewhere."""


@contextlib.contextmanager
def library_errors(node: Address):
    """Turn network and remote errors into the classes of p2pfs.errors."""
    try:
        yield
    except HandshakeError as exc:  # a certificate or identity refused (net tells it from the rest)
        raise errors.AuthError(f"cannot authenticate with {node}: {exc}") from None
    except ConnectError as exc:
        raise NodeUnreachable(f"cannot reach node {node}: {exc}") from None
    except RequestTimeout as exc:
        raise errors.Unavailable(f"node {node} did not answer in time: {exc}") from None
    except ConnectionClosed as exc:
        raise errors.Unavailable(f"connection to {node} lost: {exc}") from None
    except RemoteError as exc:
        raise _ERROR_FOR_CODE.get(exc.code, errors.P2pfsError)(exc.text) from None


def check_client_identity(role_value: str, directory: object) -> None:
    """Commands speak as a client: a node's identity would be refused by every node."""
    if role_value != "client":
        raise errors.AuthError(
            f"{directory} holds a {role_value} identity; commands speak as a "
            "client: use a client identity (create one with `p2pfs client init DIR --ca CA_DIR`)"
        )
