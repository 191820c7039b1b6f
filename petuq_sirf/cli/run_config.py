"""Resolved settings next to every output, and ``--config FILE`` to read them back.

Every command that writes into ``--out`` leaves ``run_config.json`` there (:data:`RUN_CONFIG`; not
``config.json``, which in a weights or model folder is the network's own record and in ``petuq confidence``'s
output the derived solver settings)::

    {"format": "petuq-run-config/1", "command": "reconstruct", "options": {"input": "acq", "method": "osem",
     "iterations": 10, ...}, "petuq_sirf_version": "0.1.0", "torch_version": "2.13.0", "backend": "embedded",
     "device": "cpu", "date": "2026-12-02T01:30:00+00:00"}

``options`` holds every option of the command as resolved for the run (defaults included, e.g. the
method's default ``--iterations``). ``--config FILE`` (every command) reads options from

* a TOML file (``.toml``): ``key = value`` per option, named like the flag without the dashes
  (``beta-strength`` or ``beta_strength``; the positional input is ``input``), optionally inside an
  ``[options]`` table, or
* a ``run_config.json`` written by an earlier run (JSON), which reproduces its settings.

Flags given on the command line override the file. A key that is not an option of the command is a
one-line error naming it (exit status 2); values are checked like the flags (``--counts 1e30`` in a file
is refused naming ``counts``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tomllib
from pathlib import Path

RUN_CONFIG = "run_config.json"
FORMAT = "petuq-run-config/1"
# top-level keys of a written run_config.json besides "options"
META_KEYS = frozenset(
    {"format", "command", "petuq_sirf_version", "torch_version", "python_version", "backend", "device", "date"}
)
_NOT_OPTIONS = frozenset({"help", "config"})


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="Read the options from a TOML file (key = value per option) or a run_config.json of an earlier "
        "run; flags on the command line override it.",
    )


def find_config_path(argv: list[str], commands) -> tuple[str, str] | None:
    """``(command, path)`` when ``argv`` gives ``--config PATH`` after a command name, else ``None``."""
    for i, token in enumerate(argv):
        if token in commands:
            rest = argv[i + 1 :]
            for j, t in enumerate(rest):
                if t == "--":
                    break
                if t == "--config":
                    if j + 1 >= len(rest):
                        return None  # argparse reports the missing value
                    return token, rest[j + 1]
                if t.startswith("--config="):
                    return token, t.split("=", 1)[1]
            return None
    return None


def read_config_file(path: str | Path, command: str) -> dict:
    """The options in ``path`` (TOML, or the JSON of a ``run_config.json``) keyed as written."""
    path = Path(path)
    what = f"--config {path}"
    if not path.is_file():
        raise ValueError(f"{what}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{what}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a table of options")
    if "options" in data:
        if not isinstance(data["options"], dict):
            raise ValueError(f"{what}: 'options' must be a table")
        for key in data:
            if key != "options" and key not in META_KEYS:
                raise ValueError(f"{what}: unknown key {key!r} (options go into the 'options' table)")
        written_for = data.get("command")
        if written_for is not None and written_for != command:
            raise ValueError(f"{what}: the file holds settings of 'petuq {written_for}', not of 'petuq {command}'")
        return dict(data["options"])
    return dict(data)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in _NOT_OPTIONS and a.dest != argparse.SUPPRESS}


def _flag(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def _convert(action: argparse.Action, value, key: str, what: str):
    """``value`` from the file checked and converted like the flag's text would be."""
    name = f"{what}: option {key!r}"
    if value is None:
        return None
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [value]
        return [_convert_one(action, v, name) for v in values]
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)  # comma-separated options (e.g. --doses)
    return _convert_one(action, value, name)


def _convert_one(action: argparse.Action, value, name: str):
    if isinstance(value, (dict, list)):
        raise ValueError(f"{name} must be a single value, got {value!r}")
    if isinstance(value, bool) and action.type is not None:
        raise ValueError(f"{name} must be a number or text, got {value!r}")
    text = str(value)
    try:
        converted = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise ValueError(f"{name} ({_flag(action)}): {exc}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"{name} ({_flag(action)}): invalid choice {converted!r} (choose from {choices})")
    return converted


def apply_config(parser: argparse.ArgumentParser, options: dict, path: str | Path, command: str) -> dict:
    """Make the file's ``options`` the defaults of ``parser`` (the command's sub-parser).

    Options read from a file are no longer required on the command line. Returns the list-valued
    (repeatable) options, which :func:`finish_config` fills in only where the command line gave none
    (argparse would otherwise add the flags to the file's list instead of replacing it).
    """
    what = f"--config {path}"
    actions = _options(parser)
    defaults, appended = {}, {}
    for key, value in options.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise ValueError(f"{what}: unknown option {key!r} for 'petuq {command}' (see 'petuq {command} --help')")
        converted = _convert(action, value, str(key), what)
        action.required = False
        if not action.option_strings and action.nargs is None:
            action.nargs = "?"  # the positional input may come from the file
        if isinstance(action, argparse._AppendAction):
            appended[dest] = converted
            defaults[dest] = None
        else:
            defaults[dest] = converted
    parser.set_defaults(**defaults)
    return appended


def finish_config(args: argparse.Namespace, appended: dict) -> None:
    """Repeatable options from the file where the command line gave none."""
    for dest, values in appended.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, values)


def resolved_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Every option of the command's ``parser`` with its value in ``args`` (as resolved by the run)."""
    return {dest: getattr(args, dest, None) for dest in _options(parser)}


def run_record(command: str, options: dict) -> dict:
    """The ``run_config.json`` record: command, resolved options, versions, backend, device and date."""
    import torch

    from petuq_sirf import __version__

    device = options.get("device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "format": FORMAT,
        "command": command,
        "options": options,
        "petuq_sirf_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "backend": options.get("backend") or "embedded",
        "device": device or "cpu",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_run_config(out: str | Path, command: str, options: dict) -> Path:
    """Write :func:`run_record` as ``out/run_config.json`` (atomically)."""
    from petuq_sirf.io.atomic import atomic_write_json

    return atomic_write_json(Path(out) / RUN_CONFIG, run_record(command, options))
