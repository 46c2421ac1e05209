"""Transport settings (the ``[net]`` section) and the transport's fixed caps.

The timings are configuration because they trade detection speed against
false alarms on a slow network; the caps are constants because they bound
memory and are part of what a peer may expect of us.
"""

from __future__ import annotations

import dataclasses

from p2pfs.config import doc

# Largest STREAM_DATA payload we send; bodies are cut to this size. Half of
# wire.FRAME_SIZE_BYTES_MAX, and four chunks of the default size: a get's coordinator sends
# the chunks it has ready in one frame (``Scattered``), which took 0.3-0.55 CPU-s per GiB off it
# against a frame per 1 MiB chunk (docs/BENCHMARKS.md, "Get: the coordinator's RSS over
# repeated gets, and fewer copies"). The receiver holds a whole frame before it can use any
# of it: frame_read_timeout_s must allow one to arrive on the slowest link served.
STREAM_DATA_BYTES_MAX = 4 * 1024 * 1024
# What a STREAM_DATA frame costs in credit beyond its payload: the bookkeeping of
# one buffered piece (a bytes object, its slot in the body buffer, the event that
# carried it; ~100-200 bytes in CPython). Without it a peer sending empty or 1-byte
# frames could make us hold millions of objects within a window counted in bytes.
STREAM_DATA_FRAME_COST_BYTES = 256
# Frames of 1 MiB a stream's window holds. 8 frames of 1 MiB keep a 1 Gbit/s link busy
# up to ~60 ms of round trip, and are 8 chunks of the default chunk size: the
# sender never waits for credit while the receiver keeps up (the window before it
# counted bytes held the same 8 frames, so honest transfers pace as they did). Two
# frames of STREAM_DATA_BYTES_MAX fit in it. Peers assume each other's window without
# asking, so its size is part of the protocol: it stayed the same when frames grew to 4 MiB.
STREAM_WINDOW_FRAMES = 8
# Bytes a stream's receiver buffers at most; the sender starts with this much credit.
STREAM_WINDOW_BYTES = STREAM_WINDOW_FRAMES * (1024 * 1024 + STREAM_DATA_FRAME_COST_BYTES)
# Credit a stream's receiver frees before it grants it back: one largest frame, so that
# a sender of such frames gets room for the next as soon as one has been taken (half the
# window, the connection's rule, would wait for two of them: a pause in every other frame).
STREAM_GRANT_BYTES_MIN = STREAM_DATA_BYTES_MAX + STREAM_DATA_FRAME_COST_BYTES
# Bytes of body all the streams of one connection buffer at most together (HTTP/2's
# connection window, RFC 9113 section 6.9.1). Four streams at full pace: a client's
# parallel transfers share it without waiting, and 512 concurrent requests on one
# connection cannot each fill a window (512 x 8 MiB would be 4 GiB).
CONNECTION_WINDOW_BYTES = 4 * STREAM_WINDOW_BYTES
# Concurrent incoming requests per connection; beyond it requests are refused
# with UNAVAILABLE instead of queueing without bound.
INCOMING_REQUESTS_PER_CONNECTION_MAX = 512
# Concurrent incoming requests from one peer (one certificate) over all its
# connections; beyond it they are refused with UNAVAILABLE. Without it a peer
# opens more connections to get more requests served at once. Twice the
# per-connection cap: a node and its peer may briefly hold two connections (both
# dialled at once), and a coordinator's put and get windows (8 chunks each) for
# dozens of files at once stay far below it.
INCOMING_REQUESTS_PER_PEER_MAX = 2 * INCOMING_REQUESTS_PER_CONNECTION_MAX
# Bytes the reader asks for per read while a frame is under way, and while none
# is (a new frame's header and a small message fit in one TLS record). What a
# read may bring in is taken from the memory budget before the read, so the
# budget is a hard bound; an idle connection holds only the small reservation.
RECEIVE_BYTES = 256 * 1024
RECEIVE_BYTES_IDLE = 16 * 1024
# Concurrent TLS handshakes a listener runs; more connections wait in the
# backlog. A handshake costs a few ms of CPU: this keeps a burst of dials (or a
# flood) from starving the event loop.
HANDSHAKES_CONCURRENT_MAX = 64
# Connections a listener keeps open at once; each holds two socket buffers and
# a reader task. When it is reached, a new connection sheds an old one rather
# than being refused: first the oldest that has not authenticated (it proved
# nothing and costs an attacker one SYN), then an authenticated one with no
# request open (a node redials it in milliseconds, a client opens one per
# command). Only when every connection is authenticated and busy is the new one
# refused: 1,024 busy peers are a real overload, not a flood.
INBOUND_CONNECTIONS_MAX = 1024
# Connections from one source address that have not finished the handshake yet,
# once every handshake slot is taken (while slots are free an address may use
# them, up to HANDSHAKES_CONCURRENT_MAX: endpoint.Endpoint._make_room says why).
# Without it one host holding silent connections takes every handshake slot
# (HANDSHAKES_CONCURRENT_MAX) and every other peer waits out its deadline. Below
# the slot count, so one address never keeps all of them; well above what one
# honest host needs at once (a node dials each peer once, a client once per
# command). Authenticated connections do not count: a busy node or NAT gateway
# is not limited, only its half-open attempts. At the limit the oldest attempt
# from that address is shed, not the new one, so an honest client behind the
# same address still gets in unless the flood outruns its handshake (a few ms).
# Like OpenSSH's MaxStartups, but per source and oldest-first instead of random.
UNAUTHENTICATED_PER_ADDRESS_MAX = 16
# A connection flood produces one event per connection (refused, shed, timed
# out, rejected); each kind is logged at most once per this many seconds with
# the count of the rest. 10 s keeps a sustained flood to a few lines a minute
# while a single incident still shows up at once.
LOG_COLLAPSE_INTERVAL_S = 10.0
# Peers (and kinds of fault) whose collapsed warnings are remembered at once
# (observe.PeerCollapsed); beyond it the least recently seen is forgotten. A
# 1,024-node cluster fits, and the table stays a few hundred KB.
LOGGED_PEERS_MAX = 1024
# The smallest memory budget: one largest frame (wire.FRAME_SIZE_BYTES_MAX, 8 MiB)
# must fit, or a connection receiving one would wait for memory forever; twice
# that leaves room for other connections meanwhile.
MEMORY_BUDGET_BYTES_MIN = 16 * 1024 * 1024
# When the heap's free memory goes back to the system (heap.py, budget.MemoryBudget.heap_trim_due):
# once the budget's use has risen to HEAP_TRIM_HIGH_FRACTION of it (abuse, or an unusual burst:
# half of the default 256 MiB is 16 transfers at a full window) and stayed below
# HEAP_TRIM_LOW_FRACTION (what idle connections hold, 16 KiB each) for HEAP_TRIM_SETTLE_S (so that
# the connections that gave their bytes back have also freed their TLS buffers), checked every
# HEAP_TRIM_CHECK_INTERVAL_S, at most once per HEAP_TRIM_INTERVAL_S. A trim costs a few ms per
# 100 MiB of heap, and the next transfer faults its buffers in again (~0.8 CPU-s per GiB): rare
# enough to be free, soon enough that RSS is back at its idle size seconds after an attack ends.
HEAP_TRIM_HIGH_FRACTION = 0.5
HEAP_TRIM_LOW_FRACTION = 0.125
HEAP_TRIM_SETTLE_S = 2.0
HEAP_TRIM_CHECK_INTERVAL_S = 1.0
HEAP_TRIM_INTERVAL_S = 10.0
# The hello is one small frame; a peer announcing more is not speaking our protocol.
HELLO_FRAME_BYTES_MAX = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class NetConfig:
    """The ``[net]`` section: transport timings, in seconds.

    Each is a deadline on one wait, so each trades how soon a dead or frozen
    peer is noticed against how often a merely slow one is given up on.
    """

    handshake_timeout_s: float = doc(
        "A peer that connects and does not finish TLS and the hello within this many seconds of the "
        "accept is dropped; time spent waiting for a handshake slot counts, so a flood of silent "
        "connections cannot park peers in the queue forever.",
        default=5.0,
    )
    connect_timeout_s: float = doc("Seconds to establish a TCP connection when dialling.", default=3.0)
    send_timeout_s: float = doc(
        "A single write that does not complete in this many seconds means the peer stopped reading "
        "(frozen or gone): the connection is closed.",
        default=10.0,
    )
    stream_idle_timeout_s: float = doc(
        "Longest wait, in seconds, for the next piece of a streamed body or for credit to send one.",
        default=15.0,
    )
    frame_read_timeout_s: float = doc(
        "A frame whose first bytes arrived must be complete within this many seconds for each MiB "
        "it declares (a frame of at most 1 MiB: this many seconds), or the connection is closed: a "
        "peer cannot hold a buffer (up to a whole declared frame, 8 MiB) and a reader by sending "
        "part of a frame and then nothing. 30 s per MiB allows a link as slow as ~35 KB/s, for our "
        "largest frames (4 MiB of body) as for small ones; lower it to free stuck buffers sooner.",
        default=30.0,
    )
    connection_idle_timeout_s: float = doc(
        "A connection with no request open either way and nothing received for this many seconds "
        "is closed. Between nodes, gossip keeps a connection in use well within it; a closed one is "
        "dialled again when next needed (one handshake). A client that pauses longer reconnects. "
        "Lower frees idle sockets sooner, at the cost of more handshakes.",
        default=300.0,
    )
    redial_backoff_s_min: float = doc(
        "After a failed dial, seconds before the address is tried again; doubles on each failure...",
        default=0.1,
    )
    redial_backoff_s_max: float = doc("... up to this many seconds.", default=5.0)
    memory_budget_bytes: int = doc(
        "Bytes of input the node buffers at most, over all its connections: frames being read, "
        "bodies not yet consumed, and requests being handled. When it is spent, connections stop "
        "reading (TCP pushes back on the senders) until handlers and consumers free some; it never "
        "grows. 256 MiB is 32 streams at a full window (8 MiB each), or 256 chunks of 1 MiB in "
        "replicas' hands, far above what a busy node holds (a put has 8 chunks in flight); it "
        "bounds what abusive peers can make the node hold to that plus the node's idle size. "
        "Raise it for many parallel transfers on a large machine; lower it on a small one "
        "(at least 16 MiB: one frame of 8 MiB must fit, with room for others).",
        default=256 * 1024 * 1024,
    )

    def __post_init__(self) -> None:
        if self.memory_budget_bytes < MEMORY_BUDGET_BYTES_MIN:
            raise ValueError(f"memory_budget_bytes must be at least {MEMORY_BUDGET_BYTES_MIN} (16MiB)")
