"""The ``petuq`` command: parse arguments, call the library, write outputs.

Each subcommand is a module of this package with ``register(subparsers)`` and ``run(args)``.

Errors never end in a traceback: a bad argument, bad input or any unexpected exception prints one
line ``petuq: error: ...`` on stderr and exits with status 2 (``--traceback`` shows the full trace);
Ctrl-C prints one line and exits with 130. Library warnings are printed as ``petuq: warning: ...``.

Every command takes ``--config FILE`` (TOML, or the ``run_config.json`` of an earlier run; flags override
it) and, when it succeeds, writes its resolved settings to ``run_config.json`` in ``--out``
(:mod:`petuq_sirf.cli.run_config`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from petuq_sirf.cli.run_config import (
    add_config_argument,
    apply_config,
    find_config_path,
    finish_config,
    read_config_file,
    resolved_options,
    write_run_config,
)

COMMAND_MODULES = [
    "listmode",
    "simulate",
    "reconstruct",
    "train_unrolled",
    "calibrate_unrolled",
    "train_pnp_denoiser",
    "demo",
    "bootstrap",
    "calibrate_roi",
    "calibrate_voxels",
    "train_denoiser",
    "denoise",
    "evaluate_uq",
    "confidence",
]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` after every option's sentence, unless the sentence already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class PetuqArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: ``petuq: error: argument --counts: ...``."""

    def error(self, message: str):  # noqa: D401 - argparse API
        text = " ".join(message.split())
        prog = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(EXIT_ERROR, f"petuq: error: {prog}{text} (see '{self.prog} --help')\n")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"petuq: warning: {_one_line(message)}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from petuq_sirf.operators.kernels import help_line

    parser = PetuqArgumentParser(
        prog="petuq",
        description="Uncertainty quantification for AI-based PET reconstruction (petuq_sirf).",
        formatter_class=_HelpFormatter,
        epilog=help_line(),
    )
    parser.add_argument("--traceback", action="store_true", help="Show the full Python traceback on errors.")
    parser.add_argument(
        "--quiet",
        dest="global_quiet",
        action="store_true",
        help="No progress bars (they are also off when stderr is not a terminal).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and the projector kernels (default: torch's).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=PetuqArgumentParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"petuq_sirf.cli.{name}").register(sub)
    for p in sub.choices.values():
        p.formatter_class = _HelpFormatter
        add_config_argument(p)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        commands = _subparsers(parser)
        appended: dict = {}
        found = find_config_path(argv, commands)
        if found is not None:  # the file's options become the command's defaults; flags override them
            command, path = found
            try:
                appended = apply_config(commands[command], read_config_file(path, command), path, command)
            except (ValueError, OSError) as exc:
                print(f"petuq: error: {command}: {_one_line(exc)}", file=sys.stderr)
                return EXIT_ERROR
        args = parser.parse_args(argv)
        finish_config(args, appended)
    except KeyboardInterrupt:
        print("petuq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help (0) and usage errors (2), already printed
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    args.quiet = bool(getattr(args, "quiet", False) or args.global_quiet)
    show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            from petuq_sirf.operators.kernels import set_num_threads

            set_num_threads(args.threads)
        status = int(args.handler(args) or 0)
        if status == 0 and getattr(args, "out", None):  # the resolved settings next to the outputs
            options = resolved_options(_subparsers(parser)[args.command], args)
            write_run_config(args.out, args.command, options)
        return status
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print("petuq: interrupted (outputs written so far are complete; re-run the command to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the CLI never ends in a traceback
        if args.traceback:
            raise
        known = isinstance(exc, (ValueError, OSError, ImportError, RuntimeError))
        prefix = "" if known else f"unexpected {type(exc).__name__}: "
        hint = "" if known else " (re-run with --traceback for the full trace)"
        print(f"petuq: error: {prefix}{_one_line(exc)}{hint}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
