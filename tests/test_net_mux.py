"""The stream multiplexer without sockets: frames in, events and frames out (h11's manner).

``dialler`` is the end that opened the connection (odd stream ids), ``acceptor``
the other (even ids). ``link`` carries the frames one returns to the other.
"""

from __future__ import annotations

import pytest

from p2pfs import wire
from p2pfs.net import mux as m
from p2pfs.net.config import (
    STREAM_DATA_BYTES_MAX,
    STREAM_DATA_FRAME_COST_BYTES,
    STREAM_WINDOW_BYTES,
    STREAM_WINDOW_FRAMES,
)
from p2pfs.net.errors import ConnectionClosed, ProtocolViolation, RemoteError, RemoteNotFound
from p2pfs.net.flow import LocalProtocolError, ReceiveWindow, SendWindow
from p2pfs.wire import ErrorCode, Frame, FrameKind, Role

from wire_helpers import Echo

K = FrameKind
ECHO = Echo(b"hi")


@wire.message(60101)
class NodeOnlyNote(wire.Message):
    """Test-only: a message only nodes may send."""

    value: int


# The unit the stream window is counted in: 8 frames of 1 MiB (config.STREAM_WINDOW_FRAMES).
WINDOW_FRAME_BYTES = 1024 * 1024

def pair(*, serving: bool = True, serves_max: int = 4) -> tuple[m.Mux, m.Mux]:
    dialler = m.Mux(dialled=True, peer_role=Role.NODE, serving=True, serves_max=serves_max)
    acceptor = m.Mux(dialled=False, peer_role=Role.NODE, serving=serving, serves_max=serves_max)
    return dialler, acceptor


def frame(kind: FrameKind, stream_id: int, payload: bytes = b"", msg: wire.Message | None = None) -> Frame:
    if msg is not None:
        return Frame(kind, stream_id, msg.TYPE, wire.encode_message(msg))
    return Frame(kind, stream_id, 0, payload)


def error_frame(stream_id: int, code: ErrorCode = ErrorCode.NOT_FOUND, text: str = "no") -> Frame:
    return frame(K.ERROR, stream_id, wire.encode_error(code, text))


# -- stream ids ---------------------------------------------------------------------------


def test_the_dialler_uses_odd_ids_and_the_acceptor_even_ones():
    dialler, acceptor = pair()
    assert [dialler.start_request(ECHO, with_body=False)[0] for _ in range(3)] == [1, 3, 5]
    assert [acceptor.start_request(ECHO, with_body=False)[0] for _ in range(3)] == [2, 4, 6]


def test_stream_ids_wrap_around_below_two_to_the_32():
    dialler, acceptor = pair()
    dialler._next_stream_id = m.STREAM_ID_LIMIT - 1
    acceptor._next_stream_id = m.STREAM_ID_LIMIT - 2
    assert [dialler.start_request(ECHO, with_body=False)[0] for _ in range(2)] == [m.STREAM_ID_LIMIT - 1, 1]
    assert [acceptor.start_request(ECHO, with_body=False)[0] for _ in range(2)] == [m.STREAM_ID_LIMIT - 2, 2]
    dialler._next_stream_id = m.STREAM_ID_LIMIT - 1
    with pytest.raises(LocalProtocolError, match="wrapped around"):
        dialler.start_request(ECHO, with_body=False)  # that stream is still open


def test_a_request_with_our_parity_is_a_violation():
    _, acceptor = pair()
    with pytest.raises(ProtocolViolation, match="of our parity"):
        acceptor.receive_frame(frame(K.REQUEST, 2, msg=ECHO))


def test_a_stream_id_reused_while_in_use_is_a_violation_and_free_once_served():
    _, acceptor = pair()
    assert acceptor.receive_frame(frame(K.REQUEST, 1, msg=ECHO)) == [m.RequestReceived(1, ECHO, False)]
    with pytest.raises(ProtocolViolation, match="reused while in use"):
        acceptor.receive_frame(frame(K.REQUEST, 1, msg=ECHO))
    acceptor.respond(1, ECHO, with_body=False)
    acceptor.close_serve(1)
    assert acceptor.receive_frame(frame(K.REQUEST, 1, msg=ECHO)) == [m.RequestReceived(1, ECHO, False)]


# -- what the peer may send ------------------------------------------------------------------


def test_a_client_may_not_send_a_node_message():
    acceptor = m.Mux(dialled=False, peer_role=Role.CLIENT, serving=True)
    with pytest.raises(ProtocolViolation, match="a client may not send NodeOnlyNote"):
        acceptor.receive_frame(frame(K.REQUEST, 1, msg=NodeOnlyNote(1)))
    with pytest.raises(ProtocolViolation, match="may not send"):
        acceptor.receive_frame(frame(K.ONEWAY, 0, msg=NodeOnlyNote(1)))


def test_a_second_hello_is_a_violation():
    _, acceptor = pair()
    hello = wire.Hello(wire.PROTOCOL_VERSION, b"c" * 32, "node", "", 0)
    with pytest.raises(ProtocolViolation, match="hello sent twice"):
        acceptor.receive_frame(frame(K.HELLO, 0, msg=hello))


@pytest.mark.parametrize("serving, events", [(True, [m.OnewayReceived(ECHO)]), (False, [])])
def test_oneway_messages_reach_only_an_end_that_serves(serving, events):
    _, acceptor = pair(serving=serving)
    assert acceptor.receive_frame(frame(K.ONEWAY, 0, msg=ECHO)) == events


def test_requests_beyond_the_cap_or_to_a_client_are_refused_not_queued():
    _, acceptor = pair(serves_max=2)
    assert acceptor.receive_frame(frame(K.REQUEST, 1, msg=ECHO)) == [m.RequestReceived(1, ECHO, False)]
    assert acceptor.receive_frame(frame(K.REQUEST, 3, msg=ECHO)) == [m.RequestReceived(3, ECHO, False)]
    (refusal,) = acceptor.receive_frame(frame(K.REQUEST_STREAM, 5, msg=ECHO))
    assert isinstance(refusal, m.SendFrame)
    assert refusal.frame.kind is K.ERROR and refusal.frame.stream_id == 5
    assert wire.decode_error(refusal.frame.payload) == (ErrorCode.UNAVAILABLE, "too many requests")
    assert acceptor.receive_frame(frame(K.STREAM_DATA, 5, b"x")) == []  # the refused body is dropped
    acceptor.respond(1, ECHO, with_body=False)
    acceptor.close_serve(1)
    assert acceptor.receive_frame(frame(K.REQUEST, 7, msg=ECHO)) == [m.RequestReceived(7, ECHO, False)]
    _, client_side = pair(serving=False)
    (refusal,) = client_side.receive_frame(frame(K.REQUEST, 1, msg=ECHO))
    assert isinstance(refusal, m.SendFrame) and refusal.frame.kind is K.ERROR


# -- the answer to our request: the receiving half's table -------------------------------------

OK = "ok"
VIOLATION = "violation"


@pytest.mark.parametrize(
    "frames, last",
    [
        ([K.RESPONSE], OK),
        ([K.ERROR], OK),
        ([K.RESPONSE_STREAM, K.STREAM_DATA, K.STREAM_DATA, K.STREAM_END], OK),
        ([K.RESPONSE_STREAM, K.STREAM_DATA, K.ERROR], OK),
        ([K.RESPONSE_STREAM, K.STREAM_END], OK),
        ([K.STREAM_DATA], VIOLATION),            # a body before its answer
        ([K.STREAM_END], VIOLATION),
        ([K.RESPONSE, K.RESPONSE], VIOLATION),   # answered twice
        ([K.RESPONSE, K.ERROR], VIOLATION),
        ([K.ERROR, K.RESPONSE], VIOLATION),
        ([K.RESPONSE, K.STREAM_DATA], VIOLATION),  # a body after an answer that had none
        ([K.RESPONSE_STREAM, K.RESPONSE], VIOLATION),
        ([K.RESPONSE_STREAM, K.STREAM_END, K.STREAM_DATA], VIOLATION),
        ([K.RESPONSE_STREAM, K.STREAM_END, K.ERROR], VIOLATION),
        ([K.CANCEL], VIOLATION),                 # only the requester cancels
    ],
)
def test_what_may_come_back_on_our_request(frames, last):
    dialler, _ = pair()
    stream_id, _ = dialler.start_request(ECHO, with_body=False)

    def peer_frame(kind: FrameKind) -> Frame:
        if kind in (K.RESPONSE, K.RESPONSE_STREAM):
            return frame(kind, stream_id, msg=ECHO)
        if kind is K.ERROR:
            return error_frame(stream_id)
        return frame(kind, stream_id, b"data" if kind is K.STREAM_DATA else b"")

    for kind in frames[:-1]:
        dialler.receive_frame(peer_frame(kind))
    if last is VIOLATION:
        with pytest.raises(ProtocolViolation):
            dialler.receive_frame(peer_frame(frames[-1]))
    else:
        assert dialler.receive_frame(peer_frame(frames[-1]))


def test_answers_become_events():
    dialler, _ = pair()
    a, _ = dialler.start_request(ECHO, with_body=False)
    b, _ = dialler.start_request(ECHO, with_body=False)
    assert dialler.receive_frame(frame(K.RESPONSE_STREAM, a, msg=ECHO)) == [m.ResponseReceived(a, ECHO, True)]
    assert dialler.receive_frame(frame(K.STREAM_DATA, a, b"xy")) == [m.BodyReceived(a, b"xy")]
    (failed,) = dialler.receive_frame(error_frame(a, ErrorCode.CORRUPT, "went bad"))
    assert isinstance(failed, m.BodyFailed) and failed.error.code is ErrorCode.CORRUPT
    (answer,) = dialler.receive_frame(error_frame(b, ErrorCode.NOT_FOUND, "nothing"))
    assert isinstance(answer, m.ErrorReceived)
    assert isinstance(answer.error, RemoteNotFound) and isinstance(answer.error, RemoteError)
    assert (answer.error.code, answer.error.text) == (ErrorCode.NOT_FOUND, "nothing")


@pytest.mark.parametrize(
    "kind", [K.RESPONSE, K.RESPONSE_STREAM, K.ERROR, K.STREAM_DATA, K.STREAM_END, K.CREDIT, K.CANCEL]
)
def test_late_frames_of_a_forgotten_stream_are_dropped(kind):
    dialler, _ = pair()
    stream_id, _ = dialler.start_request(ECHO, with_body=False)
    assert dialler.close_call(stream_id) == [frame(K.CANCEL, stream_id)]
    payload = {K.ERROR: wire.encode_error(ErrorCode.TIMEOUT, "late"), K.CREDIT: wire.encode_credit(1)}
    msg = ECHO if kind in (K.RESPONSE, K.RESPONSE_STREAM) else None
    assert dialler.receive_frame(frame(kind, stream_id, payload.get(kind, b""), msg=msg)) == []
    assert dialler.stream_count() == 0


# -- what this end may send: the sending half's table ----------------------------------------


def test_a_served_request_is_answered_once():
    _, acceptor = pair()
    acceptor.receive_frame(frame(K.REQUEST, 1, msg=ECHO))
    assert acceptor.respond(1, ECHO, with_body=False) == frame(K.RESPONSE, 1, msg=ECHO)
    with pytest.raises(LocalProtocolError):
        acceptor.respond(1, ECHO, with_body=False)
    with pytest.raises(LocalProtocolError):
        acceptor.respond_error(1, ErrorCode.INTERNAL, "late")
    with pytest.raises(LocalProtocolError):
        acceptor.end_body(1)


def test_a_streamed_answer_ends_with_its_end_or_an_error():
    _, acceptor = pair()
    acceptor.receive_frame(frame(K.REQUEST, 1, msg=ECHO))
    acceptor.receive_frame(frame(K.REQUEST, 3, msg=ECHO))
    with pytest.raises(LocalProtocolError):
        acceptor.send_data(1, b"x")  # no body before the answer
    acceptor.respond(1, ECHO, with_body=True)
    assert acceptor.send_data(1, b"x") == frame(K.STREAM_DATA, 1, b"x")
    assert acceptor.end_body(1) == frame(K.STREAM_END, 1)
    acceptor.respond(3, ECHO, with_body=True)
    error = acceptor.respond_error(3, ErrorCode.CORRUPT, "e" * 5000)
    assert wire.decode_error(error.payload) == (ErrorCode.CORRUPT, "e" * m.ERROR_TEXT_CHARS_MAX)
    with pytest.raises(LocalProtocolError):
        acceptor.send_data(3, b"x")


def test_a_request_without_a_body_sends_none():
    dialler, _ = pair()
    stream_id, request = dialler.start_request(ECHO, with_body=False)
    assert request == frame(K.REQUEST, stream_id, msg=ECHO)
    with pytest.raises(LocalProtocolError):
        dialler.send_data(stream_id, b"x")
    with pytest.raises(LocalProtocolError):
        dialler.respond(stream_id, ECHO, with_body=False)  # a request of ours is not ours to answer


# -- cancel and early answers -----------------------------------------------------------------


def test_giving_up_before_the_end_sends_cancel_and_stops_the_handler():
    dialler, acceptor = pair()
    stream_id, request = dialler.start_request(ECHO, with_body=False)
    acceptor.receive_frame(request)
    (cancel,) = dialler.close_call(stream_id)
    assert cancel == frame(K.CANCEL, stream_id)
    assert acceptor.receive_frame(cancel) == [m.Cancelled(stream_id)]
    with pytest.raises(ConnectionClosed):
        acceptor.respond(stream_id, ECHO, with_body=False)
    acceptor.close_serve(stream_id)
    assert acceptor.stream_count() == 0


@pytest.mark.parametrize(
    "answer, cancel_expected",
    [
        ([K.RESPONSE], False),
        ([K.ERROR], False),
        ([K.RESPONSE_STREAM], True),                   # the body is unfinished
        ([K.RESPONSE_STREAM, K.STREAM_END], False),    # received whole, even if not yet read
        ([K.RESPONSE_STREAM, K.ERROR], False),
    ],
)
def test_cancel_is_sent_only_for_an_unfinished_answer(answer, cancel_expected):
    dialler, _ = pair()
    stream_id, _ = dialler.start_request(ECHO, with_body=False)
    for kind in answer:
        if kind is K.ERROR:
            dialler.receive_frame(error_frame(stream_id))
        else:
            dialler.receive_frame(frame(kind, stream_id, msg=ECHO if kind is not K.STREAM_END else None))
    assert (dialler.close_call(stream_id) == [frame(K.CANCEL, stream_id)]) is cancel_expected


def test_an_answer_during_an_upload_stops_the_upload():
    dialler, acceptor = pair()
    stream_id, request = dialler.start_request(ECHO, with_body=True)
    acceptor.receive_frame(request)
    acceptor.receive_frame(dialler.send_data(stream_id, b"wrong"))
    error = acceptor.respond_error(stream_id, ErrorCode.BAD_REQUEST, "body differs")
    events = dialler.receive_frame(error)
    assert events[0] == m.SendUnblocked(stream_id)  # wakes an uploader waiting for credit
    assert isinstance(events[1], m.ErrorReceived) and events[1].error.code is ErrorCode.BAD_REQUEST
    with pytest.raises(ConnectionClosed, match="closed by the peer"):
        dialler.sendable_bytes(stream_id, 10)
    with pytest.raises(ConnectionClosed):
        dialler.end_body(stream_id)
    assert dialler.close_call(stream_id) == []


# -- flow control -----------------------------------------------------------------------------


def cost(payload: bytes) -> int:
    """What a body frame costs in credit: its bytes and the upkeep of one frame."""
    return len(payload) + STREAM_DATA_FRAME_COST_BYTES


def test_a_sender_sends_a_window_of_bytes_then_waits_for_credit():
    dialler, acceptor = pair()
    stream_id, request = dialler.start_request(ECHO, with_body=True)
    acceptor.receive_frame(request)
    big = STREAM_DATA_BYTES_MAX * 3
    assert dialler.sendable_bytes(stream_id, big) == STREAM_DATA_BYTES_MAX  # cut to frame size
    assert dialler.sendable_bytes(stream_id, 10) == 10
    full = b"x" * WINDOW_FRAME_BYTES
    for _ in range(STREAM_WINDOW_FRAMES):  # the window holds exactly this many frames of 1 MiB
        acceptor.receive_frame(dialler.send_data(stream_id, full))
    assert dialler.sendable_bytes(stream_id, 10) == 0
    with pytest.raises(LocalProtocolError):
        dialler.send_data(stream_id, b"x")
    # The reader frees the buffer: stream and connection credit go back together, in batches
    # of half the stream's window.
    grants = [acceptor.body_consumed(stream_id, full) for _ in range(STREAM_WINDOW_FRAMES)]
    half = STREAM_WINDOW_FRAMES // 2
    assert grants[: half - 1] == [[]] * (half - 1)
    stream_credit = frame(K.CREDIT, stream_id, wire.encode_credit(half * cost(full)))
    connection_credit = frame(K.CREDIT, m.CONNECTION_STREAM_ID, wire.encode_credit(half * cost(full)))
    assert grants[half - 1] == [stream_credit, connection_credit]
    assert grants[-1] == [stream_credit, connection_credit]
    assert dialler.receive_frame(stream_credit) == [m.SendUnblocked(stream_id)]
    assert dialler.sendable_bytes(stream_id, 10) == 10


def test_a_largest_frame_taken_is_credited_back_at_once():
    """Two frames of STREAM_DATA_BYTES_MAX fill the window; the credit of one comes back as soon
    as the reader takes it, so the sender of such frames never waits for two to be read."""
    dialler, acceptor = pair()
    stream_id, request = dialler.start_request(ECHO, with_body=True)
    acceptor.receive_frame(request)
    largest = b"x" * STREAM_DATA_BYTES_MAX
    for _ in range(2):
        acceptor.receive_frame(dialler.send_data(stream_id, largest))
    assert dialler.sendable_bytes(stream_id, STREAM_DATA_BYTES_MAX) < STREAM_DATA_BYTES_MAX
    stream_credit = frame(K.CREDIT, stream_id, wire.encode_credit(cost(largest)))
    connection_credit = frame(K.CREDIT, m.CONNECTION_STREAM_ID, wire.encode_credit(cost(largest)))
    assert acceptor.body_consumed(stream_id, largest) == [stream_credit, connection_credit]
    dialler.receive_frame(stream_credit)
    dialler.receive_frame(connection_credit)
    assert dialler.sendable_bytes(stream_id, STREAM_DATA_BYTES_MAX) == STREAM_DATA_BYTES_MAX


def test_small_frames_cost_their_upkeep():
    """Empty frames are not free: a window holds as many as its bytes pay the upkeep of."""
    dialler, acceptor = pair()
    stream_id, request = dialler.start_request(ECHO, with_body=True)
    acceptor.receive_frame(request)
    fits = STREAM_WINDOW_BYTES // STREAM_DATA_FRAME_COST_BYTES
    for _ in range(fits):
        acceptor.receive_frame(frame(K.STREAM_DATA, stream_id, b""))
    with pytest.raises(ProtocolViolation, match="exceeded its credit"):
        acceptor.receive_frame(frame(K.STREAM_DATA, stream_id, b""))


def test_data_beyond_the_credit_is_a_violation():
    _, acceptor = pair()
    acceptor.receive_frame(frame(K.REQUEST_STREAM, 1, msg=ECHO))
    acceptor.receive_frame(frame(K.STREAM_DATA, 1, b"x" * (STREAM_WINDOW_BYTES - STREAM_DATA_FRAME_COST_BYTES)))
    with pytest.raises(ProtocolViolation, match="stream 1 exceeded its credit"):
        acceptor.receive_frame(frame(K.STREAM_DATA, 1, b""))


def test_the_streams_of_a_connection_share_its_window():
    """Each stream is within its own window, yet together they may not exceed the connection's."""
    window = 1000
    acceptor = m.Mux(dialled=False, peer_role=Role.NODE, serving=True, window_units=window,
                     connection_window_units=2 * window)
    piece = b"x" * (window - STREAM_DATA_FRAME_COST_BYTES)
    for stream_id in (1, 3):
        acceptor.receive_frame(frame(K.REQUEST_STREAM, stream_id, msg=ECHO))
        acceptor.receive_frame(frame(K.STREAM_DATA, stream_id, piece))
    acceptor.receive_frame(frame(K.REQUEST_STREAM, 5, msg=ECHO))
    with pytest.raises(ProtocolViolation, match="stream 5 exceeded the connection's credit"):
        acceptor.receive_frame(frame(K.STREAM_DATA, 5, b""))


def test_a_sender_waits_for_the_connection_credit_as_well():
    window = 1000
    dialler = m.Mux(dialled=True, peer_role=Role.NODE, serving=True, window_units=window,
                    connection_window_units=window + 100)
    a, _ = dialler.start_request(ECHO, with_body=True)
    b, _ = dialler.start_request(ECHO, with_body=True)
    dialler.send_data(a, b"x" * (window - STREAM_DATA_FRAME_COST_BYTES))
    assert dialler.sendable_bytes(b, 500) == 0  # b's own window is full, the connection's is not
    with pytest.raises(LocalProtocolError):
        dialler.send_data(b, b"x")
    # Connection credit wakes every uploader: any of them may have been waiting for it.
    assert dialler.receive_frame(frame(K.CREDIT, m.CONNECTION_STREAM_ID, wire.encode_credit(window))) == [
        m.SendUnblocked(a), m.SendUnblocked(b)
    ]
    assert dialler.sendable_bytes(b, 500) == 500
    with pytest.raises(ProtocolViolation, match="more credit than the window"):
        dialler.receive_frame(frame(K.CREDIT, m.CONNECTION_STREAM_ID, wire.encode_credit(1)))


@pytest.mark.parametrize("close", ["serve", "refuse"])
def test_a_body_left_unread_gives_the_connection_its_credit_back(close):
    window = 20_000  # connection credit goes back in batches of half of it
    acceptor = m.Mux(dialled=False, peer_role=Role.NODE, serving=True, window_units=window,
                     connection_window_units=window)
    acceptor.receive_frame(frame(K.REQUEST_STREAM, 1, msg=ECHO))
    read, unread = b"x" * 5000, b"y" * 6000
    acceptor.receive_frame(frame(K.STREAM_DATA, 1, read))
    assert acceptor.body_consumed(1, read) == []  # less than a batch: kept back
    acceptor.receive_frame(frame(K.STREAM_DATA, 1, unread))
    if close == "serve":
        frames = acceptor.close_serve(1)
    else:
        frames = acceptor.refuse(1, ErrorCode.UNAVAILABLE, "busy")[1:]
    assert frames == [frame(K.CREDIT, m.CONNECTION_STREAM_ID, wire.encode_credit(cost(read) + cost(unread)))]


def test_body_frames_of_a_stream_that_is_gone_still_count_against_the_connection():
    """A peer's in-flight body after we refused or cancelled uses connection credit; it is given back
    at once (else both ends' view of the window would drift), and beyond it is a violation."""
    window = 10_000
    acceptor = m.Mux(dialled=False, peer_role=Role.NODE, serving=True, window_units=window,
                     connection_window_units=window)
    big = b"x" * (window - STREAM_DATA_FRAME_COST_BYTES)  # the whole window: a batch of credit
    (credit,) = acceptor.receive_frame(frame(K.STREAM_DATA, 7, big))
    assert credit == m.SendFrame(frame(K.CREDIT, m.CONNECTION_STREAM_ID, wire.encode_credit(window)))
    with pytest.raises(ProtocolViolation):
        acceptor.receive_frame(frame(K.STREAM_DATA, 9, big + b"x"))


@pytest.mark.parametrize("takes_body", [False, True])
def test_a_body_on_a_request_that_takes_none_is_refused(takes_body):
    _, acceptor = pair()
    msg = ECHO if takes_body else NodeOnlyNote(1)
    events = acceptor.receive_frame(frame(K.REQUEST_STREAM, 1, msg=msg))
    if takes_body:
        assert events == [m.RequestReceived(1, msg, True)]
        return
    (refusal,) = events
    assert refusal.frame.kind is K.ERROR
    assert wire.decode_error(refusal.frame.payload) == (ErrorCode.BAD_REQUEST, "NodeOnlyNote takes no body")
    assert acceptor.stream_count() == 0
    assert acceptor.receive_frame(frame(K.STREAM_DATA, 1, b"ignored")) == []  # dropped, as a stream gone


def test_this_end_cannot_send_a_body_on_a_request_that_takes_none():
    dialler, _ = pair()
    with pytest.raises(LocalProtocolError, match="takes no body"):
        dialler.start_request(NodeOnlyNote(1), with_body=True)


def test_credit_beyond_the_window_is_a_violation():
    dialler, _ = pair()
    stream_id, _ = dialler.start_request(ECHO, with_body=True)
    dialler.send_data(stream_id, b"x")
    credit = frame(K.CREDIT, stream_id, wire.encode_credit(cost(b"x")))
    assert dialler.receive_frame(credit) == [m.SendUnblocked(stream_id)]
    with pytest.raises(ProtocolViolation, match="more credit than the window"):
        dialler.receive_frame(frame(K.CREDIT, stream_id, wire.encode_credit(1)))


def test_credit_for_a_stream_without_a_body_is_ignored():
    dialler, _ = pair()
    stream_id, _ = dialler.start_request(ECHO, with_body=False)
    assert dialler.receive_frame(frame(K.CREDIT, stream_id, wire.encode_credit(1))) == []


def test_no_stream_credit_is_returned_once_the_body_has_ended():
    _, acceptor = pair()
    acceptor.receive_frame(frame(K.REQUEST_STREAM, 1, msg=ECHO))
    full = b"x" * WINDOW_FRAME_BYTES
    for _ in range(STREAM_WINDOW_FRAMES):
        acceptor.receive_frame(frame(K.STREAM_DATA, 1, full))
    acceptor.receive_frame(frame(K.STREAM_END, 1))
    credits = [f for _ in range(STREAM_WINDOW_FRAMES) for f in acceptor.body_consumed(1, full)]
    assert {f.stream_id for f in credits} == {m.CONNECTION_STREAM_ID}  # the connection's credit only


def test_a_long_body_crosses_the_link_within_the_window():
    """Sender and receiver joined frame by frame: the receiver never holds more than the window."""
    window = 5 * cost(b"x" * 10)  # small, so that the sender waits for credit many times
    dialler = m.Mux(dialled=True, peer_role=Role.NODE, serving=True, window_units=window,
                    connection_window_units=2 * window)
    acceptor = m.Mux(dialled=False, peer_role=Role.NODE, serving=True, window_units=window,
                     connection_window_units=2 * window)
    stream_id, request = dialler.start_request(ECHO, with_body=True)
    assert acceptor.receive_frame(request) == [m.RequestReceived(stream_id, ECHO, True)]
    pieces = [bytes([i]) * 10 for i in range(50)]
    buffered: list[bytes] = []
    received: list[bytes] = []
    to_send = list(pieces)
    for _ in range(10 * len(pieces)):  # bounded: each round sends or consumes
        if not to_send and not buffered:
            break
        if to_send and dialler.sendable_bytes(stream_id, len(to_send[0])):
            (event,) = acceptor.receive_frame(dialler.send_data(stream_id, to_send.pop(0)))
            buffered.append(event.data)
            assert sum(cost(data) for data in buffered) <= window
        else:
            data = buffered.pop(0)
            received.append(data)
            for credit in acceptor.body_consumed(stream_id, data):
                assert dialler.receive_frame(credit)
    assert received == pieces
    assert acceptor.receive_frame(dialler.end_body(stream_id)) == [m.BodyEnded(stream_id)]


@pytest.mark.parametrize(
    "size_units, releases, grants",
    [
        (8, [1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 4, 0, 0, 0, 4]),
        (8 * 1024, [3000, 3000, 2192], [0, 6000, 0]),  # bytes: back once half the window is freed
        (8, [4, 4], [4, 4]),
        (1, [1, 1], [1, 1]),   # a window of one returns every unit
        (3, [1, 1, 1], [1, 1, 1]),
    ],
)
def test_receive_window_returns_credit_in_batches(size_units, releases, grants):
    window = ReceiveWindow(size_units)
    got = []
    for units in releases:
        window.consume(units)
        got.append(window.release(units))
    assert got == grants


def test_send_window_consume_and_grant():
    window = SendWindow(2)
    window.consume(2)
    with pytest.raises(LocalProtocolError):
        window.consume(1)
    window.grant(2)
    with pytest.raises(ProtocolViolation):
        window.grant(1)
    assert window.available_units == 2
