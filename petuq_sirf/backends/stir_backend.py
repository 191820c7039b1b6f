"""The STIR backend: STIR's Python bindings (``import stir``) as the geometric projector ``G``.

``G`` is ``ProjMatrixByBinUsingRayTracing`` through ``ForwardProjectorByBinUsingProjMatrixByBin``
/ ``BackProjectorByBinUsingProjMatrixByBin``; the multiplicative and additive terms and the
optional image-space PSF are applied in torch exactly as in the embedded backend, so
``forward(x) = m * G(PSF x) + b``. Templates are exchanged as STIR Interfile (our own
writers), and arrays are reordered between STIR's segment sequence (0, +1, -1, ...) and ours.

Also here: :func:`lm_to_projdata_bootstrap`, the one wrapper of STIR's ``lm_to_projdata_bootstrap``
executable (one bootstrap replicate of a list-mode file; ``bootstrap/stir.py`` calls it).

``stir`` is imported lazily; without it a clear error says how to install it
(``conda install -c conda-forge stir``). Written against STIR 6's SWIG API; it cannot run
where STIR is absent (see docs/sirf_stir.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.backends.bridge import (
    DEFAULT_RAYS_PER_BIN,
    ExternalAcquisitionModel,
    RayTracingSettings,
    from_stir_order,
    stir_sinogram_order,
    to_stir_order,
)
from petuq_sirf.backends.registry import require_backend
from petuq_sirf.io.interfile import read_projdata, write_image, write_projdata
from petuq_sirf.operators.psf import GaussianPSF
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout


def import_stir():
    """The ``stir`` module, or a clear error saying how to install it."""
    require_backend("stir")
    import stir

    return stir


def _projdata_to_numpy(stir, projdata, shape: tuple[int, int, int]) -> np.ndarray:
    if hasattr(projdata, "as_array"):  # STIR >= 6
        arr = projdata.as_array()
    else:  # older bindings
        import stirextra

        arr = stirextra.to_numpy(projdata)
    return np.asarray(arr, dtype=np.float32).reshape(shape)


def _image_to_numpy(image, shape: tuple[int, int, int]) -> np.ndarray:
    if hasattr(image, "as_array"):
        arr = image.as_array()
    else:
        import stirextra

        arr = stirextra.to_numpy(image)
    return np.asarray(arr, dtype=np.float32).reshape(shape)


class StirAcquisitionModel(ExternalAcquisitionModel):
    """``m * G x + b`` with ``G`` = STIR's ray-tracing projector (implements :class:`AcquisitionModel`).

    Args:
        layout, image, multiplicative, additive, psf_fwhm_mm, device: as for the embedded model
            (any in-plane size: even ones are exchanged through :class:`~petuq_sirf.backends.bridge.StirImageGrid`).
        num_tangential_lors: rays per bin of ``ProjMatrixByBinUsingRayTracing``, always set explicitly
            (default :data:`~petuq_sirf.backends.bridge.DEFAULT_RAYS_PER_BIN`, the same on the SIRF backend;
            STIR's own default is 1, SIRF's 2).
        restrict_to_cylindrical_fov: STIR's option to ignore voxels outside the inscribed cylinder
            (default False: the whole grid, as the embedded model; see
            :class:`~petuq_sirf.backends.bridge.RayTracingSettings`).
        workdir: folder for the Interfile templates, created if missing (default: a new temporary folder).
    """

    backend_name = "stir"

    def __init__(
        self,
        layout: SinogramLayout,
        image: ImageGeometry,
        multiplicative: torch.Tensor | None = None,
        additive: torch.Tensor | None = None,
        psf_fwhm_mm: float | tuple[float, float, float] = 0.0,
        device: str | torch.device = "cpu",
        num_tangential_lors: int = DEFAULT_RAYS_PER_BIN,
        restrict_to_cylindrical_fov: bool = False,
        workdir: str | os.PathLike | None = None,
        _shared=None,
    ) -> None:
        settings = RayTracingSettings(int(num_tangential_lors), bool(restrict_to_cylindrical_fov))
        super().__init__(layout, image, multiplicative, additive, psf_fwhm_mm, device, settings)
        self.num_tangential_lors = self.settings.num_tangential_lors
        self.restrict_to_cylindrical_fov = self.settings.restrict_to_cylindrical_fov
        fwhm = psf_fwhm_mm if isinstance(psf_fwhm_mm, tuple) else (float(psf_fwhm_mm),) * 3
        self.psf = GaussianPSF(fwhm, image.voxel_size_mm) if any(f > 0 for f in fwhm) else None
        self._order = stir_sinogram_order(layout)
        self._stir = _shared if _shared is not None else self._set_up_stir(workdir)

    def projector_settings(self) -> dict:
        return {**super().projector_settings(), **self.settings.as_dict(), "psf_fwhm_mm": self.psf_fwhm_mm}

    def _set_up_stir(self, workdir) -> dict:
        stir = import_stir()
        folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="petuq_stir_"))
        folder.mkdir(parents=True, exist_ok=True)
        hs = write_projdata(folder / "template.hs", np.zeros(self.layout.shape, np.float32), self.layout)
        hv = write_image(folder / "template.hv", np.zeros(self.grid.shape, np.float32), self.grid.geometry)
        template = stir.ProjData.read_from_file(str(hs))
        pdi = template.get_proj_data_info()
        img = stir.FloatVoxelsOnCartesianGrid.read_from_file(str(hv))
        pm = stir.ProjMatrixByBinUsingRayTracing()
        pm.set_num_tangential_LORs(self.settings.num_tangential_lors)
        pm.set_restrict_to_cylindrical_FOV(self.settings.restrict_to_cylindrical_fov)
        fwd = stir.ForwardProjectorByBinUsingProjMatrixByBin(pm)
        bwd = stir.BackProjectorByBinUsingProjMatrixByBin(pm)
        fwd.set_up(pdi, img)
        bwd.set_up(pdi, img)
        # SWIG hands out the template's ExamInfo (and ProjDataInfo) as non-owning pointers: the
        # in-memory data would dangle (segfault) once ``template`` is collected, so it is kept here
        # for as long as any model shares this dict.
        out = stir.ProjDataInMemory(template.get_exam_info(), pdi)
        return {
            "module": stir,
            "template": template,
            "matrix": pm,
            "pdi": pdi,
            "image": img,
            "fwd": fwd,
            "bwd": bwd,
            "proj": out,
            "folder": folder,
        }

    # --- G and G^T on numpy arrays ----------------------------------------------------------
    def _geometric_np(self, x: np.ndarray) -> np.ndarray:
        s = self._stir
        s["image"].fill(self.grid.to_stir(x).flat)
        s["proj"].fill(0.0)
        s["fwd"].forward_project(s["proj"], s["image"])
        arr = _projdata_to_numpy(s["module"], s["proj"], self.data_shape) * self.grid.unit_mm
        return from_stir_order(arr, self._order)

    def _geometric_adjoint_np(self, y: np.ndarray) -> np.ndarray:
        s = self._stir
        s["proj"].fill(np.ascontiguousarray(to_stir_order(y, self._order), dtype=np.float32).flat)
        s["image"].fill(0.0)
        s["bwd"].back_project(s["image"], s["proj"])
        return self.grid.from_stir(_image_to_numpy(s["image"], self.grid.shape) * self.grid.unit_mm)

    def _psf(self, x: np.ndarray, adjoint: bool = False) -> np.ndarray:
        if self.psf is None:
            return x
        t = torch.from_numpy(np.ascontiguousarray(x))
        return (self.psf.adjoint(t) if adjoint else self.psf(t)).numpy()

    def _direct_np(self, x: np.ndarray) -> np.ndarray:
        return self._m.cpu().numpy() * self._geometric_np(self._psf(x))

    def _adjoint_np(self, y: np.ndarray) -> np.ndarray:
        return self._psf(self._geometric_adjoint_np(self._m.cpu().numpy() * y), adjoint=True)

    def _rebuild(self, multiplicative: torch.Tensor, additive: torch.Tensor) -> StirAcquisitionModel:
        return StirAcquisitionModel(
            self.layout,
            self.image,
            multiplicative,
            additive,
            self.psf_fwhm_mm,
            self.device,
            self.settings.num_tangential_lors,
            self.settings.restrict_to_cylindrical_fov,
            _shared=self._stir,
        )


# --- list-mode bootstrap through STIR's executable --------------------------------------------

BOOTSTRAP_EXECUTABLE = "lm_to_projdata_bootstrap"


def stir_bootstrap_executable(executable: str = BOOTSTRAP_EXECUTABLE) -> str | None:
    """Full path of STIR's ``lm_to_projdata_bootstrap`` on PATH, or None."""
    return shutil.which(executable)


def write_bootstrap_par(
    path: str | os.PathLike,
    listmode_file: str | os.PathLike,
    template_projdata: str | os.PathLike,
    output_prefix: str | os.PathLike,
    seed: int,
    frames_file: str | os.PathLike,
    store_delayeds: bool = False,
) -> Path:
    """The one ``lm_to_projdata_bootstrap`` parameter file writer (STIR's ``LmToProjDataBootstrap`` keys).

    The ``lm_to_projdata`` keys (input, template, frame definitions, output prefix, prompts /
    delayeds) and the bootstrap ``seed`` (STIR needs ``1 <= seed < 2**31``); all paths absolute.
    """
    if not 1 <= int(seed) < 2**31:
        raise ValueError(f"STIR's bootstrap seed must be an integer in 1 .. 2**31 - 1, got {seed}")
    path = Path(path)
    lines = [
        "LmToProjDataBootstrap Parameters:=",
        f"input file := {Path(listmode_file).resolve()}",
        f"template_projdata := {Path(template_projdata).resolve()}",
        f"frame_definition file := {Path(frames_file).resolve()}",
        f"output filename prefix := {Path(output_prefix).resolve()}",
        "Store prompts := 1",
        f"Store delayeds := {int(bool(store_delayeds))}",
        f"seed := {int(seed)}",
        "END :=",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def _bootstrap_output(prefix: Path) -> Path:
    """STIR names the frame's output ``<prefix>_f1g1d0b0.hs``; accept any ``<prefix>*.hs``."""
    first = prefix.with_name(prefix.name + "_f1g1d0b0.hs")
    if first.is_file():
        return first
    found = sorted(prefix.parent.glob(prefix.name + "*.hs"))
    if not found:
        raise RuntimeError(f"{BOOTSTRAP_EXECUTABLE} wrote no Interfile projection data with prefix {prefix}")
    return found[0]


def lm_to_projdata_bootstrap(
    listmode_header: str | os.PathLike,
    template: SinogramLayout | str | os.PathLike,
    seed: int,
    workdir: str | os.PathLike | None = None,
    start_s: float = 0.0,
    stop_s: float | None = None,
    store_delayeds: bool = False,
    executable: str | None = None,
    timeout_s: float | None = None,
) -> torch.Tensor:
    """One bootstrap replicate of a list-mode file binned by STIR's ``lm_to_projdata_bootstrap``.

    STIR re-draws the events of the time frame with replacement (its generator seeded by
    ``seed``) and bins them like ``lm_to_projdata``. The input is a file STIR reads, e.g. a
    Siemens mMR ``.l.hdr`` in span 1 (STIR's ECAT8 reader refuses other spans).

    Args:
        listmode_header: the list-mode header.
        template: a :class:`SinogramLayout` (its Interfile template is written into ``workdir``)
            or an existing STIR projection-data header ``.hs``.
        seed: STIR's seed, ``1 <= seed < 2**31`` (see ``bootstrap.weights.replicate_int_seed``).
        workdir: folder for the parameter, frame and output files (created; default a temporary one).
        start_s, stop_s: time frame in s from the start of the acquisition (default: all events).
        store_delayeds: also bin the delayeds (STIR adds them with weight -1).
        executable: the program (default ``lm_to_projdata_bootstrap`` on PATH).
        timeout_s: kill the program after this many seconds.

    Returns:
        ``(sinograms, views, tangential)`` float32 counts in our segment order.
    """
    exe = shutil.which(executable) if executable else stir_bootstrap_executable()
    if exe is None:
        raise FileNotFoundError(
            f"STIR executable {executable or BOOTSTRAP_EXECUTABLE!r} not found on PATH: install STIR "
            "('conda install -c conda-forge stir') or use the SyneRBI container"
        )
    listmode_header = Path(listmode_header)
    if not listmode_header.is_file():
        raise FileNotFoundError(f"list-mode header {listmode_header} does not exist")
    if start_s < 0 or (stop_s is not None and stop_s <= start_s):
        raise ValueError(f"time interval [{start_s}, {stop_s}) s is empty or negative")
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="petuq_lmboot_"))
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(template, SinogramLayout):
        layout = template
        template_path = write_projdata(folder / "template.hs", np.zeros(layout.shape, np.float32), layout)
    else:
        template_path, layout = Path(template), None
        if not template_path.is_file():
            raise FileNotFoundError(f"template projection data {template_path} does not exist")
    duration = 1e9 if stop_s is None else stop_s - start_s
    frames = folder / f"boot_{int(seed)}.fdef"
    frames.write_text((f"0 {start_s:.17g}\n" if start_s > 0 else "") + f"1 {duration:.17g}\n")
    prefix = folder / f"boot_{int(seed)}"
    par = write_bootstrap_par(
        folder / f"boot_{int(seed)}.par", listmode_header, template_path, prefix, seed, frames, store_delayeds
    )
    result = subprocess.run(
        [exe, str(par), str(int(seed))], cwd=folder, capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{BOOTSTRAP_EXECUTABLE} failed (exit {result.returncode}): {tail}")
    data = read_projdata(_bootstrap_output(prefix))
    arr = data.array if layout is None else data.array.reshape(layout.shape)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
