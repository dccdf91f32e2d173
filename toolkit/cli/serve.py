"""``python -m toolkit serve RUN_DIR``: a REST API around a run's variant (FastAPI on uvicorn).

The variant is the report's recommendation for ``host`` unless ``--variant`` names one; its runtime follows its
files (ONNX Runtime first) unless ``--runtime`` says otherwise. Requests get eval's pre- and post-processing and
are batched dynamically. Ctrl-C or SIGTERM stops accepting, lets the requests in flight finish, and exits 0.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys

from toolkit.errors import UserError

HELP = "serve a run's variant over HTTP (predict / generate / translate), with dynamic batching"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (what `toolkit run` wrote)")
    p.add_argument("--variant", metavar="NAME", help="the variant to serve (default: the report's pick for host)")
    p.add_argument("--runtime", metavar="NAME", help="onnxruntime | executorch | pytorch (default: from its files)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N", help="inputs per model call at most (16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long a batch may wait to fill while others are queued (5; a lone request never waits)")
    p.add_argument("--threads", type=int, metavar="N", help="runtime threads (default: this machine's usable CPUs)")
    p.add_argument("--max-request-bytes", type=int, default=1_000_000, metavar="B",
                   help="larger request bodies get 413 (default 1000000)")
    p.add_argument("--timeout-s", type=float, default=30.0, metavar="S",
                   help="a request waiting longer gets 503 (default 30)")


def _check(args: argparse.Namespace) -> None:
    for flag, value, low in (("--max-batch", args.max_batch, 1), ("--max-request-bytes", args.max_request_bytes, 1),
                             ("--port", args.port, 0)):
        if value < low:
            raise UserError(f"{flag} must be at least {low} (got {value})")
    if args.port > 65535:
        raise UserError(f"--port must be at most 65535 (got {args.port})")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1 (got {args.threads})")
    if args.max_wait_ms < 0 or args.timeout_s <= 0:
        raise UserError("--max-wait-ms must be ≥ 0 and --timeout-s > 0")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port) for uvicorn.

    proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it every
    keep-alive response waited ~40 ms for the client's delayed ACK (Nagle): 44 ms vs 0.8 ms per request, measured.

    Raises:
        UserError: the address cannot be bound (in use, not this machine's).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); pick another port, or 0 "
                        f"for a free one") from None
    return sock


def run(args: argparse.Namespace) -> int:
    _check(args)
    import uvicorn

    from toolkit.serve.app import create_app
    from toolkit.serve.model import load_served

    served = load_served(args.run_dir, args.variant, args.runtime, args.threads)
    sock = listening_socket(args.host, args.port)  # bound here: a port in use is one exit-2 line
    port = sock.getsockname()[1]
    app = create_app(served, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, timeout_s=args.timeout_s,
                     max_request_bytes=args.max_request_bytes)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None,
                                           access_log=False))
    print(f"serving variant '{served.variant}' ({served.task.name}, {served.runtime}, {served.threads} threads) of "
          f"{served.run} at http://{args.host}:{port}  ·  POST {served.describe()['endpoint']}  ·  docs: "
          f"http://{args.host}:{port}/docs", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again with the handlers it found:
    # handlers that do nothing make that second delivery a no-op, so a requested stop exits 0.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("server stopped", file=sys.stderr, flush=True)
    return 0
