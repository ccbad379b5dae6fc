"""``difflab serve``: the web page and JSON API for trained runs, on a local uvicorn server."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from difflab.cli.args import positive_int, with_default

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from difflab.serve.app import create_app
        from difflab.serve.models import load_models
    except ImportError as err:
        raise ImportError(f"difflab serve needs FastAPI and uvicorn ({err}): pip install 'difflab[serve]'") \
            from None
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must lie in 1..65535, got {args.port}")
    if not is_loopback(args.host):
        print(f"difflab serve: warning: listening on {args.host}, not a loopback address: anyone who can "
              "reach this machine can use the page and its compute (there is no login)", file=sys.stderr)
    models = load_models(args.runs, args.device)
    for m in models:
        print(f"serving {m.name} ({m.kind}{', latent' if m.pipe.latent is not None else ''}) from {m.run}")
    app = create_app(models, args.queue_size)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"open http://{host}:{args.port}/ (API documented at /docs; Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.serve.limits import QUEUE_SIZE

    p = sub.add_parser("serve", help="a local web page to sample, edit and explore trained runs")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders to serve (only these)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=with_default("address to listen on (a warning if not loopback)", DEFAULT_HOST))
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=with_default("port", DEFAULT_PORT))
    p.add_argument("--device", default="auto", help=with_default("auto | cpu | cuda | cuda:N", "auto"))
    p.add_argument("--queue-size", type=positive_int, default=QUEUE_SIZE,
                   help=with_default("jobs that may wait per model (one more runs)", QUEUE_SIZE))
    p.set_defaults(func=cmd_serve)
