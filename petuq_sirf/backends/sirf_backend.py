"""The SIRF backend: ``sirf.STIR`` acquisition models behind our :class:`AcquisitionModel` protocol.

SIRF writes the model as ``y = S (G P x + a) + b_s`` (``P`` an image processor, ``S`` the
acquisition sensitivity, ``a`` the additive term SIRF multiplies by ``S``, ``b_s`` the
background term). Ours is ``y = m * G x + b``; the conversion happens here and only here
(:func:`petuq_sirf.backends.bridge.sirf_terms`): ``S = m``, ``a = b / m`` where ``m > 0``
and ``b_s = b`` where ``m = 0``.

``sirf`` is imported lazily; without it, constructing a model raises
:class:`~petuq_sirf.backends.registry.BackendUnavailableError` saying how to get SIRF (the
SyneRBI Docker image). Besides the model, this module wraps SIRF's list-mode randoms
estimate (``ListmodeToSinograms.estimate_randoms``), its SSS scatter (``ScatterEstimator``)
and the sensitivity built from a vendor normalisation file and a mu-map.

This code is written against the documented SIRF 3.x Python API; it cannot run where SIRF
is absent (see docs/sirf_stir.md for what was checked and how).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from petuq_sirf.backends.bridge import (
    ExternalAcquisitionModel,
    from_numpy,
    from_stir_order,
    sirf_terms,
    stir_image_geometry,
    stir_pixel_units,
    stir_sinogram_order,
    to_numpy,
    to_stir_order,
)
from petuq_sirf.backends.registry import require_backend
from petuq_sirf.io.interfile import write_image, write_projdata
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout


def import_sirf():
    """``sirf.STIR`` (with STIR's messages silenced), or a clear error saying how to get SIRF."""
    require_backend("sirf")
    import sirf.STIR as pet

    if not getattr(pet, "_petuq_quiet", False):
        try:
            pet.set_verbosity(0)
            pet._petuq_quiet = True
        except Exception:  # older SIRF versions: keep their default verbosity
            pass
    try:
        pet.AcquisitionData.set_storage_scheme("memory")
    except Exception:
        pass
    return pet


def _scanner_template_name(layout: SinogramLayout) -> str | None:
    """SIRF's scanner-name template for layouts it can build directly (mMR, default tangential size)."""
    if layout.scanner.name == "Siemens mMR" and layout.num_tangential_bins in (
        None,
        layout.scanner.num_tangential_bins,
    ):
        return "Siemens_mMR"
    return None


def acquisition_template(layout: SinogramLayout, workdir: str | os.PathLike | None = None):
    """A SIRF ``AcquisitionData`` with our layout (writes an Interfile template unless SIRF knows the scanner)."""
    pet = import_sirf()
    name = _scanner_template_name(layout)
    if name is not None:
        acq = pet.AcquisitionData(
            name, span=layout.span, max_ring_diff=layout.max_rd, view_mash_factor=layout.view_mashing
        )
    else:
        folder = Path(workdir or tempfile.mkdtemp(prefix="petuq_sirf_"))
        path = write_projdata(folder / "template.hs", np.zeros(layout.shape, np.float32), layout)
        acq = pet.AcquisitionData(str(path)).get_uniform_copy(0.0)
    dims = tuple(int(d) for d in acq.dimensions())[-3:]
    if dims != layout.shape:
        raise ValueError(
            f"SIRF built projection data of shape {dims} for the layout {layout.shape}: {layout.describe()}"
        )
    return acq


def image_template(layout: SinogramLayout, image: ImageGeometry, workdir: str | os.PathLike | None = None):
    """A SIRF ``ImageData`` on our grid (an Interfile ``.hv`` in STIR's coordinates, see ``stir_image_geometry``)."""
    pet = import_sirf()
    folder = Path(workdir or tempfile.mkdtemp(prefix="petuq_sirf_"))
    path = write_image(folder / "template.hv", np.zeros(image.shape, np.float32), stir_image_geometry(layout, image))
    img = pet.ImageData(str(path))
    dims = tuple(int(d) for d in img.dimensions())
    if dims != image.shape:
        raise ValueError(f"SIRF read an image of shape {dims} for the grid {image.shape}")
    return img


def _acq_array(acq, layout: SinogramLayout) -> np.ndarray:
    """SIRF projection data as our ``(sinograms, views, tangential)``.

    SIRF >= 3.5 adds a TOF axis in front, and its sinograms follow STIR's segment sequence
    0, +1, -1, ... (see :func:`~petuq_sirf.backends.bridge.stir_segment_order`); both are undone here.
    """
    arr = np.asarray(acq.as_array(), dtype=np.float32).reshape(layout.shape)
    return from_stir_order(arr, stir_sinogram_order(layout))


def _fill_acq(template, array: np.ndarray, layout: SinogramLayout):
    """A new SIRF ``AcquisitionData`` like ``template`` holding our ``(sinograms, views, tangential)`` ``array``."""
    acq = template.get_uniform_copy(0.0)
    dims = tuple(int(d) for d in acq.dimensions())
    arr = to_stir_order(np.asarray(array, dtype=np.float32).reshape(layout.shape), stir_sinogram_order(layout))
    acq.fill(np.ascontiguousarray(arr).reshape(dims))
    return acq


class SirfAcquisitionModel(ExternalAcquisitionModel):
    """``m * G x + b`` computed by a SIRF acquisition model (implements :class:`AcquisitionModel`).

    Args:
        layout, image, multiplicative, additive, psf_fwhm_mm, device: as for the embedded model.
        projector: ``"raytracing"`` (``AcquisitionModelUsingRayTracingMatrix``) or
            ``"parallelproj"`` (``AcquisitionModelUsingParallelproj``, when SIRF was built with it).
        num_tangential_lors: rays per bin for the ray-tracing matrix (SIRF default 1).
        acq_template, image_template: existing SIRF ``AcquisitionData`` / ``ImageData`` to use.
        sensitivity_model: a SIRF ``AcquisitionSensitivityModel`` (e.g. from a norm file and a
            mu-map, see :func:`sensitivity_from_files`) used instead of ``multiplicative``; its
            values are read back into :attr:`multiplicative` so the additive conversion stays exact.
    """

    backend_name = "sirf"

    def __init__(
        self,
        layout: SinogramLayout,
        image: ImageGeometry,
        multiplicative: torch.Tensor | None = None,
        additive: torch.Tensor | None = None,
        psf_fwhm_mm: float | tuple[float, float, float] = 0.0,
        device: str | torch.device = "cpu",
        projector: str = "raytracing",
        num_tangential_lors: int = 1,
        acq_template=None,
        image_template_data=None,
        sensitivity_model=None,
    ) -> None:
        pet = import_sirf()
        self._pet = pet
        self.projector = projector
        self.num_tangential_lors = int(num_tangential_lors)
        self._acq_template = acq_template if acq_template is not None else acquisition_template(layout)
        self._img_template = image_template_data if image_template_data is not None else image_template(layout, image)
        if sensitivity_model is not None:
            sensitivity_model.set_up(self._acq_template)
            ones = self._acq_template.get_uniform_copy(1.0)
            multiplicative = from_numpy(_acq_array(sensitivity_model.forward(ones), layout))
        super().__init__(layout, image, multiplicative, additive, psf_fwhm_mm, device)
        self._setup()

    def _new_model(self):
        pet = self._pet
        if self.projector == "raytracing":
            am = pet.AcquisitionModelUsingRayTracingMatrix()
            if self.num_tangential_lors > 1:
                am.set_num_tangential_LORs(self.num_tangential_lors)
        elif self.projector == "parallelproj":
            if not hasattr(pet, "AcquisitionModelUsingParallelproj"):
                raise ValueError("this SIRF was built without parallelproj: use projector='raytracing'")
            am = pet.AcquisitionModelUsingParallelproj()
        else:
            raise ValueError(f"unknown SIRF projector {self.projector!r}: choose raytracing or parallelproj")
        fwhm = self.psf_fwhm_mm if isinstance(self.psf_fwhm_mm, tuple) else (float(self.psf_fwhm_mm),) * 3
        if any(f > 0 for f in fwhm):
            psf = pet.SeparableGaussianImageFilter()
            psf.set_fwhms(tuple(float(f) for f in fwhm))  # (z, y, x) in mm, SIRF's order
            am.set_image_data_processor(psf)
        return am

    def _setup(self) -> None:
        pet = self._pet
        # SIRF's G is STIR's ray tracing in units of the x voxel size: fold the mm conversion into S
        S, a, b_s = sirf_terms(self._m.cpu() * stir_pixel_units(self.image), self._b.cpu())
        tmpl = self._acq_template
        self._S = _fill_acq(tmpl, to_numpy(S), self.layout)
        self._asm = pet.AcquisitionSensitivityModel(self._S)
        am = self._new_model()
        am.set_acquisition_sensitivity(self._asm)
        if torch.any(a != 0):
            self._a = _fill_acq(tmpl, to_numpy(a), self.layout)
            am.set_additive_term(self._a)
        if torch.any(b_s != 0):
            self._b_s = _fill_acq(tmpl, to_numpy(b_s), self.layout)
            am.set_background_term(self._b_s)
        am.set_up(tmpl, self._img_template)
        self._am = am
        self._linear = am.get_linear_acquisition_model()
        self._image_buffer = self._img_template.get_uniform_copy(0.0)

    # --- numpy callables used by the bridge ---------------------------------------------
    def _image(self, x: np.ndarray):
        self._image_buffer.fill(x)
        return self._image_buffer

    def _direct_np(self, x: np.ndarray) -> np.ndarray:
        return _acq_array(self._linear.direct(self._image(x)), self.layout)

    def _forward_np(self, x: np.ndarray) -> np.ndarray:
        return _acq_array(self._am.forward(self._image(x)), self.layout)

    def _adjoint_np(self, y: np.ndarray) -> np.ndarray:
        acq = _fill_acq(self._acq_template, y, self.layout)
        return np.asarray(self._linear.adjoint(acq).as_array(), dtype=np.float32).reshape(self.image_shape)

    def _rebuild(self, multiplicative: torch.Tensor, additive: torch.Tensor) -> SirfAcquisitionModel:
        return SirfAcquisitionModel(
            self.layout,
            self.image,
            multiplicative,
            additive,
            self.psf_fwhm_mm,
            self.device,
            self.projector,
            self.num_tangential_lors,
            self._acq_template,
            self._img_template,
        )

    @property
    def sirf_model(self):
        """The underlying ``sirf.STIR`` acquisition model (set up)."""
        return self._am


# --- physics from SIRF ------------------------------------------------------------------


def sensitivity_from_files(
    norm_file: str | os.PathLike | None, mu_map, acq_template, layout: SinogramLayout, image_template_data=None
):
    """``(asm, m)``: SIRF sensitivity model from a vendor norm file (ECAT8 ``.n.hdr`` / GE HDF5) and a mu-map, and ``m`` as a tensor.

    ``mu_map`` is a SIRF ``ImageData`` in 1/cm (or ``None``); the attenuation part uses
    SIRF's ray-tracing model, as ``AcquisitionSensitivityModel(mu_map, acq_model)`` does.
    """
    pet = import_sirf()
    parts = []
    if norm_file is not None:
        if not Path(norm_file).is_file():
            raise FileNotFoundError(f"normalisation file {norm_file} does not exist")
        parts.append(pet.AcquisitionSensitivityModel(str(norm_file)))
    if mu_map is not None:
        am = pet.AcquisitionModelUsingRayTracingMatrix()
        am.set_up(acq_template, image_template_data if image_template_data is not None else mu_map)
        parts.append(pet.AcquisitionSensitivityModel(mu_map, am))
    if not parts:
        raise ValueError("give a normalisation file, a mu-map, or both")
    asm = parts[0] if len(parts) == 1 else pet.AcquisitionSensitivityModel(parts[0], parts[1])
    asm.set_up(acq_template)
    ones = acq_template.get_uniform_copy(1.0)
    return asm, from_numpy(_acq_array(asm.forward(ones), layout))


def listmode_to_sinograms(
    listmode_file: str | os.PathLike,
    acq_template,
    layout: SinogramLayout,
    start_s: float,
    stop_s: float,
    output_prefix: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompts, randoms)`` from a list-mode file with SIRF: histogrammed prompts and ``estimate_randoms()``.

    The randoms are SIRF's ML-singles estimate from the delayeds (then the singles product).
    Times are in s from the start of the acquisition.
    """
    pet = import_sirf()
    if not Path(listmode_file).is_file():
        raise FileNotFoundError(f"list-mode file {listmode_file} does not exist")
    if stop_s <= start_s:
        raise ValueError(f"time interval [{start_s}, {stop_s}) s is empty")
    conv = pet.ListmodeToSinograms()
    conv.set_input(str(listmode_file))
    conv.set_output_prefix(str(output_prefix or Path(tempfile.mkdtemp(prefix="petuq_lm_")) / "prompts"))
    conv.set_template(acq_template)
    conv.set_time_interval(float(start_s), float(stop_s))
    conv.set_up()
    conv.process()
    prompts = from_numpy(_acq_array(conv.get_output(), layout))
    randoms = from_numpy(_acq_array(conv.estimate_randoms(), layout))
    return prompts, randoms


def estimate_scatter(
    prompts: torch.Tensor,
    acq_template,
    layout: SinogramLayout,
    mu_map,
    randoms: torch.Tensor,
    norm_asm=None,
    attenuation_correction_factors=None,
    num_iterations: int = 3,
) -> torch.Tensor:
    """SSS scatter (counts, shape of ``prompts``) from SIRF's ``ScatterEstimator``.

    ``norm_asm`` is the normalisation-only sensitivity model (no attenuation);
    ``attenuation_correction_factors`` (ACFs, not AFs) default to those of ``mu_map``.
    """
    pet = import_sirf()
    acq = _fill_acq(acq_template, to_numpy(prompts), layout)
    rnd = _fill_acq(acq_template, to_numpy(randoms), layout)
    if attenuation_correction_factors is None:
        _, attenuation_correction_factors = pet.AcquisitionSensitivityModel.compute_attenuation_factors(
            acq_template, mu_map
        )
    se = pet.ScatterEstimator()
    se.set_input(acq)
    se.set_attenuation_image(mu_map)
    se.set_attenuation_correction_factors(attenuation_correction_factors)
    se.set_randoms(rnd)
    if norm_asm is not None:
        se.set_asm(norm_asm)
    se.set_num_iterations(int(num_iterations))
    se.set_up()
    se.process()
    return from_numpy(_acq_array(se.get_output(), layout))
