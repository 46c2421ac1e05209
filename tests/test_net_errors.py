"""The transport's errors in p2pfs' one hierarchy: what a caller catches is what it can act on."""

from __future__ import annotations

import pickle

import pytest

from p2pfs import errors, net
from p2pfs.wire import ErrorCode


@pytest.mark.parametrize(
    "code, cls, kind",
    [
        (ErrorCode.NOT_FOUND, net.RemoteNotFound, errors.NotFound),
        (ErrorCode.UNAVAILABLE, net.RemoteUnavailable, errors.Unavailable),
        (ErrorCode.TIMEOUT, net.RemoteUnavailable, errors.Unavailable),
        (ErrorCode.BAD_REQUEST, net.RemoteBadRequest, errors.BadInput),
        (ErrorCode.FORBIDDEN, net.RemoteForbidden, errors.AuthError),
        (ErrorCode.STORAGE_FULL, net.RemoteStorageFull, errors.StorageFull),
        (ErrorCode.INTERNAL, net.RemoteError, errors.P2pfsError),
        (ErrorCode.CORRUPT, net.RemoteError, errors.P2pfsError),
        (ErrorCode.CANCELLED, net.RemoteError, errors.P2pfsError),
    ],
)
def test_a_remote_error_is_classified_by_its_code(code, cls, kind):
    exc = net.RemoteError(code, "why")
    assert type(exc) is cls
    assert isinstance(exc, net.RemoteError)
    assert isinstance(exc, kind)
    assert (exc.code, exc.text, str(exc)) == (code, "why", f"{code.name}: why")
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), copy.code, copy.text) == (cls, code, "why")


@pytest.mark.parametrize(
    "cls, kind, not_kind",
    [
        (net.ConnectError, errors.Unavailable, errors.AuthError),
        (net.ConnectionClosed, errors.Unavailable, errors.AuthError),
        (net.RequestTimeout, errors.Unavailable, errors.AuthError),
        (net.HandshakeError, errors.AuthError, errors.Unavailable),
        (net.ProtocolViolation, errors.PeerFault, errors.Unavailable),
    ],
)
def test_transport_errors_sit_in_the_hierarchy(cls, kind, not_kind):
    exc = cls("x")
    assert isinstance(exc, kind)
    assert not isinstance(exc, not_kind)


def test_a_request_timeout_is_still_a_timeout_error():
    assert isinstance(net.RequestTimeout("x"), TimeoutError)
