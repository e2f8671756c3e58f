"""A terminal that only logs on, for the lab's connection tests: `--tries N` hellos, 0.25 s
apart, until one is welcomed; one JSON line per answer on stdout; then it stays connected.
Its sockets linger 0: when it dies its machine sends one reset and forgets the connection
(a normal close would send a FIN again and again until the CP hears it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys

from hsb.wire.framing import Decoder, encode


async def attempt(host: str, port: int, name: str) -> dict[str, object]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.write(encode({"t": "hello", "terminal": name, "last_reply": 0}))
    dec = Decoder(1 << 20, None)
    while True:
        data = await asyncio.wait_for(reader.read(65536), 5)
        if not data:
            return {"t": "closed"}
        msgs = dec.feed(data)
        if msgs:
            if msgs[0]["t"] == "welcome":
                attempt.keep = writer  # type: ignore[attr-defined]
            else:
                writer.close()
            return msgs[0]


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cp", required=True)
    p.add_argument("--terminal", required=True)
    p.add_argument("--tries", type=int, default=1)
    a = p.parse_args()
    host, port = a.cp.rsplit(":", 1)
    for _ in range(a.tries):
        msg = await attempt(host, int(port), a.terminal)
        print(json.dumps({"t": msg.get("t"), "code": msg.get("code")}), flush=True)
        if msg.get("t") == "welcome":
            await asyncio.sleep(3600)
        await asyncio.sleep(0.25)
    sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
