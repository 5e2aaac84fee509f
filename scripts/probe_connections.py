#!/usr/bin/env python3
"""Probes a running `stormwatch serve` the way a slow or silent attacker would, and prints how
long the engine takes to close each connection (the bounds of [server]: header_timeout,
idle_timeout, body_timeout, min_body_rate), and its resident memory before and after.

    cargo run --release -- serve &                      # embedded defaults
    python3 scripts/probe_connections.py --pid $!       # default ports 4317, 4318, 9464

Standard library only. Each probe runs in its own thread, so the run takes about as long as
the slowest bound (60 s of idle_timeout with the defaults).
"""

import argparse
import socket
import threading
import time


def rss_mib(pid):
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return None


def closed_after(sock, limit):
    """Seconds until the server closes `sock` (reads and discards what it says)."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return None
    return time.monotonic() - started


def probe(name, address, send, results, limit):
    sock = socket.create_connection(address)
    if send:
        sock.sendall(send)
    results[name] = closed_after(sock, limit)
    sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc", type=int, default=4317)
    parser.add_argument("--http", type=int, default=4318)
    parser.add_argument("--admin", type=int, default=9464)
    parser.add_argument("--pid", type=int, help="the engine's pid, to read its memory")
    parser.add_argument("--limit", type=float, default=120.0, help="give up on a probe after this many seconds")
    args = parser.parse_args()
    host = args.host
    head = b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
    probes = {
        "idle connection, OTLP/HTTP": ((host, args.http), b""),
        "idle connection, admin": ((host, args.admin), b""),
        "idle connection, OTLP/gRPC": ((host, args.grpc), b""),
        "half a request head, OTLP/HTTP": ((host, args.http), head),
        "HTTP/2 preface only, OTLP/gRPC": ((host, args.grpc), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "1 MB of a declared 16 MB body, OTLP/HTTP": (
            (host, args.http),
            head + b"Content-Length: 16000000\r\n\r\n" + bytes(1_000_000),
        ),
        "4 KiB of a declared 16 MB body, OTLP/HTTP": (
            (host, args.http),
            head + b"Content-Length: 16000000\r\n\r\n" + bytes(4096),
        ),
    }
    before = rss_mib(args.pid)
    results = {}
    threads = [
        threading.Thread(target=probe, args=(name, address, send, results, args.limit))
        for name, (address, send) in probes.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in probes:
        seconds = results.get(name)
        shown = "not closed" if seconds is None else f"{seconds:.1f} s"
        print(f"{name:45} closed after {shown}")
    if before is not None:
        print(f"resident memory: {before} MiB before, {rss_mib(args.pid)} MiB after")


if __name__ == "__main__":
    main()
