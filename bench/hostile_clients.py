"""What hostile clients cost a real controller process: its peak RSS under a flood of
oversized bodies that carry no token (or a wrong signature), and how long slow
clients keep their sockets.

    python bench/hostile_clients.py [--connections 30] [--megabytes 30] [--rounds 3]

Each round opens `connections` sockets at once to each of the agent heartbeat (no
token), the webhook (no signature; a wrong one) and a node's heartbeat with its
token but a declared length past the 8 MiB cap, and streams `megabytes` of body on
every one as fast as the server takes it. The controller's RSS is sampled from
/proc every 10 ms. Before issue 14 a 20 MB body to the heartbeat took the
controller from 120 to 646 MB, kept afterwards (target: within 50 MB of idle).
Then 20 clients send a request a byte a second: uvicorn alone let them hold their
sockets as long as they liked (target: closed at --read-timeout, 10 s).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Harness

CHUNK = b"x" * (1 << 16)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")


def flood_one(port: int, head: bytes, size: int, statuses: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sent = 0
        try:
            sock.sendall(head)
            while sent < size:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
        except OSError:  # refused and closed: the point
            pass
        try:
            answer = sock.recv(200)
        except OSError:
            answer = b""
        statuses.append(answer[9:12] or b"---")


def slow_one(port: int, closed_after: list[float]) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                sock.sendall(bytes([byte]))
                time.sleep(1.0)
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    break
                finally:
                    sock.setblocking(True)
        except OSError:
            pass
    closed_after.append(time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=30)
    parser.add_argument("--megabytes", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow", type=int, default=20)
    args = parser.parse_args()
    size = args.megabytes << 20
    with tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp), agent=False) as h:
        assert h.controller is not None
        pid, port = h.controller.pid, h.port
        token = subprocess.run(
            [sys.executable, "-m", "mlsm.controller", "token", "issue", "--role", "node",
             "--node", "n1", "--database-url", h.database],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        for _ in range(20):  # warm: the first requests fill caches
            h.client.get("/healthz")
        time.sleep(0.5)
        idle = rss_mb(pid)
        heads = {
            "heartbeat, no token": b"POST /api/v1/agent/nodes/n1/heartbeat HTTP/1.1\r\n",
            "webhook, unsigned": b"POST /api/v1/hooks/git HTTP/1.1\r\n",
            "webhook, wrong signature": b"POST /api/v1/hooks/git HTTP/1.1\r\n"
            b"X-Hub-Signature-256: sha256=00\r\n",
            "heartbeat, token, over cap": b"POST /api/v1/agent/nodes/n1/heartbeat HTTP/1.1\r\n"
            + f"Authorization: Bearer {token}\r\n".encode(),
        }
        peak, stop = [idle], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        results: dict[str, list[bytes]] = {name: [] for name in heads}
        for _ in range(args.rounds):
            threads = [
                threading.Thread(target=flood_one, args=(
                    port, head + b"Host: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {size}\r\n\r\n".encode(), size, results[name]))
                for name, head in heads.items() for _ in range(args.connections)
            ]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
        time.sleep(0.5)
        after = rss_mb(pid)
        sent = args.rounds * args.connections * len(heads)
        print(f"oversized bodies: {sent} requests of {args.megabytes} MB declared, "
              f"{args.connections * len(heads)} at a time, in {elapsed:.1f} s")  # fmt: skip
        for name, statuses in results.items():
            counts: dict[str, int] = {}
            for status in statuses:
                counts[status.decode()] = counts.get(status.decode(), 0) + 1
            print(f"  {name:28s} answers {counts}")
        print(f"  controller RSS: idle {idle:.0f} MB, peak {peak[0]:.0f} MB "
              f"(+{peak[0] - idle:.0f} MB; target under +50), after {after:.0f} MB")  # fmt: skip
        assert h.client.get("/healthz").status_code == 200

        closed_after: list[float] = []
        threads = [threading.Thread(target=slow_one, args=(port, closed_after))
                   for _ in range(args.slow)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        closed_after.sort()
        print(f"slow clients: {args.slow} sending a byte a second were disconnected after "
              f"{closed_after[0]:.1f}-{closed_after[-1]:.1f} s (--read-timeout 10)")  # fmt: skip


if __name__ == "__main__":
    main()
