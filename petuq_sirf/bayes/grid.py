"""The image grid a denoiser was trained on, and the check that an input image is on it.

The denoisers work on 2D slices normalised by the image mean: an image with another in-plane voxel
size sees structures at another scale, and one with another in-plane matrix another normalisation, so
their uncertainty maps are not calibrated. :func:`check_denoiser_grid` refuses such an image (with
both grids in the message) unless ``force`` is given. The number of slices may differ (slices are a batch).
"""

from __future__ import annotations

import math
import warnings

from petuq_sirf.scanner.image_geometry import ImageGeometry


class GridMismatchError(ValueError):
    """An image is not on the grid a network was trained on; the message gives both grids."""


def describe_grid(shape_yx: tuple[int, int], voxel_yx_mm: tuple[float, float]) -> str:
    """``"64 x 64 voxels of 3.80 x 3.80 mm (y, x)"``."""
    return f"{shape_yx[0]} x {shape_yx[1]} voxels of {voxel_yx_mm[0]:.3g} x {voxel_yx_mm[1]:.3g} mm (y, x)"


def training_grid(record: dict) -> tuple[tuple[int, int], tuple[float, float]] | None:
    """In-plane ``(shape (y, x), voxel size (y, x) in mm)`` of a checkpoint record (its ``config.json``).

    From ``extra.image_grid`` when the training recorded it, else from the training data's named scanner;
    ``None`` when neither is known.
    """
    extra = record.get("extra", {}) or {}
    grid = extra.get("image_grid")
    if grid:
        shape, vox = grid["shape"], grid["voxel_size_mm"]
        return (int(shape[-2]), int(shape[-1])), (float(vox[-2]), float(vox[-1]))
    scanner = (extra.get("data_config") or {}).get("scanner")
    if not scanner:
        return None
    from petuq_sirf.scanner import SinogramLayout, get_scanner

    try:
        image = ImageGeometry.for_layout(SinogramLayout(get_scanner(scanner)))
    except ValueError:
        return None
    return (image.shape[1], image.shape[2]), (image.voxel_size_mm[1], image.voxel_size_mm[2])


def check_denoiser_grid(
    record: dict, geometry: ImageGeometry, force: bool = False, what: str = "the input image", rtol: float = 1e-3
) -> None:
    """Refuse (:class:`GridMismatchError`) an image whose in-plane matrix or voxel size differs from training.

    With ``force`` a ``UserWarning`` is issued instead. Nothing is checked when the training grid is unknown.
    """
    trained = training_grid(record)
    if trained is None:
        return
    shape, vox = (geometry.shape[1], geometry.shape[2]), (geometry.voxel_size_mm[1], geometry.voxel_size_mm[2])
    same_shape = tuple(shape) == tuple(trained[0])
    same_vox = all(math.isclose(a, b, rel_tol=rtol) for a, b in zip(vox, trained[1]))
    if same_shape and same_vox:
        return
    message = (
        f"{what} has {describe_grid(shape, vox)}, but the denoiser was trained on "
        f"{describe_grid(*trained)}: reconstruct it on the training grid"
    )
    if not force:
        raise GridMismatchError(message + " (or pass --force to apply the denoiser anyway)")
    warnings.warn(message + "; applied anyway (--force): its uncertainty is not calibrated", stacklevel=2)


__all__ = ["GridMismatchError", "check_denoiser_grid", "describe_grid", "training_grid"]
