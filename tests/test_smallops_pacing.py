"""A small file carried in a message (``PutSmallFile``, and ``SmallFile`` in answer to
``GetSmallFile``) is held to the node's client bandwidth cap (``[replication]
client_bytes_per_s``) as a streamed body is: before, it went through at any rate."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import trio

from p2pfs import identity, testnet, wire
from p2pfs.client import Client

from admin_helpers import samples, value
from testnet_helpers import CLI_TIMEOUT_S, running_testnet

CAP_BYTES_PER_S = 128 * 1024  # the bucket holds one second of it (node/limits.py CLIENT_BURST_S)
PUT_BYTES = 64 * 1024  # the small-file messages' cap: in the request
GET_BYTES = 16 * 1024  # held inline (the default inline_file_bytes_max): in the answer
PUTS = 4
GETS = 16
# The bucket may be full when a phase starts; all beyond it waits for the rate.
PUTS_S_MIN = (PUTS * PUT_BYTES - CAP_BYTES_PER_S) / CAP_BYTES_PER_S
GETS_S_MIN = (GETS * GET_BYTES - CAP_BYTES_PER_S) / CAP_BYTES_PER_S


def test_small_files_in_messages_are_held_to_the_client_cap(tmp_path: Path) -> None:
    overrides = {"replication": {"client_bytes_per_s": CAP_BYTES_PER_S}}
    with running_testnet(tmp_path / "net", nodes=3, overrides=overrides) as net:
        node1 = net.status()["node1"]
        ident = identity.load_identity(net.directory / testnet.CLIENT_DIR)
        inline = os.urandom(GET_BYTES)
        sent: list[type] = []

        def throttled_s() -> float:
            return value(samples(node1.status_page), "p2pfs_client_throttled_seconds_total")

        async def main() -> tuple[float, float, float, float]:
            async with Client.connect(ident, node1.address) as client:
                assert wire.alpn_speaks(client.conn.alpn_protocol, wire.ALPN_SMALL_FILES)
                request = client.conn.request

                async def spying(msg, **kwargs):
                    sent.append(type(msg))
                    return await request(msg, **kwargs)

                client.conn.request = spying
                with trio.fail_after(CLI_TIMEOUT_S):
                    await client.put(io.BytesIO(inline), "inline.bin", GET_BYTES)
                    before_s, started = throttled_s(), time.monotonic()
                    for i in range(PUTS):
                        await client.put(io.BytesIO(os.urandom(PUT_BYTES)), f"put/{i}", PUT_BYTES)
                    puts_s, puts_throttled_s = time.monotonic() - started, throttled_s() - before_s
                    before_s, started = throttled_s(), time.monotonic()
                    for _ in range(GETS):
                        sink = io.BytesIO()
                        await client.get("inline.bin", sink)
                        assert sink.getvalue() == inline
                    gets_s, gets_throttled_s = time.monotonic() - started, throttled_s() - before_s
            return puts_s, puts_throttled_s, gets_s, gets_throttled_s

        puts_s, puts_throttled_s, gets_s, gets_throttled_s = trio.run(main)
        assert {t.__name__ for t in sent} == {"PutSmallFile"}  # every put went in its request
        assert puts_s >= PUTS_S_MIN, f"{PUTS} puts of {PUT_BYTES} B took {puts_s:.2f} s"
        # Held back, not merely slow: the bucket refills while each put is served, so the time
        # held back is less than the bound on a busy machine, but it is never none.
        assert puts_throttled_s > 0
        assert gets_s >= GETS_S_MIN, f"{GETS} gets of {GET_BYTES} B took {gets_s:.2f} s"
        assert gets_throttled_s > 0
