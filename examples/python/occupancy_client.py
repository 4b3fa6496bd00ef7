#!/usr/bin/env python3
"""A command-line client of the occupancy service, with grpcio.

The stubs are generated at run time from the repository's proto
(proto/occupancy/v1/occupancy.proto) with grpc_tools.protoc into a temporary
directory, so no generated code is kept. Every result is printed as one JSON
object per line, with the proto's JSON (camelCase, Ably-style) field names:

  get CHANNEL...                   ChannelDetails of each channel
  list [--prefix P] [--limit N]    ChannelDetails of every active channel,
                                   following next_cursor to the last page
  subscribe CHANNEL... [--prefix P] [--count N]
                                   occupancy events (the snapshot first, then
                                   every change); exits after N events
  front-end SESSION CONNECTION CHANNEL...
                                   a front end following the session rule
                                   (FrontEnd below): attaches CONNECTION to
                                   each CHANNEL, then sends a KeepAlive per
                                   line read from stdin, and closes the
                                   session at the end of stdin

Usage: python3 occupancy_client.py [--endpoint HOST:PORT] COMMAND ...
"""

import argparse
import importlib
import importlib.resources
import json
import os
import sys
import tempfile
from pathlib import Path

PROTO_FILE = "occupancy/v1/occupancy.proto"
DEFAULT_PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
# Deadline of each unary call, in seconds.
CALL_TIMEOUT = 30


def load_stubs(proto_root: Path, out_dir: str):
    """Generates the message and service modules into out_dir and imports them."""
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto_root / PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        sys.exit(f"error: protoc failed on {proto_root / PROTO_FILE}")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("occupancy.v1.occupancy_pb2")
    pb2_grpc = importlib.import_module("occupancy.v1.occupancy_pb2_grpc")
    return pb2, pb2_grpc


def to_dict(message) -> dict:
    """The message as the proto's JSON mapping, zero-valued fields included."""
    from google.protobuf import json_format

    try:
        return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf older than 5.26
        return json_format.MessageToDict(message, including_default_value_fields=True)


def emit(message) -> None:
    print(json.dumps(to_dict(message), separators=(",", ":")), flush=True)


def cmd_get(stub, pb2, args) -> None:
    if len(args.channels) == 1:
        resp = stub.GetOccupancy(pb2.GetOccupancyRequest(channel=args.channels[0]), timeout=CALL_TIMEOUT)
        emit(resp.channel)
    else:
        resp = stub.BatchGetOccupancy(pb2.BatchGetOccupancyRequest(channels=args.channels), timeout=CALL_TIMEOUT)
        for details in resp.channels:
            emit(details)


def cmd_list(stub, pb2, args) -> None:
    cursor = ""
    while True:
        req = pb2.ListChannelsRequest(prefix=args.prefix, limit=args.limit, cursor=cursor)
        page = stub.ListChannels(req, timeout=CALL_TIMEOUT)
        for details in page.channels:
            emit(details)
        cursor = page.next_cursor
        if not cursor:
            return


def cmd_subscribe(stub, pb2, args) -> None:
    req = pb2.SubscribeOccupancyRequest(channels=args.channels, prefix=args.prefix)
    call = stub.SubscribeOccupancy(req)
    seen = 0
    try:
        for resp in call:
            # the stream also says when it is live and sends heartbeats
            # while quiet: only events are printed
            if not resp.HasField("event"):
                continue
            emit(resp.event)
            seen += 1
            if args.count and seen >= args.count:
                return
    finally:
        call.cancel()


class FrontEnd:
    """The front-end side of a session, following the service's rule: keep
    what you hold, remember the lease epoch of your last SyncSession (or
    first answer), and when an answer carries another epoch (or KeepAlive
    says UNKNOWN) the session's state is gone: re-send all of it."""

    def __init__(self, stub, pb2, session_id):
        self.stub, self.pb2, self.session_id = stub, pb2, session_id
        self.held = {}  # (connection, channel) -> modes
        self.epoch = 0

    def follow(self, epoch, unknown=False) -> bool:
        """Applies the rule to an answer; True when it re-sent the state."""
        if self.epoch == 0 and not unknown:
            self.epoch = epoch
            return False
        if unknown or epoch != self.epoch:
            self.sync()
            return True
        return False

    def sync(self) -> None:
        attachments = [
            self.pb2.SessionAttachment(connection_id=conn, channel=ch, modes=modes)
            for (conn, ch), modes in self.held.items()
        ]
        req = self.pb2.SyncSessionRequest(session_id=self.session_id, attachments=attachments)
        self.epoch = self.stub.SyncSession(req, timeout=CALL_TIMEOUT).session_epoch

    def attach(self, connection, channel, modes) -> bool:
        self.held[(connection, channel)] = modes
        req = self.pb2.AttachRequest(session_id=self.session_id, connection_id=connection, channel=channel, modes=modes)
        return self.follow(self.stub.Attach(req, timeout=CALL_TIMEOUT).session_epoch)

    def keep_alive(self):
        resp = self.stub.KeepAlive(self.pb2.KeepAliveRequest(session_id=self.session_id), timeout=CALL_TIMEOUT)
        unknown = resp.status == self.pb2.SESSION_STATUS_UNKNOWN
        return resp, self.follow(resp.session_epoch, unknown=unknown and self.epoch != 0)

    def close(self) -> None:
        self.stub.CloseSession(self.pb2.CloseSessionRequest(session_id=self.session_id), timeout=CALL_TIMEOUT)


def cmd_front_end(stub, pb2, args) -> None:
    fe = FrontEnd(stub, pb2, args.session)
    for channel in args.channels:
        resynced = fe.attach(args.connection, channel, [pb2.MODE_SUBSCRIBE])
        emit_line({"call": "attach", "channel": channel, "sessionEpoch": str(fe.epoch), "resynced": resynced})
    for _line in sys.stdin:
        resp, resynced = fe.keep_alive()
        status = pb2.SessionStatus.Name(resp.status)
        emit_line({"call": "keepAlive", "status": status, "sessionEpoch": str(fe.epoch), "resynced": resynced})
    fe.close()


def emit_line(obj) -> None:
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Occupancy service client (grpcio).")
    p.add_argument("--endpoint", default="127.0.0.1:50051", help="server address, host:port (default %(default)s)")
    p.add_argument("--proto-root", type=Path, default=DEFAULT_PROTO_ROOT, help="directory holding " + PROTO_FILE)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("get", help="occupancy of channels")
    g.add_argument("channels", nargs="+", metavar="CHANNEL")

    ls = sub.add_parser("list", help="every active channel, all pages")
    ls.add_argument("--prefix", default="", help="only channels whose names start with this")
    ls.add_argument("--limit", type=int, default=0, help="page size (0: the server's default, 100)")

    s = sub.add_parser("subscribe", help="stream occupancy events")
    s.add_argument("channels", nargs="*", metavar="CHANNEL")
    s.add_argument("--prefix", default="", help="also follow every channel starting with this")
    s.add_argument("--count", type=int, default=0, help="exit after this many events (0: never)")
    fe = sub.add_parser("front-end", help="a front end following the session rule (KeepAlive per stdin line)")
    fe.add_argument("session", metavar="SESSION")
    fe.add_argument("connection", metavar="CONNECTION")
    fe.add_argument("channels", nargs="+", metavar="CHANNEL")
    args = p.parse_args(argv)
    if args.command == "subscribe" and not args.channels and not args.prefix:
        p.error("subscribe needs channels, --prefix, or both")
    if getattr(args, "count", 0) < 0 or getattr(args, "limit", 0) < 0:
        p.error("--count and --limit must not be negative")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import grpc

    with tempfile.TemporaryDirectory(prefix="occupancy-stubs-") as out_dir:
        pb2, pb2_grpc = load_stubs(args.proto_root, out_dir)
        with grpc.insecure_channel(args.endpoint) as channel:
            stub = pb2_grpc.OccupancyServiceStub(channel)
            if args.command == "front-end":
                stub = pb2_grpc.ConnectionServiceStub(channel)
            command = {"get": cmd_get, "list": cmd_list, "subscribe": cmd_subscribe, "front-end": cmd_front_end}[
                args.command
            ]
            try:
                command(stub, pb2, args)
            except grpc.RpcError as e:
                print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                return 130
            except BrokenPipeError:  # a closed pipe (`| head`) ends the output quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
