"""Shared machinery of the external (SIRF, STIR) backends: numpy <-> torch, autograd, terms, subsets.

An external backend supplies three numpy callables on single images / sinograms
(float32, C-contiguous): ``_direct_np`` (``m * G x``), ``_adjoint_np`` (``G^T (m y)``) and
optionally ``_forward_np`` (``m * G x + b``; default ``_direct_np + b``). This base class
turns them into the :class:`~petuq_sirf.operators.AcquisitionModel` protocol: leading batch
dimensions, any torch device (results go back to the input's device), and autograd through
:class:`torch.autograd.Function` wrappers whose backward passes are the adjoint / direct
operators, so unrolled networks and plug-and-play code run unchanged on SIRF or STIR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from petuq_sirf.operators.acquisition import AcquisitionModelBase, subset_views
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout, segment_order, sinogram_order


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous numpy view of ``t`` (no copy when ``t`` already is a CPU float32 contiguous tensor)."""
    t = t.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32:
        t = t.to("cpu", torch.float32)
    return t.contiguous().numpy()


def from_numpy(a: np.ndarray, like: torch.Tensor | None = None, device: torch.device | None = None) -> torch.Tensor:
    """``a`` as a torch tensor sharing its memory, moved to ``like``'s (or ``device``) device and dtype when needed."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if like is not None:
        return t.to(like.device, like.dtype if like.is_floating_point() else torch.float32)
    return t if device is None else t.to(device)


def stir_segment_order(num_segments: int) -> np.ndarray:
    """Our segment indices (ascending ring difference) in the order of STIR/SIRF arrays: 0, +1, -1, +2, -2, ...

    ``ProjData::copy_to`` / ``fill_from`` (used by SIRF's ``as_array``/``fill`` and STIR's
    ``as_array``/``fill``) follow ``ProjData::standard_segment_sequence``. Interfile files on
    disk list segments in ascending ring difference instead (our order). The mMR list-mode
    bin addresses use yet another order, 0, -1, +1, ... (see ``io/mmr_listmode.py``).
    """
    return segment_order(num_segments, positive_first=True)


def stir_sinogram_order(layout: SinogramLayout) -> np.ndarray:
    """``order[i]`` = our sinogram index stored at position ``i`` of a STIR/SIRF array (shape ``(sinograms,)``)."""
    return sinogram_order(layout, positive_first=True)


def to_stir_order(array: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Our ``(sinograms, views, tangential)`` array in STIR array order (a copy; identity orders are not copied)."""
    return array if np.array_equal(order, np.arange(len(order))) else array[order]


def from_stir_order(array: np.ndarray, order: np.ndarray) -> np.ndarray:
    """A STIR-ordered ``(sinograms, views, tangential)`` array in our order."""
    if np.array_equal(order, np.arange(len(order))):
        return array
    out = np.empty_like(array)
    out[order] = array
    return out


#: rays per sinogram bin of STIR's ``ProjMatrixByBinUsingRayTracing`` on both external backends. SIRF's
#: ``RayTracingMatrix`` defaults to 2, STIR's to 1: we always set it explicitly so the two backends
#: trace the same projector (measured against the embedded Joseph projector in docs/sirf_stir.md).
DEFAULT_RAYS_PER_BIN = 2


@dataclass(frozen=True)
class RayTracingSettings:
    """Every setting of STIR's ray-tracing matrix that changes projected values, set explicitly on both backends.

    ``num_tangential_lors``: rays per bin (``set_num_tangential_LORs``).
    ``restrict_to_cylindrical_fov``: STIR's option to trace only the cylinder inscribed in its image
    (STIR's and SIRF's default True). Our default is False, the embedded model's: every voxel of our
    (square) grid is seen. STIR's unrestricted tracer clips rays to the square through the centres of
    its outermost voxels, so the grid is then padded by :data:`FOV_PADDING_XY` zero voxels on each
    side in ``x`` and ``y`` (:class:`StirImageGrid`), which puts all of our voxels inside. With True,
    voxels outside the inscribed cylinder of our grid get no sensitivity (as in STIR/SIRF) and the
    embedded model differs there. The symmetries STIR uses to store the matrix change memory and
    speed only, not values, and keep STIR's defaults.
    """

    num_tangential_lors: int = DEFAULT_RAYS_PER_BIN
    restrict_to_cylindrical_fov: bool = False

    def __post_init__(self) -> None:
        if int(self.num_tangential_lors) < 1:
            raise ValueError(f"num_tangential_lors must be >= 1, got {self.num_tangential_lors}")

    @property
    def padding_xy(self) -> int:
        """Zero voxels added on each side in x and y of STIR's grid (0 when the FOV is restricted)."""
        return 0 if self.restrict_to_cylindrical_fov else FOV_PADDING_XY

    def as_dict(self) -> dict:
        return {
            "matrix": "STIR ProjMatrixByBinUsingRayTracing",
            "num_tangential_lors": int(self.num_tangential_lors),
            "restrict_to_cylindrical_fov": bool(self.restrict_to_cylindrical_fov),
            "image_padding_xy": self.padding_xy,
            "axial_model": "tube",  # STIR's, fixed (EmbeddedAcquisitionModel(axial_model="tube") is the same)
            "values_in": "mm (STIR's x-voxel units converted by StirImageGrid.unit_mm)",
        }


#: zero voxels padded on each in-plane side of STIR's grid when its FOV is not restricted (see
#: :class:`RayTracingSettings`): one is enough, the unrestricted tracer stops at the centres of the
#: outermost (padding) voxels, half a voxel beyond the edge of ours.
FOV_PADDING_XY = 1


class StirImageGrid:
    """Our image grid as STIR places it, and the one conversion of STIR's ray-tracing units.

    * **Axial origin.** STIR measures image ``z`` from the centre of the first ring (ours from
      the scanner centre): the template's ``z`` is shifted by ``(rings - 1) / 2 * ring spacing``.
    * **In-plane centring.** STIR's x/y voxel indices run ``-n//2 .. n - n//2 - 1`` about the
      axis and its ray tracer refuses shifted x/y origins, so only odd sizes are centred like
      ours. An even size ``n`` along y or x is exchanged through STIR's odd grid of ``n + 1``
      voxels whose centres fall on our voxel boundaries: ``to_stir`` interpolates our image
      linearly there (each STIR voxel the mean of its two neighbours, mass preserved),
      ``from_stir`` is its exact adjoint. That adds a 2-tap (half-voxel) blur per even axis;
      odd grids are exchanged unchanged.
    * **Padding.** ``pad_xy`` zero voxels are added on each side in y and x (after the half-voxel
      exchange; see :class:`RayTracingSettings` for why the unrestricted FOV needs them); the way
      back crops them.
    * **Units.** STIR's ray-tracing matrix returns path lengths in units of the x voxel size;
      ``unit_mm`` (the x voxel size of the STIR grid) turns them into our mm.

    Args:
        layout: the sinogram layout (for the scanner's rings).
        image: our grid; its x/y offsets must be 0 (STIR's ray tracer needs a centred image).
        pad_xy: zero voxels added on each in-plane side (``RayTracingSettings.padding_xy``).
    """

    def __init__(self, layout: SinogramLayout, image: ImageGeometry, pad_xy: int = 0) -> None:
        if image.offset_mm[1] != 0 or image.offset_mm[2] != 0:
            raise ValueError("SIRF/STIR ray tracing needs an image centred on the scanner axis (x/y offset 0)")
        if int(pad_xy) < 0:
            raise ValueError(f"pad_xy must be >= 0, got {pad_xy}")
        nz, ny, nx = image.shape
        self.image = image
        self.pad_y, self.pad_x = ny % 2 == 0, nx % 2 == 0
        self.pad_xy = int(pad_xy)
        sc = layout.scanner
        shift = (sc.num_rings - 1) / 2 * sc.ring_spacing_mm
        p2 = 2 * self.pad_xy
        self.geometry = ImageGeometry(
            (nz, ny + self.pad_y + p2, nx + self.pad_x + p2),
            image.voxel_size_mm,
            (image.offset_mm[0] + shift, 0.0, 0.0),
        )
        self.shape = self.geometry.shape
        self.unit_mm = float(self.geometry.voxel_size_mm[2])

    @property
    def exact(self) -> bool:
        """Whether our voxel values are exchanged unchanged (odd in-plane sizes; zero padding aside)."""
        return not (self.pad_y or self.pad_x)

    def to_stir(self, x: np.ndarray) -> np.ndarray:
        """Our ``(z, y, x)`` image on STIR's grid (float32, C-contiguous)."""
        x = np.asarray(x, dtype=np.float32)
        for axis, pad in ((1, self.pad_y), (2, self.pad_x)):
            if pad:
                widths = [(0, 0)] * 3
                lo, hi = list(widths), list(widths)
                lo[axis], hi[axis] = (1, 0), (0, 1)
                x = 0.5 * (np.pad(x, lo) + np.pad(x, hi))
        if self.pad_xy:
            p = self.pad_xy
            x = np.pad(x, ((0, 0), (p, p), (p, p)))
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_stir_torch(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`to_stir` in torch on images ``(..., z, y, x)`` (differentiable; autograd gives :meth:`from_stir`)."""
        for axis, pad in ((-2, self.pad_y), (-1, self.pad_x)):
            if pad:
                widths = (0, 0, 1, 0) if axis == -2 else (1, 0)
                widths_hi = (0, 0, 0, 1) if axis == -2 else (0, 1)
                x = 0.5 * (torch.nn.functional.pad(x, widths) + torch.nn.functional.pad(x, widths_hi))
        if self.pad_xy:
            p = self.pad_xy
            x = torch.nn.functional.pad(x, (p, p, p, p))
        return x

    def from_stir(self, z: np.ndarray) -> np.ndarray:
        """The adjoint of :meth:`to_stir`: an image on STIR's grid back on ours."""
        z = np.asarray(z, dtype=np.float32)
        if self.pad_xy:
            p = self.pad_xy
            z = z[:, p:-p, p:-p]
        for axis, pad in ((2, self.pad_x), (1, self.pad_y)):
            if pad:
                n = z.shape[axis]
                z = 0.5 * (np.take(z, np.arange(n - 1), axis=axis) + np.take(z, np.arange(1, n), axis=axis))
        return np.ascontiguousarray(z, dtype=np.float32)


def stir_image_geometry(layout: SinogramLayout, image: ImageGeometry, pad_xy: int = 0) -> ImageGeometry:
    """The grid to write in Interfile templates for STIR/SIRF (see :class:`StirImageGrid`)."""
    return StirImageGrid(layout, image, pad_xy).geometry


def sirf_terms(multiplicative: torch.Tensor, additive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our ``(m, b)`` as SIRF's ``(S, a, b_s)`` with ``y = S (G x + a) + b_s``.

    ``S = m``; ``a = b / m`` where ``m > 0`` (SIRF multiplies ``a`` by ``S``, so ``S a = b``);
    where ``m = 0`` the background goes into ``b_s`` instead (``a = 0`` there), so the
    SIRF model reproduces ``m * G x + b`` in every bin.
    """
    m = torch.as_tensor(multiplicative, dtype=torch.float32)
    b = torch.as_tensor(additive, dtype=torch.float32)
    if m.shape != b.shape:
        raise ValueError(f"multiplicative {tuple(m.shape)} and additive {tuple(b.shape)} terms differ in shape")
    pos = m > 0
    a = torch.where(pos, b / torch.where(pos, m, torch.ones_like(m)), torch.zeros_like(b))
    b_s = torch.where(pos, torch.zeros_like(b), b)
    return m, a, b_s


def ours_from_sirf_terms(
    sensitivity: torch.Tensor, additive: torch.Tensor, background: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SIRF's ``(S, a, b_s)`` as our ``(m, b) = (S, S a + b_s)``."""
    b = sensitivity * additive
    return sensitivity, b if background is None else b + background


# (forward kernel, its input's core shape attribute, backward kernel, backward input shape attribute)
_OPS = {
    "direct": ("_direct_np", "image_shape", "_adjoint_np", "data_shape"),
    "forward": ("_forward_np", "image_shape", "_adjoint_np", "data_shape"),  # b is constant: same gradient
    "adjoint": ("_adjoint_np", "data_shape", "_direct_np", "image_shape"),
}


class _NumpyOperator(torch.autograd.Function):
    """Autograd wrapper of an external model's numpy kernel; the backward is the matched linear kernel."""

    @staticmethod
    def forward(ctx, x, model, op):
        fwd, fwd_shape, _, _ = _OPS[op]
        ctx.model, ctx.op = model, op
        return model._apply_np(getattr(model, fwd), x, getattr(model, fwd_shape))

    @staticmethod
    def backward(ctx, grad):
        _, _, bwd, bwd_shape = _OPS[ctx.op]
        return ctx.model._apply_np(getattr(ctx.model, bwd), grad, getattr(ctx.model, bwd_shape)), None, None


class ExternalAcquisitionModel(AcquisitionModelBase):
    """Base of the SIRF and STIR models (implements :class:`AcquisitionModel`; see the module docstring).

    Args:
        layout, image: the sinogram layout and image grid.
        multiplicative: ``m`` per bin, shape ``layout.shape`` (default ones).
        additive: ``b`` in counts, shape ``layout.shape`` (default zeros).
        psf_fwhm_mm: image-space Gaussian resolution model FWHM in mm (0 = none).
        device: where results are returned (the projection itself runs on the CPU).
        settings: the ray-tracing settings (they decide the padding of STIR's grid).
    """

    backend_name = "external"

    def __init__(
        self,
        layout: SinogramLayout,
        image: ImageGeometry,
        multiplicative: torch.Tensor | None = None,
        additive: torch.Tensor | None = None,
        psf_fwhm_mm: float | tuple[float, float, float] = 0.0,
        device: str | torch.device = "cpu",
        settings: RayTracingSettings | None = None,
    ) -> None:
        self.settings = settings if settings is not None else RayTracingSettings()
        self.layout = layout
        self.image = image
        self.image_shape = image.shape
        self.data_shape = layout.shape
        self.voxel_size_mm = image.voxel_size_mm
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.psf_fwhm_mm = psf_fwhm_mm
        self._set_terms(multiplicative, additive)
        self._unit_terms_model: ExternalAcquisitionModel | None = None
        # STIR's placement of our grid and its units, in one place
        self.grid = StirImageGrid(layout, image, self.settings.padding_xy)

    def projector_settings(self) -> dict:
        """The projector's settings as recorded in ``metrics.json`` (overridden by the backends)."""
        return {"backend": self.backend_name, "image_exchange": "exact" if self.grid.exact else "half-voxel"}

    # --- to be provided by the backend -------------------------------------------------
    def _direct_np(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _adjoint_np(self, y: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward_np(self, x: np.ndarray) -> np.ndarray:
        return self._direct_np(x) + to_numpy(self._b)

    def _rebuild(self, multiplicative: torch.Tensor, additive: torch.Tensor) -> ExternalAcquisitionModel:
        raise NotImplementedError  # pragma: no cover - abstract

    # --- protocol ------------------------------------------------------------------------
    def _apply_np(self, fn, t: torch.Tensor, core_shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(t.shape[-len(core_shape) :]) != tuple(core_shape):
            raise ValueError(f"input of shape {tuple(t.shape)} does not end in {tuple(core_shape)}")
        batch = t.shape[: t.dim() - len(core_shape)]
        flat = t.reshape(-1, *core_shape)
        outs = [from_numpy(fn(to_numpy(flat[i]))) for i in range(flat.shape[0])]
        out = torch.stack(outs) if len(outs) != 1 else outs[0][None]
        out = out.to(t.device, t.dtype if t.is_floating_point() else torch.float32)
        return out.reshape(*batch, *out.shape[1:])

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        return _NumpyOperator.apply(x, self, "direct")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NumpyOperator.apply(x, self, "forward")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return _NumpyOperator.apply(y, self, "adjoint")

    def _geometric_model(self) -> ExternalAcquisitionModel:
        """The same projector with ``m = 1``, ``b = 0`` (built once)."""
        if self._unit_terms_model is None:
            ones = torch.ones(self.data_shape, dtype=self.dtype, device=self.device)
            self._unit_terms_model = self._rebuild(ones, torch.zeros_like(ones))
        return self._unit_terms_model

    def geometric(self, x: torch.Tensor) -> torch.Tensor:
        return self._geometric_model().direct(x)

    def geometric_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._geometric_model().adjoint(y)

    def subset(self, index: int, num_subsets: int) -> SubsetModel:
        return SubsetModel(self, subset_views(self.data_shape[1], index, num_subsets))

    def with_terms(
        self, multiplicative: torch.Tensor | None = None, additive: torch.Tensor | None = None
    ) -> ExternalAcquisitionModel:
        return self._rebuild(
            self._m if multiplicative is None else multiplicative, self._b if additive is None else additive
        )


class SubsetModel(AcquisitionModelBase):
    """The views ``index::num_subsets`` of an external model: full projections sliced / zero-padded.

    Exact for any backend (it does not rely on the backend's own subset ordering), at the
    cost of a full projection per call.
    """

    def __init__(self, parent: ExternalAcquisitionModel, views: torch.Tensor) -> None:
        self.parent = parent
        self.views = views
        s, _, t = parent.data_shape
        self.image_shape = parent.image_shape
        self.data_shape = (s, len(views), t)
        self.voxel_size_mm = parent.voxel_size_mm
        self.device = parent.device
        self.dtype = parent.dtype
        self._sensitivity: torch.Tensor | None = None

    @property
    def multiplicative(self) -> torch.Tensor:
        return self.parent.multiplicative[:, self.views]

    @property
    def additive(self) -> torch.Tensor:
        return self.parent.additive[:, self.views]

    def _pad(self, y: torch.Tensor) -> torch.Tensor:
        full = y.new_zeros(*y.shape[:-2], self.parent.data_shape[1], y.shape[-1])
        full[..., self.views.to(y.device), :] = y
        return full

    def direct(self, x: torch.Tensor) -> torch.Tensor:
        return self.parent.direct(x)[..., self.views.to(x.device), :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parent.forward(x)[..., self.views.to(x.device), :]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.parent.adjoint(self._pad(y))

    def geometric(self, x: torch.Tensor) -> torch.Tensor:
        return self.parent.geometric(x)[..., self.views.to(x.device), :]

    def geometric_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.parent.geometric_adjoint(self._pad(y))

    def subset(self, index: int, num_subsets: int) -> SubsetModel:
        return SubsetModel(self.parent, self.views[subset_views(len(self.views), index, num_subsets)])

    def with_terms(
        self, multiplicative: torch.Tensor | None = None, additive: torch.Tensor | None = None
    ) -> SubsetModel:
        m = self.parent.multiplicative.clone()
        b = self.parent.additive.clone()
        if multiplicative is not None:
            m[:, self.views] = torch.as_tensor(multiplicative, dtype=m.dtype, device=m.device)
        if additive is not None:
            b[:, self.views] = torch.as_tensor(additive, dtype=b.dtype, device=b.device)
        return SubsetModel(self.parent.with_terms(m, b), self.views)
