"""Class-conditional (Mondrian) split-conformal intervals by voxel class, and conformalised quantiles (CQR).

One global conformal factor fixes the *average* coverage over all calibration voxels, so it over-covers
flat background and under-covers edges and lesions, where a learned reconstruction is biased. Mondrian
conformal prediction calibrates each voxel class separately. Classes (:func:`voxel_classes`) come from
the *reconstruction itself* (never from the truth), so they are available on a new scan:

- activity level: the (smoothed) reconstructed value relative to the median inside the body,
- local gradient / edge strength: the largest change to a neighbour, relative to that median,
- distance to the body outline (mm), the outline thresholded from the smoothed reconstruction,
- optionally (``contrast_edges``) local contrast: the smoothed value relative to its wider neighbourhood
  inside the body (``contrast_fwhm_mm``), which separates hot and cold spots such as lesions, where a
  learned reconstruction's bias is largest, from the flat tissue of the same activity level,
- optionally (``disagreement_edges``) disagreement with a less regularised reconstruction of the same data
  (``reference``, e.g. plain OSEM): ``S(reference - image)`` relative to the body median, ``S`` a Gaussian
  smoothing of ``disagreement_fwhm_mm``. Where a learned reconstruction has smoothed a lesion away its own
  features cannot see it; the unregularised image still holds it (with its noise).

Scores (``score=``):

- ``"normalised"``: ``s = |truth - mean| / std``, interval ``mean -/+ q_c std`` (``std`` of the method);
- ``"cqr"``: conformalised quantile regression (Romano et al. 2019) on the method's own central interval
  ``[lo, hi]`` at each level (sample quantiles, or ``mean -/+ z std``): ``s = max(lo - truth, truth - hi)``,
  interval ``[lo - q_c, hi + q_c]``. Tighter where the raw interval is already about right in shape.

What the guarantee covers: with ``n_c`` calibration voxels in class ``c``, ``q_c`` is the
``ceil((n_c + 1) level)``-th smallest score, so a test voxel that is *exchangeable* with the calibration
voxels of its class is covered with probability >= ``level`` - marginally over the calibration
distribution (the phantoms, doses and noise realisations that produced the calibration set), for each
class separately. It says nothing about a particular voxel of a particular patient, and it breaks
under distribution shift (a phantom family, scanner or dose the calibration set did not contain);
voxels of one image are correlated, so the pooled guarantee is approximate. Classes with fewer than
``min_class_size`` calibration voxels fall back to the pooled (global) quantile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from petuq_sirf.uq.calibration import DEFAULT_LEVELS, conformal_quantile, gaussian_quantile

SCORES = ("normalised", "cqr")


@dataclass(frozen=True)
class VoxelClassSpec:
    """Thresholds of the voxel classes (relative units are fractions of the body's median activity).

    Attributes:
        activity_edges: bin edges of the relative activity (2 edges: low / mid / high).
        gradient_edges: bin edges of the relative edge strength (largest change to a neighbour).
        distance_edges_mm: bin edges of the distance to the body outline in mm.
        outline_fraction: body = smoothed image > ``outline_fraction`` x its 99th percentile.
        smooth_fwhm_mm: Gaussian smoothing (mm) of the reconstruction before computing the features.
        contrast_edges: bin edges of the local contrast, the smoothed value over its body-normalised
            ``contrast_fwhm_mm`` neighbourhood mean (e.g. ``(0.85, 1.2)``: cold spot / flat / hot spot);
            empty (the default): no contrast axis, the 18 classes of the earlier versions.
        contrast_fwhm_mm: width (mm) of the neighbourhood of the local contrast; wider than the spots to
            be separated (at the centre of a 30 mm 4:1 hot lesion the default gives a contrast of about 1.6).
        disagreement_edges: bin edges of ``S(reference - image) / median`` (e.g. ``(-0.25, 0.25)``: reference
            lower / agrees / higher); needs ``reference`` in :func:`voxel_classes`. Empty (the default): no axis.
        disagreement_fwhm_mm: FWHM (mm) of the smoothing ``S`` of the disagreement (suppresses the
            reference's noise).
    """

    activity_edges: tuple[float, ...] = (0.6, 1.6)
    gradient_edges: tuple[float, ...] = (0.15, 0.4)
    distance_edges_mm: tuple[float, ...] = (8.0,)
    outline_fraction: float = 0.1
    smooth_fwhm_mm: float = 4.0
    contrast_edges: tuple[float, ...] = ()
    contrast_fwhm_mm: float = 30.0
    disagreement_edges: tuple[float, ...] = ()
    disagreement_fwhm_mm: float = 8.0

    def __post_init__(self) -> None:
        for name in ("activity_edges", "gradient_edges", "distance_edges_mm", "contrast_edges", "disagreement_edges"):
            edges = getattr(self, name)
            if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise ValueError(f"voxel classes: {name} must increase, got {list(edges)}")
        if self.contrast_edges and not self.contrast_fwhm_mm > 0:
            raise ValueError(f"voxel classes: contrast_fwhm_mm must be > 0, got {self.contrast_fwhm_mm}")
        if self.disagreement_edges and not self.disagreement_fwhm_mm >= 0:
            raise ValueError(f"voxel classes: disagreement_fwhm_mm must be >= 0, got {self.disagreement_fwhm_mm}")

    @property
    def needs_reference(self) -> bool:
        """Whether :func:`voxel_classes` needs a ``reference`` reconstruction (the disagreement axis)."""
        return bool(self.disagreement_edges)

    @property
    def _extra_bins(self) -> tuple[int, int]:
        """Bins of the optional (contrast, disagreement) axes, the fastest-varying indices."""
        return len(self.contrast_edges) + 1, len(self.disagreement_edges) + 1

    @property
    def num_classes(self) -> int:
        """Classes inside the body (class ``num_classes`` is outside the body)."""
        n = (len(self.activity_edges) + 1) * (len(self.gradient_edges) + 1) * (len(self.distance_edges_mm) + 1)
        return n * math.prod(self._extra_bins)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> VoxelClassSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def bins(self, c: int) -> tuple[int, int, int]:
        """The (activity, edge, distance) bins of body class ``c`` (``0 <= c < num_classes``)."""
        if not 0 <= c < self.num_classes:
            raise ValueError(f"class {c} is not a body class (0 .. {self.num_classes - 1})")
        nd, ng = len(self.distance_edges_mm) + 1, len(self.gradient_edges) + 1
        a, rest = divmod(c // math.prod(self._extra_bins), ng * nd)
        g, d = divmod(rest, nd)
        return a, g, d

    def contrast_bin(self, c: int) -> int:
        """The local-contrast bin of body class ``c`` (always 0 without ``contrast_edges``)."""
        self.bins(c)  # range check
        nc, nq = self._extra_bins
        return (c // nq) % nc

    def disagreement_bin(self, c: int) -> int:
        """The disagreement bin of body class ``c`` (always 0 without ``disagreement_edges``)."""
        self.bins(c)  # range check
        return c % self._extra_bins[1]

    def describe(self, c: int) -> str:
        """Human-readable name of class ``c``."""
        if c == self.num_classes:
            return "outside body"
        a, g, d = self.bins(c)
        text = f"activity bin {a}, edge bin {g}, distance bin {d}"
        text += f", contrast bin {self.contrast_bin(c)}" if self.contrast_edges else ""
        return text + (f", disagreement bin {self.disagreement_bin(c)}" if self.disagreement_edges else "")


def _smooth(image: torch.Tensor, fwhm_mm: float, voxel_size_mm) -> torch.Tensor:
    from petuq_sirf.operators.psf import GaussianPSF  # count preserving, reflective boundaries

    return GaussianPSF(fwhm_mm, voxel_size_mm).forward(image) if fwhm_mm > 0 else image


def _edge_strength(x: torch.Tensor) -> torch.Tensor:
    """Largest absolute difference to an in-plane (and axial, for several slices) neighbour, ``(..., z, y, x)``."""
    out = torch.zeros_like(x)
    dims = [-1, -2] + ([-3] if x.shape[-3] > 1 else [])
    for dim in dims:
        d = torch.diff(x, dim=dim).abs()
        pad = [0] * (2 * (-dim))
        lo, hi = list(pad), list(pad)
        lo[2 * (-dim) - 2] = 1  # pad before along dim
        hi[2 * (-dim) - 1] = 1  # pad after along dim
        out = torch.maximum(out, F.pad(d, lo))
        out = torch.maximum(out, F.pad(d, hi))
    return out


def _distance_to_outline_mm(body: torch.Tensor, voxel_mm: float, max_mm: float) -> torch.Tensor:
    """In-plane chessboard distance (mm) from each body voxel to the outside, capped at ``max_mm``."""
    b = body.reshape(-1, 1, *body.shape[-2:]).float()
    dist = torch.zeros_like(b)
    inside = b
    steps = max(1, int(math.ceil(max_mm / voxel_mm)) + 1)
    for _ in range(steps):
        dist = dist + inside
        inside = -F.max_pool2d(-inside, 3, stride=1, padding=1)  # erosion
    return (dist * voxel_mm).reshape(body.shape)


def voxel_classes(
    image: torch.Tensor,
    voxel_size_mm: tuple[float, float, float],
    spec: VoxelClassSpec | None = None,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class index per voxel (``int64``, shape of ``image`` ``(..., z, y, x)``) from a reconstruction.

    ``0 .. spec.num_classes - 1`` inside the body, ``spec.num_classes`` outside. Leading dimensions
    (e.g. realisations) are treated as separate images. ``reference`` (same shape, same units): a less
    regularised reconstruction of the same data, needed by (and only used for) the disagreement axis.
    """
    spec = spec or VoxelClassSpec()
    x = torch.as_tensor(image).double()
    if x.dim() < 3:
        raise ValueError(f"image must have shape (..., z, y, x), got {tuple(x.shape)}")
    flat = x.reshape(-1, *x.shape[-3:])
    if spec.needs_reference:
        if reference is None:
            raise ValueError("these voxel classes have a disagreement axis: give the reference reconstruction")
        r = torch.as_tensor(reference).double()
        if tuple(r.shape) != tuple(x.shape):
            raise ValueError(f"reference has shape {tuple(r.shape)}, the image {tuple(x.shape)}")
        refs = r.reshape(flat.shape)
    out = torch.empty(flat.shape, dtype=torch.long)
    for i, img in enumerate(flat):
        sm = _smooth(img, spec.smooth_fwhm_mm, voxel_size_mm)
        top = float(torch.quantile(sm.reshape(-1), 0.99))
        body = sm > spec.outline_fraction * max(top, 1e-12)
        if not bool(body.any()):
            out[i] = spec.num_classes
            continue
        ref = float(sm[body].median()) or 1e-12
        rel = sm / ref
        grad = _edge_strength(sm) / ref
        vy = float(voxel_size_mm[1])
        dmax = (max(spec.distance_edges_mm) if spec.distance_edges_mm else 0.0) + vy
        dist = _distance_to_outline_mm(body, vy, dmax)
        a = torch.bucketize(rel, torch.tensor(spec.activity_edges, dtype=rel.dtype))
        g = torch.bucketize(grad, torch.tensor(spec.gradient_edges, dtype=grad.dtype))
        d = torch.bucketize(dist, torch.tensor(spec.distance_edges_mm, dtype=dist.dtype))
        ng, nd = len(spec.gradient_edges) + 1, len(spec.distance_edges_mm) + 1
        cls = (a * ng + g) * nd + d
        if spec.contrast_edges:  # value over its body-normalised wider neighbourhood (no outline fall-off)
            bf = body.to(sm.dtype)
            wide = _smooth(sm * bf, spec.contrast_fwhm_mm, voxel_size_mm)
            norm = _smooth(bf, spec.contrast_fwhm_mm, voxel_size_mm).clamp_min(1e-6)
            contrast = sm / (wide / norm).clamp_min(1e-12 * ref)
            k = torch.bucketize(contrast, torch.tensor(spec.contrast_edges, dtype=contrast.dtype))
            cls = cls * (len(spec.contrast_edges) + 1) + k
        if spec.disagreement_edges:  # smoothed (reference - image), relative to the body median
            dis = _smooth(refs[i] - img, spec.disagreement_fwhm_mm, voxel_size_mm) / ref
            q = torch.bucketize(dis, torch.tensor(spec.disagreement_edges, dtype=dis.dtype))
            cls = cls * (len(spec.disagreement_edges) + 1) + q
        out[i] = torch.where(body, cls, torch.full_like(cls, spec.num_classes))
    return out.reshape(x.shape)


# ------------------------------------------------------------------------------------------- calibrator
def _base_interval(
    level: float, samples: torch.Tensor | None, mean: torch.Tensor | None, std: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if samples is not None:
        q = torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=samples.dtype, device=samples.device)
        lo, hi = torch.quantile(samples, q, dim=0)
        return lo.double(), hi.double()
    if mean is None or std is None:
        raise ValueError("give samples or both mean and std")
    z = gaussian_quantile(level)
    return (mean - z * std).double(), (mean + z * std).double()


def _centre_scale(
    samples: torch.Tensor | None, mean: torch.Tensor | None, std: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if samples is not None:
        return samples.mean(0).double(), samples.std(0).double()
    if mean is None or std is None:
        raise ValueError("give samples or both mean and std")
    return mean.double(), std.double()


@dataclass
class MondrianConformal:
    """Per-class conformal quantiles ``q[level][class]`` (see the module docstring for the guarantee).

    Fit with :meth:`fit` on calibration data (truth known), apply with :meth:`interval` on new data. The
    predictions are either ``samples (S, ..., z, y, x)`` or ``mean, std (..., z, y, x)``; ``classes``
    have the prediction's shape without the sample dimension (from :func:`voxel_classes`).
    """

    score: str = "normalised"
    levels: tuple[float, ...] = DEFAULT_LEVELS
    min_class_size: int = 50
    min_std: float = 1e-6
    quantiles: dict[float, dict[int, float]] = field(default_factory=dict)
    global_quantiles: dict[float, float] = field(default_factory=dict)
    class_counts: dict[int, int] = field(default_factory=dict)
    spec: VoxelClassSpec = field(default_factory=VoxelClassSpec)

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown conformal score {self.score!r}; choose one of {', '.join(SCORES)}")
        self.levels = tuple(float(v) for v in self.levels)
        if not self.levels or any(not 0 < v < 1 for v in self.levels):
            raise ValueError(f"levels must be in (0, 1), got {self.levels}")

    def _scores(self, truth, level, samples, mean, std) -> torch.Tensor:
        like = samples[0] if samples is not None else mean
        t = torch.as_tensor(truth).to(like.device).double().expand(like.shape)
        if self.score == "normalised":
            centre, scale = _centre_scale(samples, mean, std)
            return (t - centre).abs() / scale.clamp_min(self.min_std)
        lo, hi = _base_interval(level, samples, mean, std)
        return torch.maximum(lo - t, t - hi)

    def fit(
        self,
        truth: torch.Tensor,
        classes: torch.Tensor,
        *,
        samples: torch.Tensor | None = None,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> MondrianConformal:
        """Fit the per-class quantiles on calibration voxels (``mask``: the voxels to use, broadcast)."""
        like = samples[0] if samples is not None else mean
        if like is None:
            raise ValueError("give samples or both mean and std")
        if tuple(classes.shape) != tuple(like.shape):
            raise ValueError(f"classes shape {tuple(classes.shape)} != prediction shape {tuple(like.shape)}")
        keep = (
            torch.ones(like.shape, dtype=torch.bool)
            if mask is None
            else torch.as_tensor(mask).bool().expand(like.shape)
        )
        cls = classes[keep]
        self.class_counts = {int(c): int((cls == c).sum()) for c in torch.unique(cls)}
        self.quantiles, self.global_quantiles = {}, {}
        for level in self.levels:
            s = self._scores(truth, level, samples, mean, std)[keep.to(like.device)].cpu()
            self.global_quantiles[level] = conformal_quantile(s, level)
            self.quantiles[level] = {
                c: conformal_quantile(s[cls == c], level)
                for c, n in self.class_counts.items()
                if n >= self.min_class_size
            }
        return self

    def _q_map(self, classes: torch.Tensor, level: float) -> torch.Tensor:
        level = self._level(level)
        q = torch.full(classes.shape, self.global_quantiles[level], dtype=torch.float64)
        for c, value in self.quantiles[level].items():
            q[classes == c] = value
        return q

    def _level(self, level: float) -> float:
        for v in self.levels:
            if abs(v - level) < 1e-9:
                if v not in self.global_quantiles:
                    raise ValueError("MondrianConformal is not fitted")
                return v
        raise ValueError(f"no conformal quantiles for level {level}; have {self.levels}")

    def interval(
        self,
        classes: torch.Tensor,
        level: float,
        *,
        samples: torch.Tensor | None = None,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The calibrated interval ``(lower, upper)`` at ``level`` (float64, shape of ``classes``)."""
        q = self._q_map(classes.cpu(), level)
        if self.score == "normalised":
            centre, scale = _centre_scale(samples, mean, std)
            q = q.to(centre.device)
            half = q * scale.clamp_min(self.min_std)
            return centre - half, centre + half
        lo, hi = _base_interval(self._level(level), samples, mean, std)
        q = q.to(lo.device)
        return lo - q, hi + q

    def coverage(
        self,
        truth: torch.Tensor,
        classes: torch.Tensor,
        *,
        samples: torch.Tensor | None = None,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        levels: Iterable[float] | None = None,
    ) -> dict[float, float]:
        """Observed coverage of ``truth`` over ``mask`` (broadcast) per level."""
        out = {}
        for level in levels or self.levels:
            lo, hi = self.interval(classes, level, samples=samples, mean=mean, std=std)
            t = torch.as_tensor(truth).to(lo).expand(lo.shape)
            inside = (t >= lo) & (t <= hi)
            m = (
                torch.ones_like(inside)
                if mask is None
                else torch.as_tensor(mask).bool().to(inside.device).expand(inside.shape)
            )
            out[float(level)] = float(inside[m].double().mean())
        return out

    def width(self, classes, level, *, samples=None, mean=None, std=None, mask=None) -> float:
        """Mean interval width over ``mask`` at ``level`` (image units)."""
        lo, hi = self.interval(classes, level, samples=samples, mean=mean, std=std)
        m = (
            torch.ones_like(lo, dtype=torch.bool)
            if mask is None
            else torch.as_tensor(mask).bool().to(lo.device).expand(lo.shape)
        )
        return float((hi - lo)[m].mean())

    def to_dict(self) -> dict:
        """JSON-ready (e.g. for a weights file's metadata)."""
        return {
            "score": self.score,
            "levels": list(self.levels),
            "min_class_size": self.min_class_size,
            "quantiles": {f"{lv:.2f}": {str(c): v for c, v in qs.items()} for lv, qs in self.quantiles.items()},
            "global_quantiles": {f"{lv:.2f}": v for lv, v in self.global_quantiles.items()},
            "class_counts": {str(c): n for c, n in self.class_counts.items()},
            "spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> MondrianConformal:
        out = cls(score=d["score"], levels=tuple(d["levels"]), min_class_size=int(d["min_class_size"]))
        out.spec = VoxelClassSpec.from_dict(d["spec"])
        out.global_quantiles = {float(k): float(v) for k, v in d["global_quantiles"].items()}
        out.quantiles = {float(k): {int(c): float(q) for c, q in qs.items()} for k, qs in d["quantiles"].items()}
        out.class_counts = {int(c): int(n) for c, n in d["class_counts"].items()}
        return out


def global_conformal(score: str = "normalised", levels: Iterable[float] = DEFAULT_LEVELS) -> MondrianConformal:
    """Ordinary split conformal (one class): a Mondrian calibrator whose classes are all 0."""
    return MondrianConformal(score=score, levels=tuple(levels), min_class_size=10**18)
