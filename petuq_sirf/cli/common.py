"""Helpers shared by the ``petuq`` subcommands."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import torch

from petuq_sirf.io.acquisition_folder import Acquisition, load_acquisition, save_acquisition
from petuq_sirf.io.atomic import atomic_write_json

__all__ = [
    "Acquisition",
    "add_backend_argument",
    "add_device_argument",
    "check_out_dir",
    "check_out_file",
    "float_in",
    "int_in",
    "load_acquisition",
    "resolve_backend",
    "resolve_device",
    "save_acquisition",
    "write_metrics",
]

# Largest expected true counts accepted anywhere (a long whole-body scan records about 1e9).
MAX_COUNTS = 1e10


# ------------------------------------------------------------------------------ numeric arguments
def _fmt(v: float) -> str:
    return f"{v:g}"


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False, why=""):
    """An argparse ``type``: a finite float in ``[lo, hi]`` (``lo_open``/``hi_open`` exclude the ends).

    argparse names the option in the error: ``argument --counts: 1e+30 is above the maximum 1e+10``.
    """

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"{_fmt(v)} must be {'>' if lo_open else '>='} {_fmt(lo)}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            bound = f"must be < {_fmt(hi)}" if hi_open else f"is above the maximum {_fmt(hi)}"
            raise argparse.ArgumentTypeError(f"{_fmt(v)} {bound}{why}")
        return v

    parse.__name__ = "number"
    return parse


def float_list(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers (at least one)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def int_in(lo: int | None = None, hi: int | None = None, why: str = ""):
    """An argparse ``type``: an integer in ``[lo, hi]`` (``1e3`` is accepted when it is whole)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
            if not math.isfinite(f) or f != int(f):
                raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
            v = int(f)
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"{v} must be >= {lo}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{v} is above the maximum {hi}{why}")
        return v

    parse.__name__ = "integer"
    return parse


COUNTS = float_in(0, MAX_COUNTS, lo_open=True, why=" expected counts (a long whole-body PET scan records about 1e9)")
SEED = int_in(0, 2**63 - 1)
ITERATIONS = int_in(0, 100_000)
SAMPLES = int_in(2, 100_000)
FRACTION = float_in(0, 1, hi_open=True)
LEVEL = float_in(0, 1, lo_open=True, hi_open=True)
FWHM_MM = float_in(0, 200)
LEARNING_RATE = float_in(0, 10, lo_open=True)


# ----------------------------------------------------------------------------------- output guards
def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(
    out: str | os.PathLike,
    protect: tuple[str | os.PathLike | None, ...] = (),
    what: str = "--out",
    writes_acquisition: bool = False,
) -> Path:
    """Create the output folder ``out`` and make sure it can be written; refuse one that would lose data.

    Refused with a one-line ``ValueError``: ``out`` names an existing file; ``out`` is, or lies inside,
    one of the ``protect`` folders (the input acquisition or model: writing there would overwrite its
    ``metrics.json`` and images); ``out`` is another acquisition folder; ``out`` cannot be created or written
    (read-only file system, permissions). ``writes_acquisition``: the command writes an acquisition
    folder (``simulate``, ``listmode``), so an existing one may be replaced.
    """
    path = Path(out)
    resolved = path.resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is an existing file, not a folder: give a folder name")
    for p in protect:
        if p is None:
            continue
        folder = Path(p).resolve()
        if folder.is_dir() and _inside(resolved, folder):
            raise ValueError(
                f"{what} {path} is {'the' if resolved == folder else 'inside the'} input folder {p}: "
                "it would overwrite the input's files; choose another output folder"
            )
    if not writes_acquisition and (path / "acquisition.json").is_file():
        raise ValueError(f"{what} {path} is an acquisition folder: writing results there would overwrite its files")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    _check_writable(path, what)
    return path


def check_out_file(out: str | os.PathLike, what: str = "--out") -> Path:
    """An output file: refuse a folder, create the parent folder, check that it can be written."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"{what} {path} is an existing folder, but a file name is expected")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the folder of {what} {path}: {exc.strerror or exc}") from None
    _check_writable(path.parent, what)
    return path


def _check_writable(folder: Path, what: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".petuq-write-test.")
    except OSError as exc:
        raise ValueError(f"cannot write into {what} {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def write_metrics(out_dir: str | os.PathLike, metrics: dict, name: str = "metrics.json") -> Path:
    """Write ``metrics`` as JSON into ``out_dir`` atomically (NaN -> null, inf -> "inf")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(out / name, metrics)


def command_line(command: str, args: argparse.Namespace, skip_none: bool = True) -> str:
    """``petuq COMMAND --option value ...`` of the parsed options, for weight records.

    Flags that are set appear as ``--flag`` (every flag of the commands is ``store_true``); ``--out``, the
    global options (threads, progress, traceback) and, with ``skip_none``, options left at ``None`` are left out.
    """
    skip = {"handler", "command", "traceback", "out", "config", "threads", "global_quiet", "quiet"}
    parts = []
    for k, v in vars(args).items():
        if k in skip or (skip_none and v is None) or v is False:
            continue
        flag = f"--{k.replace('_', '-')}"
        if isinstance(v, (tuple, list)):
            v = ",".join(str(e) for e in v)
        parts.append(flag if v is True else f"{flag} {v}")
    return f"petuq {command} " + " ".join(parts)


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """The split-conformal calibration options of ``train-unrolled`` and ``calibrate-unrolled``."""
    p.add_argument(
        "--calibration-phantoms",
        type=int_in(0, 100_000),
        default=16,
        help="Held-out phantoms (simulated like the validation set) for the split-conformal scales (0 = none).",
    )
    p.add_argument(
        "--calibration-lesion-probability",
        type=float_in(0, 1),
        default=0.0,
        help="Probability of a hot lesion in each calibration phantom (0 = like the training/validation set).",
    )
    p.add_argument(
        "--calibration-samples", type=int_in(2, 100_000), default=8, help="Posterior draws per calibration phantom."
    )
    p.add_argument(
        "--calibration-families",
        default=None,
        help="Calibrate on anatomical phantom families (comma list of brain, thorax, ellipses, texture; their calibration "
        "seeds, --calibration-phantoms per family) and store Mondrian (per voxel class) quantiles too.",
    )
    p.add_argument(
        "--calibration-counts",
        type=float_list,
        default=(),
        metavar="N1,N2,...",
        help="Also calibrate at these expected true counts (e.g. 5e4,1e5,1e6) and store each; 'petuq reconstruct' "
        "uses the level nearest the data's counts (default: the training count level only).",
    )
    add_discrepancy_arguments(
        p,
        "--calibration-",
        True,
        "Calibrate the mean refined by discrepancy-stopped MLEM, the estimator 'petuq reconstruct' uses by "
        "default (--no-calibration-refine-discrepancy: the network's own mean, for --no-refine-discrepancy).",
        "Discrepancy threshold of the calibrated refinement (as 'petuq reconstruct --discrepancy-threshold').",
    )


def add_discrepancy_arguments(
    p: argparse.ArgumentParser, prefix: str, default: bool | None, refine_help: str, threshold_help: str
) -> None:
    """``{prefix}refine-discrepancy`` (on/off) and ``{prefix}discrepancy-threshold`` (the stop ``z <=`` threshold)
    of the unrolled network's refinement (:mod:`petuq_sirf.recon.discrepancy`); ``prefix`` is ``"--"`` or
    ``"--calibration-"``."""
    p.add_argument(
        f"{prefix}refine-discrepancy", action=argparse.BooleanOptionalAction, default=default, help=refine_help
    )
    p.add_argument(f"{prefix}discrepancy-threshold", type=float_in(-100, 100), default=0.0, help=threshold_help)


def calibration_settings_from(args: argparse.Namespace):
    """:class:`~petuq_sirf.pipelines.network_training.CalibrationSettings` of the calibration options."""
    from petuq_sirf.pipelines.network_training import CalibrationSettings

    families = tuple(v.strip() for v in (args.calibration_families or "").split(",") if v.strip())
    if args.calibration_families and not families:
        raise ValueError("--calibration-families names no family")
    return CalibrationSettings(
        phantoms=args.calibration_phantoms,
        lesion_probability=args.calibration_lesion_probability,
        samples=args.calibration_samples,
        families=families,
        seed=args.seed,
        counts_levels=tuple(args.calibration_counts),
        refine_threshold=args.calibration_discrepancy_threshold if args.calibration_refine_discrepancy else None,
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="torch device: cpu, cuda, cuda:N, or auto (cuda when available)"
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; a clear error for an unavailable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    return dev


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend embedded|sirf|stir`` (default embedded); see :mod:`petuq_sirf.backends.registry`."""
    from petuq_sirf.backends.registry import BACKENDS, DEFAULT_BACKEND

    parser.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        choices=BACKENDS,
        help="acquisition-model backend: embedded (PyTorch, default), sirf (needs SIRF, e.g. the SyneRBI "
        "container) or stir (needs STIR's Python bindings)",
    )


def resolve_backend(name: str) -> str:
    """Canonical backend name; a one-line ``ValueError`` saying how to install it when it is missing."""
    from petuq_sirf.backends.registry import require_backend

    return require_backend(name)
