#!/usr/bin/env python3
"""Hostile clients for bench/abuse.sh, against 127.0.0.1 only, for a bounded time.

Usage: hostile.py PORT SECONDS TOKEN  (HOSTILE_ONLY=nan|dense|anonymous|idle|slow runs one kind)
Runs at once: clients posting the NaN document (a valid token, 200,000 NaN tokens deep in
`data`), dense-tree clients (a valid token: 16 MiB gzip batches whose one item carries an
ignored `[0,0,…]`, and 1 MiB metric bodies of `[0,0,…]` with every field missing: ~40x
their bytes as a JSON tree), clients posting 1 MiB bodies without a token, idle sockets that
never send a request, and slow senders that trickle a request a byte at a time. Prints
what each got.
"""
import asyncio
import collections
import gzip
import os
import sys

HOST = "127.0.0.1"
port, seconds, token = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
counts = collections.Counter()


def nan_document() -> bytes:
    key = "k" * 100
    data = ('{"%s":' % key) * 50 + "[" + ",".join(["NaN"] * 200_000) + "]" + "}" * 50
    return ('{"type":"t","data":%s,"data_index":"i"}' % data).encode()


def dense(size: int) -> bytes:
    return b"[" + b"0," * (size // 2) + b"0]"


def dense_batch() -> bytes:
    item = b'{"metric_name":"a","metric_value":1,"data_string":"d","x":%s}'
    return b"[" + item % dense((16 << 20) - 256) + b"]"


def request(path: str, body: bytes, auth: bool, gzipped: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    if gzipped:
        body = gzip.compress(body, 9)
        head += "Content-Encoding: gzip\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    if auth:
        head += f"Authorization: Bearer {token}\r\n"
    return head.encode() + b"\r\n" + body


async def status_of(reader) -> str:
    line = await reader.readline()
    return line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed"


async def poster(kind: str, payload: bytes, deadline: float):
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(payload)
            await writer.drain()
            counts[f"{kind} {await asyncio.wait_for(status_of(reader), 30)}"] += 1
            writer.close()
        except (OSError, asyncio.TimeoutError):
            counts[f"{kind} error"] += 1
            await asyncio.sleep(0.05)


async def idle_socket(deadline: float):
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            got = await asyncio.wait_for(reader.read(1), max(0.1, deadline - loop.time()))
            counts["idle closed by server" if got == b"" else "idle answered"] += 1
            writer.close()
        except asyncio.TimeoutError:
            counts["idle still open at the end"] += 1
        except OSError:
            counts["idle error"] += 1
            await asyncio.sleep(0.05)


async def slow_sender(payload: bytes, deadline: float):
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            for byte in payload:
                if loop.time() >= deadline:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)
            counts["slow sender done"] += 1
            writer.close()
        except OSError:
            counts["slow sender cut off by server"] += 1


async def main():
    deadline = asyncio.get_running_loop().time() + seconds
    nan = request("/api/analytics/log_raw_analytics", nan_document(), auth=True)
    big = request("/api/analytics/log_raw_metric",
                  b'{"metric_name":"m","metric_value":1,"data_string":"' + b"x" * ((1 << 20) - 100) + b'"}',
                  auth=False)
    slow = request("/api/analytics/log_raw_metric", b'{"metric_name":"m"}', auth=True)
    dense_batches = request("/api/analytics/log_raw_metric/batch", dense_batch(), auth=True,
                            gzipped=True)
    dense_metric = request("/api/analytics/log_raw_metric", b'{"x":%s}' % dense((1 << 20) - 16),
                           auth=True)
    only = os.environ.get("HOSTILE_ONLY")
    kinds = {
        "nan": lambda: [poster("nan", nan, deadline) for _ in range(4)],
        "dense": lambda: [poster("dense 16MiB gzip batch", dense_batches, deadline)
                          for _ in range(8)]
                         + [poster("dense 1MiB metric", dense_metric, deadline) for _ in range(4)],
        "anonymous": lambda: [poster("anonymous 1MiB", big, deadline) for _ in range(32)],
        "idle": lambda: [idle_socket(deadline) for _ in range(200)],
        "slow": lambda: [slow_sender(slow, deadline) for _ in range(50)],
    }
    tasks = [task for kind, make in kinds.items() if only in (None, kind) for task in make()]
    await asyncio.gather(*tasks)
    for what, n in sorted(counts.items()):
        print(f"hostile,{what},{n}")


asyncio.run(main())
