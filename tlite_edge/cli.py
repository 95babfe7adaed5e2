"""``tlite-edge`` entry point: parse arguments, dispatch to a verb, turn failures into one line."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import traceback

from tlite_edge import __version__
from tlite_edge.errors import TliteError

# verb -> module under tlite_edge.commands
VERBS = (
    "convert", "quantize", "imatrix", "inspect", "run", "chat", "serve", "bench", "doctor", "eval", "demo",
    "export", "release", "worker",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlite-edge", description="T-lite-instruct-0.1 on llama.cpp.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"tlite_edge.commands.{verb}").add_parser(sub)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: no half-written file stays behind


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except TliteError as exc:
        print(f"tlite-edge {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tlite-edge {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for the user, unless asked for
        if args.debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"tlite-edge {args.verb}: unexpected error: {type(exc).__name__}: {first} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
