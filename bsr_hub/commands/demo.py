"""`bsr-hub demo`: serve the Gradio demo (bsr_hub.demo) on localhost, with its flags."""

from __future__ import annotations

import argparse
import sys


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, build_demo, serve

    try:
        settings = DemoSettings.from_env(
            models=args.model or None, max_megapixels=args.max_megapixels, concurrency=args.concurrency
        )
        demo = build_demo(settings)
    except (ValueError, OSError, ImportError) as err:  # a bad --model, a bad setting, gradio not installed
        print(f"error: {err}", file=sys.stderr)
        return 2
    serve(demo, server_name=args.host, server_port=args.port)  # blocks until Ctrl-C
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`bsr-hub demo` and its flags."""
    p = subparsers.add_parser("demo", help="serve the Gradio demo on localhost (needs bsr-hub[demo])")
    p.add_argument("--model", action="append", help="checkpoint to offer (repeatable; default: every bundled one)")
    p.add_argument("--host", default=None, help="address to bind (default GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default GRADIO_SERVER_PORT, else 7860 or the next free)")
    p.add_argument("--max-megapixels", type=float, default=None, help="largest input accepted (default 2)")
    p.add_argument("--concurrency", type=int, default=None, help="upscales running at once (default 1)")
    p.set_defaults(func=cmd_demo)
