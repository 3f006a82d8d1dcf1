"""``python -m ablator serve STORE``: a live, read-only dashboard over any store.

>>> python -m ablator serve runs/digits                      # doctest: +SKIP
http://127.0.0.1:8050/

Progress, agents, the trial table, learning curves, effects and one page per trial, refreshed
every few seconds from :mod:`ablator.analysis` (see ``docs/dashboard.md``). The server never writes
to the store: it opens it read-only, and analysis snapshots go to the local cache folder. Needs
the ``serve`` extra (``python -m pip install -e '.[serve]'`` from the ablator checkout: Starlette and uvicorn); the chart library
(Chart.js, MIT) ships inside the package, so the page works offline.
"""

from __future__ import annotations

import argparse
import os
import sys

from ablator import layout
from ablator.errors import AblatorError, StoreError
from ablator.store import open_store

#: Chart.js release vendored in ``static/chart.umd.min.js`` (licence beside it).
CHART_JS_VERSION = "4.6.1"


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's options."""
    p.add_argument("store", help="store URL: a folder, file://, s3://bucket/prefix (read only)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8050, help="port (default 8050; 0: any free port)")
    p.add_argument(
        "--token",
        default=None,
        help="require this access token (default: $ABLATOR_SERVE_TOKEN; none when unset)",
    )
    p.add_argument(
        "--interval", type=float, default=5.0, help="seconds between two reads of the store (default 5)"
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="local folder for analysis snapshots (default $ABLATOR_CACHE_DIR or ~/.cache/ablator)",
    )


def cli_serve(args: argparse.Namespace) -> int:
    """``ablator serve STORE``: print the URL, then serve until Ctrl-C."""
    if not args.interval > 0:
        raise AblatorError(f"serve: --interval must be a positive number of seconds, got {args.interval}")
    if not 0 <= args.port <= 65535:
        raise AblatorError(f"serve: --port must be between 0 and 65535, got {args.port}")
    store = open_store(args.store, read_only=True)
    if store.get(layout.EXPERIMENT) is None:
        raise StoreError(
            f"serve {args.store}: no experiment here (no {layout.EXPERIMENT}); "
            "create one with `python -m ablator launch EXP --store URL`"
        )
    # Only now the web stack: a mistyped store is reported even without the 'serve' extra.
    from ablator.serve.app import TOKEN_ENV, ServeOptions, serve
    from ablator.serve.view import StoreView

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(
            f"ablator serve: warning: listening on {args.host} without a token: anyone who can reach "
            f"this port can read the experiment (set --token or ${TOKEN_ENV})",
            file=sys.stderr,
        )
    view = StoreView(store, interval=args.interval, cache_dir=args.cache_dir)
    options = ServeOptions(host=args.host, port=args.port, token=token, interval=args.interval)
    serve(view, options, announce=lambda url: print(f"ablator serve: {store.url} at {url}", flush=True))
    return 0


__all__ = ["CHART_JS_VERSION", "add_serve_arguments", "cli_serve"]
