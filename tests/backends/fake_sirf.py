"""A tiny stand-in for ``sirf.STIR`` that follows SIRF's documented semantics, to test our adapter.

It is NOT SIRF: its projector is our embedded one. What it reproduces is the interface
contract our adapter depends on:

* ``y = S (G P x + a) + b_s`` for the full model, ``S G P x`` for the linear one;
* projection arrays are ``(TOF=1, sinograms, views, tangential)`` with the segments in
  STIR's ``standard_segment_sequence`` 0, +1, -1, +2, -2, ... (not ascending);
* templates read from Interfile; ``AcquisitionData`` read from file is read-only;
* STIR's geometry conventions as measured with STIR 6 (docs/sirf_stir.md): image ``z`` measured
  from the first ring, ray-tracing values in units of the x voxel size, odd x/y sizes only.

So the tests check the adapter's term conversion, array reordering, batching and
autograd, not SIRF itself.
"""

from __future__ import annotations

import types

import numpy as np
import torch

from petuq_sirf.io.interfile import read_image, read_projdata
from petuq_sirf.operators.axial_tube import AxialTubeProjector
from petuq_sirf.operators.psf import GaussianPSF


def _standard_segment_sequence(num_segments):
    # STIR: 0, +1, -1, +2, -2, ... as segment numbers; index into ascending list = number + centre
    centre = num_segments // 2
    seq = [0]
    for k in range(1, centre + 1):
        seq += [k, -k]
    return [centre + s for s in seq]


def stir_to_our_geometry(layout, geometry):
    """Undo STIR's image conventions (z origin at the first ring); refuse what STIR's ray tracer refuses."""
    off_xy = max(abs(geometry.offset_mm[1]), abs(geometry.offset_mm[2]))
    if geometry.shape[1] % 2 == 0 or geometry.shape[2] % 2 == 0 or off_xy > 0.05:  # STIR's tolerance: 0.05 mm
        raise RuntimeError("ProjMatrixByBinUsingRayTracing sadly doesn't support shifted x/y origin yet")
    shift = (layout.scanner.num_rings - 1) / 2 * layout.scanner.ring_spacing_mm
    return type(geometry)(geometry.shape, geometry.voxel_size_mm, (geometry.offset_mm[0] - shift, 0.0, 0.0))


def _array_order(layout):
    sizes = layout.sinograms_per_segment
    starts = np.cumsum([0] + sizes[:-1])
    return np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in _standard_segment_sequence(len(sizes))])


class AcquisitionData:
    storage_scheme = "file"

    @staticmethod
    def set_storage_scheme(scheme):
        AcquisitionData.storage_scheme = scheme

    def __init__(self, src=None, span=1, max_ring_diff=-1, view_mash_factor=1):
        self.read_only = False
        if src is None:
            return
        if isinstance(src, AcquisitionData):
            self.layout, self.values = src.layout, np.zeros_like(src.values)
            return
        if "." not in src:  # a scanner name: SIRF's built-in template ignores our ring count
            raise RuntimeError("the fake only reads Interfile templates (scanner-name templates are not used)")
        pd = read_projdata(src)
        self.layout = pd.layout
        self.values = pd.array[_array_order(pd.layout)][None].astype(np.float32)  # STIR array order
        self.read_only = AcquisitionData.storage_scheme == "file"

    def dimensions(self):
        return self.values.shape

    def as_array(self):
        return self.values.copy()

    def fill(self, value):
        if self.read_only:
            raise RuntimeError("Cannot fill read-only object, consider filling a clone")
        if isinstance(value, np.ndarray):
            if value.shape != self.values.shape:
                raise ValueError(f"cannot fill AcquisitionData of size {self.values.shape} with {value.shape}")
            self.values = value.astype(np.float32).copy()
        else:
            self.values = np.full_like(self.values, float(value))
        return self

    def get_uniform_copy(self, value=0.0):
        out = AcquisitionData(self)
        return out.fill(value)

    def _new(self, values):
        out = AcquisitionData(self)
        out.values = values.astype(np.float32)
        return out


class ImageData:
    def __init__(self, src=None):
        if src is None:
            return
        if isinstance(src, ImageData):
            self.geometry, self.values = src.geometry, np.zeros_like(src.values)
            return
        im = read_image(src)
        self.geometry, self.values = im.geometry, np.asarray(im.array, dtype=np.float32)

    def dimensions(self):
        return self.values.shape

    def voxel_sizes(self):
        return self.geometry.voxel_size_mm

    def as_array(self):
        return self.values.copy()

    def fill(self, value):
        self.values = (
            value.astype(np.float32).reshape(self.values.shape).copy()
            if isinstance(value, np.ndarray)
            else np.full_like(self.values, float(value))
        )
        return self

    def get_uniform_copy(self, value=1.0):
        return ImageData(self).fill(value)


class AcquisitionSensitivityModel:
    def __init__(self, src, other_src=None):
        if not isinstance(src, AcquisitionData):
            raise RuntimeError("the fake supports bin efficiencies only")
        self.S = src.values.copy()

    def set_up(self, ad):
        pass

    def forward(self, ad):
        return ad._new(ad.values * self.S)


class SeparableGaussianImageFilter:
    def set_fwhms(self, fwhms):
        self.fwhms = tuple(fwhms)


_PROJECTORS: dict = {}


class RayTracingMatrix:
    """SIRF's matrix object; like SIRF's, it starts with 2 rays per bin (STIR's default is 1)."""

    def __init__(self):
        self.n_lors, self.restrict = 2, True

    def set_num_tangential_LORs(self, n):
        self.n_lors = int(n)
        return self

    def get_num_tangential_LORs(self):
        return self.n_lors

    def set_restrict_to_cylindrical_FOV(self, value=True):
        self.restrict = bool(value)
        return self


class AcquisitionModelUsingRayTracingMatrix:
    def __init__(self, matrix=None):
        self.asm = self.at = self.bt = self.psf = None
        self.matrix = matrix if matrix is not None else RayTracingMatrix()

    def set_num_tangential_LORs(self, n):
        self.matrix.set_num_tangential_LORs(n)

    def get_num_tangential_LORs(self):
        return self.matrix.get_num_tangential_LORs()

    def set_acquisition_sensitivity(self, asm):
        self.asm = asm

    def set_additive_term(self, at):
        self.at = at

    def set_background_term(self, bt):
        self.bt = bt

    def set_image_data_processor(self, processor):
        self.psf = processor

    def set_up(self, acq_templ, img_templ):
        self.acq_templ, self.img_templ = acq_templ, img_templ
        self.layout = acq_templ.layout
        self.order = _array_order(self.layout)
        ours = stir_to_our_geometry(self.layout, img_templ.geometry)
        n = self.matrix.get_num_tangential_LORs()
        key = (self.layout, ours, n)
        if key not in _PROJECTORS:  # building a system matrix is the slow part; share it between models
            # STIR's ray tracer: axial tube, exact intersection lengths, n tangential rays per bin
            _PROJECTORS[key] = AxialTubeProjector(self.layout, ours, ray_model="siddon", rays_per_bin=n)
        self.proj = _PROJECTORS[key]
        self.pixel = ours.voxel_size_mm[2]  # STIR ray tracing: lengths in x-voxel units
        self.P = GaussianPSF(self.psf.fwhms, img_templ.geometry.voxel_size_mm) if self.psf is not None else None

    def _S(self):
        return self.asm.S if self.asm is not None else 1.0

    def _GP(self, image):
        x = torch.from_numpy(image.values)
        if self.P is not None:
            x = self.P(x)
        return (self.proj.forward(x) / self.pixel).numpy()[self.order][None]

    def forward(self, image):
        a = self.at.values if self.at is not None else 0.0
        b = self.bt.values if self.bt is not None else 0.0
        return self.acq_templ._new(self._S() * (self._GP(image) + a) + b)

    def get_linear_acquisition_model(self):
        outer = self

        def direct(image):
            return outer.acq_templ._new(outer._S() * outer._GP(image))

        def adjoint(ad):
            y = np.empty_like(ad.values[0])
            y[outer.order] = (outer._S() * ad.values)[0]
            z = outer.proj.adjoint(torch.from_numpy(y)) / outer.pixel
            if outer.P is not None:
                z = outer.P.adjoint(z)
            out = ImageData(outer.img_templ)
            out.values = z.numpy().astype(np.float32)
            return out

        return types.SimpleNamespace(direct=direct, adjoint=adjoint)


def set_verbosity(level):
    pass


def install(monkeypatch):
    """Make ``import sirf.STIR`` return this fake for the duration of a test."""
    import sys

    package = types.ModuleType("sirf")
    stir_module = types.ModuleType("sirf.STIR")
    for name in (
        "AcquisitionData",
        "ImageData",
        "AcquisitionSensitivityModel",
        "SeparableGaussianImageFilter",
        "AcquisitionModelUsingRayTracingMatrix",
        "RayTracingMatrix",
        "set_verbosity",
    ):
        setattr(stir_module, name, globals()[name])
    package.STIR = stir_module
    monkeypatch.setitem(sys.modules, "sirf", package)
    monkeypatch.setitem(sys.modules, "sirf.STIR", stir_module)
