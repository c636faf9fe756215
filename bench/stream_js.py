#!/usr/bin/env python3
"""JetStream API requests for bench/stream.sh, over a plain NATS connection (stdlib only:
the machine has no NATS client library or `nats` CLI).

  stream_js.py messages PORT STREAM          messages the stream holds
  stream_js.py pending PORT STREAM CONSUMER  the consumer's num_pending + num_ack_pending
                                             (what analytics_loader_pending_messages shows)
  stream_js.py delete-consumer PORT STREAM CONSUMER
                                             so that the next loader starts again from the
                                             stream's first message (the stream keeps its
                                             messages: limits retention)

Only 127.0.0.1 is ever contacted.
"""
import json
import socket
import sys


def request(port, subject, payload=b"", timeout=10.0):
    """One request/reply on the JetStream API; returns the decoded JSON reply."""
    with socket.create_connection(("127.0.0.1", int(port)), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        reader.readline()  # the server's INFO line
        inbox = "_INBOX.bench_stream_js"
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\n'
            + f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode()
            + payload
            + b"\r\n"
        )
        while True:
            line = reader.readline()
            if not line:
                raise SystemExit(f"{subject}: connection closed without a reply")
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise SystemExit(f"{subject}: {line.decode().strip()}")
            elif line.startswith(b"MSG"):
                size = int(line.split()[-1])
                return json.loads(reader.read(size + 2)[:size])


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    command, port, stream = argv[:3]
    if command == "messages":
        reply = request(port, f"$JS.API.STREAM.INFO.{stream}")
        if "error" in reply:
            raise SystemExit(f"messages: {reply['error']}")
        print(reply["state"]["messages"])
    elif command == "pending":
        reply = request(port, f"$JS.API.CONSUMER.INFO.{stream}.{argv[3]}")
        if "error" in reply:  # no consumer yet: nothing has been delivered
            print(request(port, f"$JS.API.STREAM.INFO.{stream}")["state"]["messages"])
        else:
            print(reply["num_pending"] + reply["num_ack_pending"])
    elif command == "delete-consumer":
        reply = request(port, f"$JS.API.CONSUMER.DELETE.{stream}.{argv[3]}")
        # 10014: consumer not found, already gone
        if "error" in reply and reply["error"].get("err_code") != 10014:
            raise SystemExit(f"delete-consumer: {reply['error']}")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
