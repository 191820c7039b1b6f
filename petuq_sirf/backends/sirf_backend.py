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
    DEFAULT_RAYS_PER_BIN,
    ExternalAcquisitionModel,
    RayTracingSettings,
    StirImageGrid,
    from_numpy,
    from_stir_order,
    sirf_terms,
    stir_sinogram_order,
    to_numpy,
    to_stir_order,
)
from petuq_sirf.backends.registry import require_backend
from petuq_sirf.io.interfile import write_image, write_projdata
from petuq_sirf.operators.psf import GaussianPSF
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


def _resolve_autograd(autograd: str):
    """``sirf.torch`` for ``"sirf.torch"`` (or ``"auto"`` where it imports), ``None`` for our own bridge."""
    if autograd not in ("auto", "sirf.torch", "petuq"):
        raise ValueError(f"unknown autograd {autograd!r}: choose auto, sirf.torch or petuq")
    if autograd == "petuq":
        return None
    try:
        import sirf.pysirf  # noqa: F401  (sirf.torch reads arrays through it: a SIRF whose pysirf fails cannot use it)
        import sirf.torch as sirf_torch
    except Exception as err:  # SIRF < 3.9, a SIRF without torch support, or a broken pysirf
        if autograd == "sirf.torch":
            raise ValueError(f"autograd='sirf.torch' needs SIRF's sirf.torch module (SIRF >= 3.9): {err}") from None
        return None
    if not hasattr(sirf_torch, "Operator"):
        if autograd == "sirf.torch":
            raise ValueError("autograd='sirf.torch' needs sirf.torch.Operator, which this SIRF's sirf.torch lacks")
        return None
    return sirf_torch


def acquisition_template(layout: SinogramLayout, workdir: str | os.PathLike | None = None):
    """A SIRF ``AcquisitionData`` with our full layout (rings, span, maximum ring difference, mashing, bins).

    Always built from an Interfile template written from the layout (``write_projdata``), never
    from SIRF's scanner-name templates (``AcquisitionData("Siemens_mMR", ...)`` is the 64-ring
    mMR whatever our ring count, and its geometry parameters are STIR's, not the layout's). The
    folder is created if missing.
    """
    pet = import_sirf()
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="petuq_sirf_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = write_projdata(folder / "template.hs", np.zeros(layout.shape, np.float32), layout)
    acq = pet.AcquisitionData(str(path)).get_uniform_copy(0.0)
    dims = tuple(int(d) for d in acq.dimensions())[-3:]
    if dims != layout.shape:
        raise ValueError(
            f"SIRF built projection data of shape {dims} for the layout {layout.shape}: {layout.describe()}"
        )
    return acq


def image_template(
    layout: SinogramLayout, image: ImageGeometry, workdir: str | os.PathLike | None = None, pad_xy: int = 0
):
    """A SIRF ``ImageData`` on STIR's placement of our grid (:class:`~petuq_sirf.backends.bridge.StirImageGrid`).

    ``pad_xy`` zero voxels on each in-plane side (``RayTracingSettings.padding_xy``).
    """
    pet = import_sirf()
    grid = StirImageGrid(layout, image, pad_xy)
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="petuq_sirf_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = write_image(folder / "template.hv", np.zeros(grid.shape, np.float32), grid.geometry)
    img = pet.ImageData(str(path))
    dims = tuple(int(d) for d in img.dimensions())
    if dims != grid.shape:
        raise ValueError(f"SIRF read an image of shape {dims} for the grid {grid.shape}")
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
        layout, image, multiplicative, additive, psf_fwhm_mm, device: as for the embedded model
            (any in-plane size, see :class:`~petuq_sirf.backends.bridge.StirImageGrid`). The PSF is
            applied in torch on our grid, exactly as on the STIR backend.
        projector: ``"raytracing"`` (``AcquisitionModelUsingRayTracingMatrix``) or
            ``"parallelproj"`` (``AcquisitionModelUsingParallelproj``, when SIRF was built with it).
        num_tangential_lors, restrict_to_cylindrical_fov: the ray-tracing matrix settings, always set
            explicitly (defaults identical to the STIR backend's; SIRF's own default is 2 rays per bin and
            a restricted FOV, ours the whole grid as the embedded model, see
            :class:`~petuq_sirf.backends.bridge.RayTracingSettings`).
        workdir: folder for the Interfile templates, created if missing (default: a temporary folder).
        acq_template, image_template_data: existing SIRF ``AcquisitionData`` / ``ImageData`` to use.
        sensitivity_model: a SIRF ``AcquisitionSensitivityModel`` (e.g. from a norm file and a
            mu-map, see :func:`sensitivity_from_files`) used instead of ``multiplicative``; its
            values are read back into :attr:`multiplicative` so the additive conversion stays exact.
        autograd: how ``forward`` / ``direct`` are differentiated: ``"sirf.torch"`` (SIRF's own torch
            bridge, ``sirf.torch.Operator``, SIRF >= 3.9; the conversions around it — PSF, grid exchange,
            sinogram order — are torch operations), ``"petuq"`` (our wrapper,
            :class:`~petuq_sirf.backends.bridge.ExternalAcquisitionModel`), or ``"auto"`` (default:
            ``sirf.torch`` where it imports). Both give the same values and gradients
            (``tests/backends/test_sirf_adapter.py``). ``adjoint`` always uses ours.
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
        num_tangential_lors: int = DEFAULT_RAYS_PER_BIN,
        restrict_to_cylindrical_fov: bool = False,
        workdir: str | os.PathLike | None = None,
        acq_template=None,
        image_template_data=None,
        sensitivity_model=None,
        autograd: str = "auto",
    ) -> None:
        pet = import_sirf()
        self._pet = pet
        self._sirf_torch = _resolve_autograd(autograd)
        self._from_stir_sinograms: torch.Tensor | None = None
        self.autograd = "petuq" if self._sirf_torch is None else "sirf.torch"
        if projector not in ("raytracing", "parallelproj"):
            raise ValueError(f"unknown SIRF projector {projector!r}: choose raytracing or parallelproj")
        self.projector = projector
        settings = RayTracingSettings(int(num_tangential_lors), bool(restrict_to_cylindrical_fov))
        self.num_tangential_lors = settings.num_tangential_lors
        self._workdir = workdir
        self._acq_template = acq_template if acq_template is not None else acquisition_template(layout, workdir)
        self._img_template = (
            image_template_data
            if image_template_data is not None
            else image_template(layout, image, workdir, settings.padding_xy)
        )
        if sensitivity_model is not None:
            sensitivity_model.set_up(self._acq_template)
            ones = self._acq_template.get_uniform_copy(1.0)
            multiplicative = from_numpy(_acq_array(sensitivity_model.forward(ones), layout))
        super().__init__(layout, image, multiplicative, additive, psf_fwhm_mm, device, settings)
        fwhm = psf_fwhm_mm if isinstance(psf_fwhm_mm, tuple) else (float(psf_fwhm_mm),) * 3
        self.psf = GaussianPSF(fwhm, image.voxel_size_mm) if any(f > 0 for f in fwhm) else None
        self._setup()

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        if self._sirf_torch is None:
            return super().direct(x)
        return self._via_sirf_torch(x, self._linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sirf_torch is None:
            return super().forward(x)
        return self._via_sirf_torch(x, self._am)

    def _via_sirf_torch(self, x: torch.Tensor, operator) -> torch.Tensor:
        """``operator`` (SIRF's model or its linear part) through ``sirf.torch.Operator``, conversions in torch."""
        if tuple(x.shape[-3:]) != tuple(self.image_shape):
            raise ValueError(f"input of shape {tuple(x.shape)} does not end in {tuple(self.image_shape)}")
        batch = x.shape[:-3]
        z = x.reshape(-1, *self.image_shape).to("cpu", torch.float32)
        if self.psf is not None:
            z = self.psf(z)
        z = self.grid.to_stir_torch(z)
        out = self._sirf_torch.Operator(operator, self._image_buffer)(z)  # (B, TOF = 1, sinograms, views, tangential)
        if self._from_stir_sinograms is None:  # index putting STIR-ordered sinograms into ours, built once
            self._from_stir_sinograms = torch.as_tensor(np.argsort(stir_sinogram_order(self.layout)))
        out = out.reshape(-1, *self.layout.shape)[:, self._from_stir_sinograms]
        return out.to(x.device).reshape(*batch, *self.layout.shape)

    def projector_settings(self) -> dict:
        if self.projector == "parallelproj":
            proj = {
                "matrix": "SIRF AcquisitionModelUsingParallelproj (Joseph)",
                "values_in": "mm (x-voxel units converted)",
            }
        else:
            proj = self.settings.as_dict()
        return {**super().projector_settings(), **proj, "psf_fwhm_mm": self.psf_fwhm_mm, "autograd": self.autograd}

    def _new_model(self):
        pet = self._pet
        if self.projector == "raytracing":
            matrix = pet.RayTracingMatrix()
            matrix.set_num_tangential_LORs(self.settings.num_tangential_lors)
            matrix.set_restrict_to_cylindrical_FOV(self.settings.restrict_to_cylindrical_fov)
            return pet.AcquisitionModelUsingRayTracingMatrix(matrix)
        if not hasattr(pet, "AcquisitionModelUsingParallelproj"):
            raise ValueError("this SIRF was built without parallelproj: use projector='raytracing'")
        return pet.AcquisitionModelUsingParallelproj()

    def _setup(self) -> None:
        pet = self._pet
        # SIRF's G is in STIR's x-voxel units (ray tracing, and parallelproj as STIR wraps it): the
        # conversion to mm (grid.unit_mm, the one place it is defined) is folded into S
        S, a, b_s = sirf_terms(self._m.cpu() * self.grid.unit_mm, self._b.cpu())
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
    def _psf(self, x: np.ndarray, adjoint: bool = False) -> np.ndarray:
        if self.psf is None:
            return x
        t = torch.from_numpy(np.ascontiguousarray(x))
        return (self.psf.adjoint(t) if adjoint else self.psf(t)).numpy()

    def _image(self, x: np.ndarray):
        self._image_buffer.fill(self.grid.to_stir(self._psf(x)))
        return self._image_buffer

    def _direct_np(self, x: np.ndarray) -> np.ndarray:
        return _acq_array(self._linear.direct(self._image(x)), self.layout)

    def _forward_np(self, x: np.ndarray) -> np.ndarray:
        return _acq_array(self._am.forward(self._image(x)), self.layout)

    def _adjoint_np(self, y: np.ndarray) -> np.ndarray:
        acq = _fill_acq(self._acq_template, y, self.layout)
        z = np.asarray(self._linear.adjoint(acq).as_array(), dtype=np.float32).reshape(self.grid.shape)
        return self._psf(self.grid.from_stir(z), adjoint=True)

    def _rebuild(self, multiplicative: torch.Tensor, additive: torch.Tensor) -> SirfAcquisitionModel:
        return SirfAcquisitionModel(
            self.layout,
            self.image,
            multiplicative,
            additive,
            self.psf_fwhm_mm,
            self.device,
            self.projector,
            self.settings.num_tangential_lors,
            self.settings.restrict_to_cylindrical_fov,
            self._workdir,
            self._acq_template,
            self._img_template,
            autograd=self.autograd,
        )

    @property
    def sirf_model(self):
        """The underlying ``sirf.STIR`` acquisition model (set up; the PSF is applied outside it, in torch)."""
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
