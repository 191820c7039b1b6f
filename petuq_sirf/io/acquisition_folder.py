"""An acquisition on disk: the folder ``petuq simulate`` writes and every other command reads.

Layout of the folder::

    acquisition.json        scanner, sinogram layout, image grid, resolution model, simulation settings
    prompts.hs/.s           measured prompts (STIR Interfile, readable by STIR/SIRF)
    delayeds.hs, randoms_estimate.hs, scatter.hs   the parts of the additive term (counts)
    multiplicative.hs, additive.hs                 the model terms m and b
    mu_map.hv/.v            attenuation map in 1/cm
    truth.hv/.v, truth.nii.gz, regions.npz   known truth and ROI masks (simulations only)
    listmode.npz            list-mode events (optional)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.io.atomic import atomic_write_text
from petuq_sirf.io.image_io import read_npz, write_image, write_npz
from petuq_sirf.io.interfile import read_image, read_projdata, write_projdata
from petuq_sirf.io.listmode import ListModeEvents
from petuq_sirf.scanner.geometry import ScannerGeometry
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout

MANIFEST = "acquisition.json"


@dataclass
class Acquisition:
    """Measured data and the model terms needed to reconstruct it. Sinograms ``layout.shape``.

    A plain container: :func:`petuq_sirf.backends.acquisition_model_for` builds its model ``m * G x + b``
    on a backend, ``SimulatedAcquisition.to_acquisition()`` makes one from a simulation.
    """

    layout: SinogramLayout
    image: ImageGeometry
    prompts: torch.Tensor
    multiplicative: torch.Tensor
    additive: torch.Tensor
    psf_fwhm_mm: float = 0.0
    delayeds: torch.Tensor | None = None
    randoms_estimate: torch.Tensor | None = None
    scatter: torch.Tensor | None = None
    truth: torch.Tensor | None = None
    mu_per_cm: torch.Tensor | None = None
    regions: dict[str, torch.Tensor] = field(default_factory=dict)
    contrast: dict[str, float] = field(default_factory=dict)
    listmode: ListModeEvents | None = None
    info: dict = field(default_factory=dict)


def _layout_to_dict(layout: SinogramLayout) -> dict:
    return {
        "scanner": asdict(layout.scanner),
        "span": layout.span,
        "max_ring_difference": layout.max_ring_difference,
        "view_mashing": layout.view_mashing,
        "num_tangential_bins": layout.num_tangential_bins,
    }


def _layout_from_dict(d: dict) -> SinogramLayout:
    return SinogramLayout(
        ScannerGeometry(**d["scanner"]),
        span=d["span"],
        max_ring_difference=d["max_ring_difference"],
        view_mashing=d["view_mashing"],
        num_tangential_bins=d["num_tangential_bins"],
    )


def save_acquisition(acq: Acquisition, folder: str | os.PathLike) -> Path:
    """Write ``acq`` into ``folder`` (created if needed); every file is written atomically.

    Anything with a ``to_acquisition()`` method (a ``SimulatedAcquisition``) is converted first.
    """
    if not isinstance(acq, Acquisition):
        acq = acq.to_acquisition()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sinos = {"prompts": acq.prompts, "multiplicative": acq.multiplicative, "additive": acq.additive}
    for name in ("delayeds", "randoms_estimate", "scatter"):
        if getattr(acq, name) is not None:
            sinos[name] = getattr(acq, name)
    for name, arr in sinos.items():
        write_projdata(folder / f"{name}.hs", arr.cpu().numpy(), acq.layout)
    if acq.mu_per_cm is not None:
        write_image(folder / "mu_map.hv", acq.mu_per_cm.cpu().numpy(), acq.image, acq.layout.scanner)
    if acq.truth is not None:
        write_image(folder / "truth.hv", acq.truth.cpu().numpy(), acq.image, acq.layout.scanner)
        write_image(folder / "truth.nii.gz", acq.truth.cpu().numpy(), acq.image)
    if acq.regions:
        write_npz(
            folder / "regions.npz",
            {k: v.cpu().numpy() for k, v in acq.regions.items()},
            {"contrast": acq.contrast},
        )
    if acq.listmode is not None:
        lm = acq.listmode
        write_npz(
            folder / "listmode.npz",
            {"bins": lm.bins, "times_ms": lm.times_ms, "prompt": lm.prompt, "weights": lm.weights},
            {"data_shape": list(lm.data_shape)},
        )
    manifest = {
        "format": "petuq_sirf acquisition",
        "version": 1,
        "layout": _layout_to_dict(acq.layout),
        "image": {
            "shape": list(acq.image.shape),
            "voxel_size_mm": list(acq.image.voxel_size_mm),
            "offset_mm": list(acq.image.offset_mm),
        },
        "psf_fwhm_mm": acq.psf_fwhm_mm,
        "info": acq.info,
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return folder


def load_acquisition(folder: str | os.PathLike) -> Acquisition:
    """Read a folder written by :func:`save_acquisition` (clear errors for missing pieces)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not an acquisition folder: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        layout = _layout_from_dict(manifest["layout"])
        im = manifest["image"]
        image = ImageGeometry(tuple(im["shape"]), tuple(im["voxel_size_mm"]), tuple(im["offset_mm"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{manifest_path} is damaged or from another program: {exc}") from exc

    def sino(name: str, required: bool = True) -> torch.Tensor | None:
        path = folder / f"{name}.hs"
        if not path.is_file():
            if required:
                raise FileNotFoundError(f"{folder}: {name}.hs is missing")
            return None
        arr = read_projdata(path).array
        if arr.shape != layout.shape:
            raise ValueError(f"{path}: shape {arr.shape} does not match the layout {layout.shape}")
        return torch.from_numpy(arr)

    truth = mu = None
    if (folder / "truth.hv").is_file():
        truth = torch.from_numpy(read_image(folder / "truth.hv", layout.scanner).array)
    if (folder / "mu_map.hv").is_file():
        mu = torch.from_numpy(read_image(folder / "mu_map.hv", layout.scanner).array)
    regions, contrast = {}, {}
    if (folder / "regions.npz").is_file():
        arrays, meta = read_npz(folder / "regions.npz")
        regions = {k: torch.from_numpy(v.astype(bool)) for k, v in arrays.items()}
        contrast = meta.get("contrast", {})
    listmode = None
    if (folder / "listmode.npz").is_file():
        arrays, meta = read_npz(folder / "listmode.npz")
        shape = tuple(meta.get("data_shape", layout.shape))
        if shape != layout.shape:
            raise ValueError(f"{folder}/listmode.npz: events for sinogram {shape}, but the layout is {layout.shape}")
        listmode = ListModeEvents(
            arrays["bins"].astype(np.int64), arrays["times_ms"], arrays["prompt"].astype(bool), shape, arrays["weights"]
        )
    return Acquisition(
        layout=layout,
        image=image,
        prompts=sino("prompts"),
        multiplicative=sino("multiplicative"),
        additive=sino("additive"),
        psf_fwhm_mm=float(manifest.get("psf_fwhm_mm", 0.0)),
        delayeds=sino("delayeds", required=False),
        randoms_estimate=sino("randoms_estimate", required=False),
        scatter=sino("scatter", required=False),
        truth=truth,
        mu_per_cm=mu,
        regions=regions,
        contrast=contrast,
        listmode=listmode,
        info=manifest.get("info", {}),
    )
