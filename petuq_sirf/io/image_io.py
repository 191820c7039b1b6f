"""Image files: NIfTI (via nibabel), ``.npz``, and STIR Interfile, chosen by extension.

Images are ``(z, y, x)`` arrays; NIfTI stores ``(x, y, z)`` with a diagonal affine in mm.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

from petuq_sirf.io.atomic import atomic_write, atomic_write_bytes
from petuq_sirf.io.interfile import read_image as read_interfile_image
from petuq_sirf.io.interfile import write_image as write_interfile_image
from petuq_sirf.scanner.geometry import ScannerGeometry
from petuq_sirf.scanner.image_geometry import ImageGeometry


def _affine(geometry: ImageGeometry) -> np.ndarray:
    dz, dy, dx = geometry.voxel_size_mm
    affine = np.diag([dx, dy, dz, 1.0])
    affine[:3, 3] = [geometry.first_voxel_mm(2), geometry.first_voxel_mm(1), geometry.first_voxel_mm(0)]
    return affine


def write_nifti(path: str | os.PathLike, array: np.ndarray, geometry: ImageGeometry) -> Path:
    """Write a ``(z, y, x)`` image as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically."""
    import nibabel as nib

    array = np.asarray(array, dtype=np.float32)
    if array.shape != geometry.shape:
        raise ValueError(f"image shape {array.shape} does not match its geometry {geometry.shape}")
    path = Path(path)
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), _affine(geometry))
    img.header.set_xyzt_units("mm")
    payload = img.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, payload)


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 3D NIfTI image into ``(z, y, x)`` with its grid (axis-aligned affines only)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise ValueError(f"cannot read NIfTI file {path}: {exc}") from exc
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}")
    affine = img.affine
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))) or (np.diag(affine)[:3] <= 0).any():
        raise ValueError(f"{path}: only axis-aligned NIfTI affines with positive voxel sizes are supported")
    dx, dy, dz = np.diag(affine)[:3]
    nx, ny, nz = data.shape
    first = affine[:3, 3]
    centre = first + (np.array([nx, ny, nz]) - 1) / 2 * np.array([dx, dy, dz])
    geometry = ImageGeometry((nz, ny, nx), (dz, dy, dx), (centre[2], centre[1], centre[0]))
    return np.ascontiguousarray(data.transpose(2, 1, 0)), geometry


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict | None = None) -> Path:
    """Write named arrays plus JSON metadata to ``.npz`` atomically."""
    path = Path(path)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__metadata__"] = np.array(json.dumps(metadata or {}))
    return atomic_write(path, lambda f: np.savez_compressed(f, **payload))


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read arrays and metadata written by :func:`write_npz` (no pickles are loaded)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files if k != "__metadata__"}
            meta = json.loads(str(f["__metadata__"])) if "__metadata__" in f.files else {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    return arrays, meta


def read_image(path: str | os.PathLike, scanner: ScannerGeometry | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """Read an image from ``.hv`` (Interfile), ``.nii``/``.nii.gz`` (NIfTI) or ``.npz`` (key ``image``).

    ``scanner`` applies STIR's axial convention to Interfile files (see :func:`write_image`).
    """
    name = str(path).lower()
    if name.endswith(".hv"):
        img = read_interfile_image(path, scanner)
        return img.array, img.geometry
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    if name.endswith(".npz"):
        arrays, meta = read_npz(path)
        if "image" not in arrays:
            raise ValueError(f"{path}: no array named 'image'")
        vox = tuple(meta.get("voxel_size_mm", (1.0, 1.0, 1.0)))
        arr = arrays["image"].astype(np.float32)
        return arr, ImageGeometry(arr.shape, vox, tuple(meta.get("offset_mm", (0.0, 0.0, 0.0))))
    raise ValueError(f"unsupported image file {path}: use .hv, .nii, .nii.gz or .npz")


def write_image(
    path: str | os.PathLike, array: np.ndarray, geometry: ImageGeometry, scanner: ScannerGeometry | None = None
) -> Path:
    """Write an image by extension: ``.hv`` Interfile, ``.nii``/``.nii.gz`` NIfTI, ``.npz``.

    For Interfile, ``scanner`` writes the axial offset in STIR's convention (``z = 0`` at the
    first ring) so that STIR/SIRF place the image where petuq does; NIfTI and ``.npz`` keep
    scanner-centred coordinates.
    """
    name = str(path).lower()
    if name.endswith(".hv"):
        return write_interfile_image(path, array, geometry, scanner)
    if name.endswith((".nii", ".nii.gz")):
        return write_nifti(path, array, geometry)
    if name.endswith(".npz"):
        meta = {"voxel_size_mm": list(geometry.voxel_size_mm), "offset_mm": list(geometry.offset_mm)}
        return write_npz(path, {"image": array}, meta)
    raise ValueError(f"unsupported image file {path}: use .hv, .nii, .nii.gz or .npz")
