"""The ``petuq`` command: parse arguments, call the library, write outputs.

Each subcommand is a module of this package with ``register(subparsers)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "listmode",
    "simulate",
    "reconstruct",
    "reconstruct_uq",
    "demo",
    "bootstrap",
    "train_denoiser",
    "denoise",
    "evaluate_uq",
    "confidence",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petuq",
        description="Uncertainty quantification for AI-based PET reconstruction (petuq_sirf).",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"petuq_sirf.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError, RuntimeError) as exc:
        if args.traceback:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"petuq: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("petuq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
