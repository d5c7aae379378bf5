"""The floor under any proxy's overhead here: a minimal byte relay in plain Python.

    python benchmarks/relay_floor.py --target http://127.0.0.1:PORT [--port 0]

One `selectors` (epoll) loop, one upstream connection per client connection, bytes copied in
both directions as they arrive (one `recv`, one `send`), TCP_NODELAY on both sides; no HTTP
parsing, no recording, no backpressure beyond a blocking `sendall`. benchmarks/record_overhead.py
`--floor` runs it beside the recorder: what this relay adds to TTFT is the cost of one more
process hop on this machine, which no proxy can go below.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
from urllib.parse import urlsplit


def main() -> int:
    """Relay every connection to 127.0.0.1:--port (0: a free port) to --target, printing the
    address once, until killed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    u = urlsplit(a.target)
    upstream = (u.hostname, u.port)
    listener = socket.create_server(("127.0.0.1", a.port))
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    print(f"relaying {a.target} at http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                client, _ = listener.accept()
                up = socket.create_connection(upstream)
                for s, peer in ((client, up), (up, client)):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(s, selectors.EVENT_READ, peer)
                continue
            src, dst = key.fileobj, key.data
            try:
                data = src.recv(16384)
            except OSError:
                data = b""
            if data:
                dst.setblocking(True)
                dst.sendall(data)
                continue
            for s in (src, dst):
                sel.unregister(s)
                s.close()


if __name__ == "__main__":
    sys.exit(main())
