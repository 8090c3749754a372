#!/usr/bin/env python3
"""A Riemann server stand-in for agent/tests/sinks_peers.rs.

Decodes with Google's `protobuf` runtime and `riemann_pb2`, compiled by tests/peers/setup.sh from
the riemann.proto of Debian's riemann-c-client sources: it shares no code with the agent.

    riemann_receiver.py --pb DIR (--udp | --tcp) [--port N] [--no-ack]

Prints `READY <port>` once listening, then one JSON object per line, flushed at once:
- every event: {"transport", "msg_bytes", "msg_events", "host", "service", "time",
  "time_micros", "ttl", "state", "metric_d", "metric_sint64", "metric_f", "description",
  "tags", "attributes": [[key, value], ...]}; a field absent from the message is null;
- {"error": "..."} for anything that does not decode.
Over TCP it reads 4-byte big-endian length frames and answers each with a framed
Msg{ok: true}, like Riemann (not with --no-ack: it reads and stays silent).
"""

import argparse
import json
import socket
import struct
import sys
import threading

OUT = threading.Lock()


def emit(obj):
    with OUT:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def opt(msg, field):
    return getattr(msg, field) if msg.HasField(field) else None


def report(pb, data, transport):
    try:
        msg = pb.Msg()
        msg.ParseFromString(data)
    except Exception as e:  # a decoder error is a finding, not a crash
        emit({"error": f"{transport}: cannot decode {len(data)} bytes: {e}"})
        return
    for ev in msg.events:
        emit(
            {
                "transport": transport,
                "msg_bytes": len(data),
                "msg_events": len(msg.events),
                "host": opt(ev, "host"),
                "service": opt(ev, "service"),
                "time": opt(ev, "time"),
                "time_micros": opt(ev, "time_micros"),
                "ttl": opt(ev, "ttl"),
                "state": opt(ev, "state"),
                "description": opt(ev, "description"),
                "metric_d": opt(ev, "metric_d"),
                "metric_sint64": opt(ev, "metric_sint64"),
                "metric_f": opt(ev, "metric_f"),
                "tags": list(ev.tags),
                "attributes": [[a.key, opt(a, "value")] for a in ev.attributes],
            }
        )


def serve_udp(pb, sock):
    while True:
        data, _ = sock.recvfrom(65535)
        report(pb, data, "udp")


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def serve_tcp_conn(pb, conn, ack):
    ok = pb.Msg(ok=True).SerializeToString()
    with conn:
        while True:
            head = read_exact(conn, 4)
            if head is None:
                return
            (length,) = struct.unpack(">I", head)
            body = read_exact(conn, length)
            if body is None:
                emit({"error": f"tcp: connection closed inside a {length}-byte frame"})
                return
            report(pb, body, "tcp")
            if ack:
                conn.sendall(struct.pack(">I", len(ok)) + ok)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pb", required=True, help="directory holding riemann_pb2.py")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--udp", action="store_true")
    group.add_argument("--tcp", action="store_true")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-ack", action="store_true")
    args = ap.parse_args()

    sys.path.insert(0, args.pb)
    import riemann_pb2 as pb

    if args.udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for bursts of 16 KiB datagrams while Python decodes.
        for opt_name in ("SO_RCVBUFFORCE", "SO_RCVBUF"):
            try:
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, opt_name), 8 << 20)
                break
            except (OSError, AttributeError):
                pass
        sock.bind(("127.0.0.1", args.port))
        emit_ready(sock)
        serve_udp(pb, sock)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))
        sock.listen(16)
        emit_ready(sock)
        while True:
            conn, _ = sock.accept()
            threading.Thread(
                target=serve_tcp_conn, args=(pb, conn, not args.no_ack), daemon=True
            ).start()


def emit_ready(sock):
    with OUT:
        sys.stdout.write(f"READY {sock.getsockname()[1]}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
