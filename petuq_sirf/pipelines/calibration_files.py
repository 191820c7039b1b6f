"""Calibration files of the bootstrap (ROI and voxel): the settings they are tied to, and reading them.

A calibration fitted on bootstrap runs describes intervals made with those runs' settings (estimator,
passes, prior, weights, ...). Applying it to a run with other settings would silently mislabel its
coverage, so the settings are stored with the calibration and compared; the seed and the number of
replicates do not change what an interval means and are left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: settings of a bootstrap run that do not change what its intervals mean
FREE_SETTINGS = ("seed", "num_replicates")


def bootstrap_settings(config: Mapping) -> dict:
    """The settings of a run's ``metrics["config"]`` that a calibration is tied to."""
    return {k: v for k, v in config.items() if k not in FREE_SETTINGS}


def differing(a: Mapping, b: Mapping) -> str:
    """The keys whose values differ between two settings dicts, as a comma list."""
    return ", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))


def common_settings(configs: Sequence[Mapping]) -> dict:
    """The shared settings of calibration runs' ``config`` dicts; one-line error when they differ or are absent."""
    settings = [bootstrap_settings(c or {}) for c in configs]
    if not settings or not settings[0]:
        raise ValueError("the first run has no bootstrap settings ('config'): is it a 'petuq bootstrap' output?")
    for i, s in enumerate(settings[1:], 1):
        if s != settings[0]:
            raise ValueError(
                f"calibration run {i} has other bootstrap settings than run 0 ({differing(s, settings[0])})"
            )
    return settings[0]


def check_same_settings(what: str, fitted: Mapping, config: Mapping) -> None:
    """One-line error unless a run's ``config`` has the settings ``fitted`` a ``what`` calibration was fitted with."""
    mine = bootstrap_settings(config)
    if mine != dict(fitted):
        raise ValueError(
            f"the {what} calibration was fitted with other bootstrap settings ({differing(mine, fitted)}): "
            "run 'petuq bootstrap' with the calibration's settings or fit a calibration for these"
        )


def check_format(calibration: object, file_format: str, version: int, what: str, command: str) -> None:
    """One-line error unless ``calibration`` is a dict of ``file_format`` at ``version`` (written by ``command``)."""
    if not isinstance(calibration, Mapping) or calibration.get("format") != file_format:
        raise ValueError(f"not {what} calibration file (written by 'petuq {command}')")
    if calibration.get("version") != version:
        raise ValueError(
            f"{what.split()[-1]} calibration version {calibration.get('version')} is not supported (expected {version})"
        )


def read_calibration(path: str | os.PathLike, file_name: str, what: str, check: Callable[[Mapping], None]) -> dict:
    """Read a ``what`` calibration: the file, or the folder holding ``file_name``; ``check`` validates it."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise FileNotFoundError(f"{what} calibration file not found: {path}")
    try:
        calibration = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    check(calibration)
    return calibration


__all__ = [
    "FREE_SETTINGS",
    "bootstrap_settings",
    "check_format",
    "check_same_settings",
    "common_settings",
    "differing",
    "read_calibration",
]
