"""Trained reconstruction networks on disk: the PnP denoiser and the unrolled FBSEM network.

Each is a weights folder (``model.safetensors`` + ``config.json``, :mod:`petuq_sirf.io.weights`) with the
point weights ``net.*``, the weight posterior ``posterior.*`` (SVI ``loc``/``scale`` or AIS ``draws``)
and, in the record's metadata, ``info``: what was trained, how, and the split-conformal scales.
Without a path the folders shipped in ``petuq_sirf/weights/`` (trained for the test-2d demo problem) are used;
the default unrolled network is the 32-channel FBSEM network ``fbsem32w`` (learned from 512 phantoms per family of
thorax + ellipses + texture, selected on calibration seeds: docs/heldout_uq.md); the previous defaults are
``"fbsem32"`` (128 phantoms per family) and ``"fbsem16"`` (16 channels, thorax + ellipses).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from petuq_sirf.inference.weight_posterior import (
    ParticlePosterior,
    WeightPosterior,
    load_posterior,
    read_weights_metadata,
)
from petuq_sirf.recon.nonexpansive import NonexpansiveDenoiserConfig, ResidualDenoiser
from petuq_sirf.recon.unrolled import UnrolledConfig, UnrolledFBSEM

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED: dict[str, Path] = {
    "pnp-admm": WEIGHTS_DIR / "pnp_denoiser_test2d",
    # the default unrolled network (since 2026-12-07): 32-channel FBSEM learned from 512 phantoms per family of
    # thorax + ellipses + texture (also selectable as "fbsem32w"; the default before it: "fbsem32")
    "unrolled": WEIGHTS_DIR / "unrolled_fbsem32w_test2d",
}
# shipped networks selected by name in place of a path (``--weights dbfb``)
SHIPPED_NAMED: dict[str, Path] = {
    "dbfb": WEIGHTS_DIR / "unrolled_dbfb_test2d",
    "fbsem32": WEIGHTS_DIR / "unrolled_fbsem32_test2d",  # the default 2026-12-02 .. 2026-12-07, 128 phantoms/family
    "fbsem16": WEIGHTS_DIR / "unrolled_test2d",  # the default before: 16 channels, thorax + ellipses
    # fbsem32 continued on 4x the training phantoms (512 per family of thorax, ellipses, texture): = the default
    "fbsem32w": WEIGHTS_DIR / "unrolled_fbsem32w_test2d",
    # fbsem32w continued with the dose range 1e4-3e6 trues (100 % dose inside it, not at its edge)
    "fbsem32x": WEIGHTS_DIR / "unrolled_fbsem32x_test2d",
    # fbsem32x unrolled to 10 iterations (more data fidelity at high counts) and continued
    "fbsem32y": WEIGHTS_DIR / "unrolled_fbsem32y_test2d",
    # the PnP denoiser prior learned on thorax + ellipses + texture phantoms (the default: random ellipses)
    "pnp-families": WEIGHTS_DIR / "pnp_denoiser_families_test2d",
}
KINDS = {"pnp-admm": "pnp-denoiser", "unrolled": "unrolled"}


def weights_folder(method: str, path: str | Path | None = None) -> Path:
    """The weights folder that :func:`load_network` reads for ``method`` and ``path``: the shipped one for
    ``None``, a shipped network of :data:`SHIPPED_NAMED` for its name (when no such file exists), else ``path``."""
    if method not in KINDS:
        raise ValueError(f"unknown network method {method!r}: choose one of {', '.join(KINDS)}")
    if path is not None and str(path) in SHIPPED_NAMED and not Path(path).exists():
        return SHIPPED_NAMED[str(path)]
    return Path(path) if path else SHIPPED[method]


def load_network(
    method: str, path: str | Path | None = None
) -> tuple[nn.Module, WeightPosterior | ParticlePosterior | None, dict]:
    """``(net, posterior, info)`` for ``method`` (``pnp-admm`` or ``unrolled``) from ``path`` (default: shipped).

    ``path`` may also name a shipped network of :data:`SHIPPED_NAMED` when no such file exists: ``"fbsem32w"``
    (the default), ``"fbsem32"`` and ``"fbsem16"`` (the previous defaults), ``"fbsem32x"`` (``fbsem32w`` with the
    dose range up to 3e6 trues), ``"fbsem32y"`` (``fbsem32x`` unrolled to 10 iterations) or ``"dbfb"`` (the
    unrolled network with the DBFB regulariser). The network is rebuilt from ``info["net_config"]`` and put in
    eval mode; a file trained for the other method is refused naming both.
    """
    path = weights_folder(method, path)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    info = json.loads(read_weights_metadata(path).get("info", "{}"))
    expected = KINDS[method]
    if info.get("kind") != expected:
        raise ValueError(f"{path} holds {info.get('kind')!r} weights, but method {method!r} needs {expected!r} weights")
    try:  # the configuration is checked (and bounded) before any weight is allocated
        config = (NonexpansiveDenoiserConfig if method == "pnp-admm" else UnrolledConfig)(**info["net_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid network configuration in its metadata: {exc}") from exc
    net: nn.Module = ResidualDenoiser(config) if method == "pnp-admm" else UnrolledFBSEM(config)
    posterior, _ = load_posterior(path, net)
    net.eval()
    return net, posterior, info


def calibration_for_counts(info: dict, true_counts: float) -> tuple[dict, float | None]:
    """``(info, level)``: ``info`` with the calibration (conformal scales, Mondrian, std scaling) stored for the
    count level nearest ``true_counts`` (in log counts) in ``info["calibration_by_counts"]``, and that level;
    ``(info, None)`` unchanged for files calibrated at one count level only."""
    by = info.get("calibration_by_counts") or {}
    if not by:
        return info, None
    if not true_counts > 0:
        raise ValueError(f"true counts must be > 0 to choose a calibration level, got {true_counts}")
    key = min(by, key=lambda k: abs(math.log(float(k)) - math.log(true_counts)))
    chosen = dict(info)
    for name in ("conformal_scales", "mondrian", "std_scaling", "calibration"):
        chosen.pop(name, None)
    chosen.update(by[key])
    return chosen, float(key)


def conformal_scales_of(info: dict) -> dict[float, float]:
    """The stored split-conformal scales ``{level: factor}`` (empty for files without them)."""
    return {float(k): float(v) for k, v in (info.get("conformal_scales") or {}).items()}


def mondrian_of(info: dict):
    """The stored Mondrian (per voxel class) conformal calibrator of a weights file (None without one)."""
    if not info.get("mondrian"):
        return None
    from petuq_sirf.uq.mondrian import MondrianConformal

    return MondrianConformal.from_dict(info["mondrian"])


def std_scaling_of(info: dict):
    """The stored per-voxel-class std factors of a weights file (None without them; files calibrated on
    anatomical families by ``petuq calibrate-unrolled`` / ``train-unrolled`` since the std scaling exist carry them)."""
    if not info.get("std_scaling"):
        return None
    from petuq_sirf.uq.std_scaling import MondrianStdScaling

    return MondrianStdScaling.from_dict(info["std_scaling"])


__all__ = [
    "KINDS",
    "calibration_for_counts",
    "SHIPPED",
    "WEIGHTS_DIR",
    "conformal_scales_of",
    "load_network",
    "mondrian_of",
    "std_scaling_of",
    "weights_folder",
]
