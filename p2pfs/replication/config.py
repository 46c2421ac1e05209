"""The ``[replication]`` section."""

from __future__ import annotations

import dataclasses

from p2pfs.config import doc
from p2pfs.ring import PLACEMENT_VERSION_NEWEST, PLACEMENT_VERSIONS
from p2pfs.storage import CHUNK_SIZE_BYTES_DEFAULT, CHUNK_SIZE_BYTES_MAX, CHUNK_SIZE_BYTES_MIN
from p2pfs.storage.manifest import INLINE_BYTES_MAX


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicationConfig:
    rf: int = doc("Replication factor: nodes that hold each chunk and each name. The same on every node.",
                  default=3)
    w: int = doc("Write quorum: acknowledgements a chunk or name write needs before a put succeeds. "
                 "R + W > RF gives read-your-writes while no replica is down.", default=2)
    r: int = doc("Read quorum: replicas of a name consulted on a get; the newest answer wins.", default=2)
    chunk_size_bytes: int = doc(
        "Size files are cut into, in bytes (the last chunk may be shorter). The same on every node: "
        "identical content then gives identical chunks, which deduplicates.",
        default=CHUNK_SIZE_BYTES_DEFAULT,
    )
    replica_timeout_s: float = doc(
        "Seconds one replica has to store or return one chunk or name before the coordinator "
        "tries another.", default=10.0,
    )
    put_window_chunks: int = doc(
        "Chunks a put has in flight at once (each being written to its replicas). Bounds the "
        "coordinator's memory to about window x chunk size per put.", default=8,
    )
    get_window_chunks: int = doc(
        "Chunks a get fetches ahead of the one being sent to the client.", default=8,
    )
    replica_backoff_s: float = doc(
        "After a replica fails or times out, seconds it is skipped (written to a stand-in with a "
        "hint) before being tried again, so one frozen node does not slow every chunk.",
        default=5.0,
    )
    dead_grace_s: float = doc(
        "Seconds a dead node stays in the ring. Until then it counts as temporarily down: writes "
        "meant for it go to stand-ins with hints. After it (or on a graceful leave) it leaves the "
        "ring and its data is re-replicated.", default=3600.0,
    )
    hint_delivery_interval_s: float = doc(
        "Seconds between attempts to hand hinted chunks and names back to their owners.", default=2.0,
    )
    hint_ttl_s: float = doc(
        "Seconds a hint is kept; older hints are dropped and anti-entropy is the safety net "
        "(Cassandra keeps hints 3 h).", default=3 * 3600.0,
    )

    anti_entropy_interval_s: float = doc(
        "Seconds between anti-entropy rounds: each node compares digests of what it shares with "
        "each live replica peer and exchanges only the difference; it also hands data it no "
        "longer owns to the owners. Lower heals sooner at more background traffic when idle "
        "(one ~10 KiB digest message per peer per round).", default=30.0,
    )
    repair_bytes_per_s: int = doc(
        "Bandwidth cap for anti-entropy, hand-off and scrub repair, in bytes per second (or a "
        "size like \"64MiB\"), so repair never starves foreground puts and gets. Changes on SIGHUP.",
        default=64 * 1024 * 1024,
    )
    client_bytes_per_s: int = doc(
        "Bandwidth cap for clients' file transfers through this node, in bytes per second (or a "
        "size like \"100MiB\"): put bodies received and get bodies sent share it. Chunk copies "
        "between nodes are not counted (repair has repair_bytes_per_s). 0: no cap. Set it a little "
        "below the link's speed minus repair_bytes_per_s so that gossip and repair keep room. "
        "Changes on SIGHUP.",
        default=0,
    )
    repair_concurrency: int = doc("Peers a node repairs with at once.", default=2)
    scrub_bytes_per_s: int = doc(
        "Rate at which a node re-reads and verifies its chunks in the background, in bytes per "
        "second; a chunk that fails is quarantined and fetched again from a healthy replica. "
        "0 turns the scrub off.", default=4 * 1024 * 1024,
    )
    gc_interval_s: float = doc(
        "Seconds between garbage collection rounds (chunks no live file refers to; old tombstones).",
        default=600.0,
    )
    chunk_gc_grace_s: float = doc(
        "A chunk no live file refers to is removed only once it has not been written for this "
        "many seconds, so that chunks of a put still in progress are never collected.",
        default=3600.0,
    )
    tombstone_gc_grace_s: float = doc(
        "Seconds a delete's tombstone is kept. Must exceed the longest outage after which a node "
        "may rejoin with its old data: a node away longer could bring deleted files back, so wipe "
        "its data dir before it rejoins (Cassandra's gc_grace_seconds, 10 days by default).",
        default=10 * 86400.0,
    )
    leave_handoff_timeout_s: float = doc(
        "On a graceful leave, seconds the node may spend handing its data to the new owners "
        "before it announces its departure anyway.", default=300.0,
    )
    inline_file_bytes_max: int = doc(
        "Files of at most this many bytes (and shorter than a chunk) are stored inside their name "
        "entry instead of as a chunk: a put costs one row per replica instead of a chunk file and a "
        "row (two fsyncs fewer on each), a get one quorum read instead of a read and a chunk fetch. "
        "Each such file's bytes then travel in every read quorum answer and ls page of its name, "
        "hence the small default. 0 stores every file in chunks: set it while any node of the "
        "cluster runs a version that cannot read inline entries (it refuses them as an unknown "
        f"manifest format). At most {INLINE_BYTES_MAX}.", default=16 * 1024,
    )
    placement_version: int = doc(
        "The newest placement (how keys map to nodes) this node runs and advertises in its member "
        "record: 1 is the ring of 2,048 tokens per unit of weight, 2 multi-probe hashing with 32, "
        "3 the same with each key's replicas the members nearest to its probes (a join or leave "
        "copies only the keys that move, once). The cluster places by the oldest version any ring "
        "member advertises, so it switches to a newer one only once every member runs it; set an "
        "older one to hold a cluster at it while its nodes are upgraded, or to go back to it.",
        default=PLACEMENT_VERSION_NEWEST,
    )
    placement_fallback_s: float = doc(
        "For this many seconds after the placement version the cluster places by changes (as this "
        "node sees it, across its restarts too), a name that its replicas say is absent is also "
        "looked up at its replicas under the version placed by before, where it stays until anti-entropy "
        "hands it over. Must exceed the time anti-entropy takes to move a node's data. 0: never.",
        default=3600.0,
    )
    chunk_write_shape: str = doc(
        "How a put sends each chunk to its replicas. \"chain\": the coordinator stores its copy and "
        "sends the chunk once, to the first replica, which passes it on to the next (each node "
        "sends each byte at most once: the coordinator sends a chunk once instead of rf - 1 "
        "times); replicas running a version without chains are written directly. "
        "\"star\": the coordinator sends the chunk to every replica itself (one hop fewer of "
        "latency, no node's word about another). The same total CPU on one machine; see "
        "docs/ARCHITECTURE.md, \"Chain replication\".", default="chain",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.rf <= 16:
            raise ValueError("rf must be between 1 and 16")
        if not 1 <= self.w <= self.rf:
            raise ValueError("w must be between 1 and rf")
        if not 1 <= self.r <= self.rf:
            raise ValueError("r must be between 1 and rf")
        if not CHUNK_SIZE_BYTES_MIN <= self.chunk_size_bytes <= CHUNK_SIZE_BYTES_MAX:
            raise ValueError(
                f"chunk_size_bytes must be between {CHUNK_SIZE_BYTES_MIN} and {CHUNK_SIZE_BYTES_MAX}"
            )
        for name in ("replica_timeout_s", "replica_backoff_s", "hint_delivery_interval_s",
                     "anti_entropy_interval_s", "gc_interval_s", "repair_bytes_per_s",
                     "leave_handoff_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be more than 0")
        if self.repair_concurrency < 1:
            raise ValueError("repair_concurrency must be at least 1")
        if self.scrub_bytes_per_s < 0:
            raise ValueError("scrub_bytes_per_s cannot be negative")
        if self.client_bytes_per_s < 0:
            raise ValueError("client_bytes_per_s cannot be negative")
        if self.put_window_chunks < 1 or self.get_window_chunks < 1:
            raise ValueError("windows must be at least 1 chunk")
        if not 0 <= self.inline_file_bytes_max <= INLINE_BYTES_MAX:
            raise ValueError(f"inline_file_bytes_max must be between 0 and {INLINE_BYTES_MAX}")
        if self.placement_version not in PLACEMENT_VERSIONS:
            raise ValueError(f"placement_version must be one of {sorted(PLACEMENT_VERSIONS)}")
        if self.placement_fallback_s < 0:
            raise ValueError("placement_fallback_s cannot be negative")
        if self.chunk_write_shape not in ("chain", "star"):
            raise ValueError('chunk_write_shape must be "chain" or "star"')
