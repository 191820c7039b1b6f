"""Training data for denoisers: (noisy OSEM reconstruction, ground truth) pairs from random phantoms.

Each random-ellipses phantom is simulated with the embedded scanner model (one projector reused for
all), then Poisson realisations at several dose levels (fractions of ``standard_counts`` expected
true counts) are reconstructed with OSEM. 2D slices: a 3D image contributes its ``z`` slices.
Deterministic for a seed; cached as ``.npz`` keyed by the configuration.

Arrays: ``noisy``, ``target`` and ``mask`` have shape ``(N, y, x)``; ``dose`` ``(N,)`` the dose
fraction; ``phantom`` ``(N,)`` the phantom index (split train/validation by phantom, never by slice).
Images are in reconstruction units: they scale with the dose. Denoisers normalise each input image by
its mean (see :func:`slice_mean_scale`), so one network serves all dose levels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from petuq_sirf.backends.embedded import EmbeddedAcquisitionModel
from petuq_sirf.io.image_io import read_npz, write_npz
from petuq_sirf.recon.em import osem
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.phantoms import Phantom, random_ellipses_phantom
from petuq_sirf.simulation.simulate import SimulationConfig, simulate

CACHE_VERSION = 1


@dataclass(frozen=True)
class DenoisingDataConfig:
    """What to simulate.

    Attributes:
        scanner: named scanner (``test-2d`` default: 64 x 64 images of 3.8 mm voxels).
        num_phantoms: number of random-ellipses phantoms.
        dose_fractions: count levels as fractions of ``standard_counts`` (low dose: 0.01-0.1).
        standard_counts: expected true counts of a full-dose acquisition.
        realisations: noise realisations per phantom and dose level.
        osem_iterations, osem_subsets: reconstruction of each realisation.
        psf_fwhm_mm: resolution of the simulation and the reconstruction model.
        seed: seed of phantoms and noise.
    """

    scanner: str = "test-2d"
    num_phantoms: int = 32
    dose_fractions: tuple[float, ...] = (0.02, 0.05, 0.1)
    standard_counts: float = 1e6
    realisations: int = 1
    osem_iterations: int = 4
    osem_subsets: int = 8
    psf_fwhm_mm: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_phantoms < 1:
            raise ValueError(f"num_phantoms must be >= 1, got {self.num_phantoms}")
        if not self.dose_fractions or any(not 0 < f for f in self.dose_fractions):
            raise ValueError(f"dose_fractions must be positive numbers, got {self.dose_fractions}")
        if self.realisations < 1:
            raise ValueError(f"realisations must be >= 1, got {self.realisations}")

    def key(self) -> str:
        text = json.dumps({"v": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class DenoisingDataset:
    """Pairs of 2D images, tensors ``(N, y, x)`` (float32), see the module docstring."""

    noisy: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    dose: torch.Tensor
    phantom: torch.Tensor
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.noisy.shape != self.target.shape or self.noisy.dim() != 3:
            raise ValueError(
                f"noisy {tuple(self.noisy.shape)} and target {tuple(self.target.shape)} must both be (N, y, x)"
            )

    def __len__(self) -> int:
        return self.noisy.shape[0]

    @classmethod
    def from_slices(
        cls,
        noisy: list[torch.Tensor],
        target: list[torch.Tensor],
        mask: list[torch.Tensor],
        dose: list[float],
        phantom: list[int],
        voxel_size_mm: tuple[float, ...],
        meta: dict,
    ) -> DenoisingDataset:
        """Stack per-slice ``(y, x)`` images and their dose fraction / phantom index into a dataset."""
        return cls(
            torch.stack(noisy).float(),
            torch.stack(target).float(),
            torch.stack(mask).bool(),
            torch.tensor(dose, dtype=torch.float32),
            torch.tensor(phantom, dtype=torch.long),
            tuple(voxel_size_mm),
            meta,
        )

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> DenoisingDataset:
        idx = torch.as_tensor(index, dtype=torch.long)
        return DenoisingDataset(
            self.noisy[idx],
            self.target[idx],
            self.mask[idx],
            self.dose[idx],
            self.phantom[idx],
            self.voxel_size_mm,
            dict(self.meta),
        )

    def split_by_phantom(self, fraction: float, seed: int = 0) -> tuple[DenoisingDataset, DenoisingDataset]:
        """Two disjoint sets of phantoms: ``(1 - fraction)`` and ``fraction`` of them."""
        phantoms = torch.unique(self.phantom).numpy()
        rng = np.random.default_rng(seed)
        rng.shuffle(phantoms)
        n_second = max(1, int(round(fraction * len(phantoms))))
        if n_second >= len(phantoms):
            raise ValueError(f"cannot split {len(phantoms)} phantom(s) with fraction {fraction}")
        second = torch.as_tensor(np.isin(self.phantom.numpy(), phantoms[:n_second]))
        return self.subset(torch.nonzero(~second).flatten()), self.subset(torch.nonzero(second).flatten())

    def select_dose(self, fraction: float) -> DenoisingDataset:
        keep = torch.isclose(self.dose, torch.tensor(float(fraction)))
        if not keep.any():
            raise ValueError(f"no images at dose fraction {fraction}; have {sorted(set(self.dose.tolist()))}")
        return self.subset(torch.nonzero(keep).flatten())

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "noisy": self.noisy.numpy(),
            "target": self.target.numpy(),
            "mask": self.mask.numpy(),
            "dose": self.dose.numpy(),
            "phantom": self.phantom.numpy(),
        }


def slice_mean_scale(noisy: torch.Tensor) -> torch.Tensor:
    """Per-image normalisation ``mean over (y, x)`` of ``noisy (..., y, x)``, shape ``(..., 1, 1)``."""
    return noisy.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-6)


def geometry_for(scanner: str) -> tuple[SinogramLayout, ImageGeometry]:
    layout = SinogramLayout(get_scanner(scanner))
    return layout, ImageGeometry.for_layout(layout)


def generate_pairs(config: DenoisingDataConfig, progress: bool = False) -> DenoisingDataset:
    """Simulate and reconstruct all pairs (no cache). About 0.05 s per pair on test-2d."""
    layout, image = geometry_for(config.scanner)
    geometric = EmbeddedAcquisitionModel(layout, image, psf_fwhm_mm=config.psf_fwhm_mm)
    rng = np.random.default_rng(config.seed)
    noisy, target, mask, dose, index = [], [], [], [], []
    for p in tqdm(range(config.num_phantoms), desc="simulating pairs", disable=not progress or None):
        phantom = random_ellipses_phantom(image, rng)
        body = phantom.regions["background"] | (phantom.activity > 0)
        for fraction in config.dose_fractions:
            for _ in range(config.realisations):
                seed = int(rng.integers(2**31 - 1))
                cfg = SimulationConfig(
                    true_counts=fraction * config.standard_counts, psf_fwhm_mm=config.psf_fwhm_mm, seed=seed
                )
                sim = simulate(phantom, layout, cfg, model=geometric)
                model = geometric.with_terms(multiplicative=sim.multiplicative, additive=sim.additive)
                rec = osem(model, sim.prompts, config.osem_iterations, config.osem_subsets).image.cpu()
                for z in range(image.shape[0]):
                    noisy.append(rec[z])
                    target.append(sim.truth[z])
                    mask.append(body[z])
                    dose.append(fraction)
                    index.append(p)
    return DenoisingDataset.from_slices(
        noisy, target, mask, dose, index, image.voxel_size_mm, {"config": asdict(config)}
    )


def noisy_realisations(
    phantom: Phantom, config: DenoisingDataConfig, dose_fraction: float, num: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` independent noisy OSEM reconstructions of one phantom, reconstructed like the training data.

    Returns ``noisy (num, z, y, x)`` and the ``truth (z, y, x)`` in the same (dose-dependent) units.
    """
    if num < 1:
        raise ValueError(f"number of realisations must be >= 1, got {num}")
    layout, image = geometry_for(config.scanner)
    if tuple(phantom.image.shape) != tuple(image.shape):
        raise ValueError(f"phantom shape {phantom.image.shape} does not match the {config.scanner} image {image.shape}")
    geometric = EmbeddedAcquisitionModel(layout, image, psf_fwhm_mm=config.psf_fwhm_mm)
    rng = np.random.default_rng(seed)
    noisy, truth = [], None
    for _ in range(num):
        cfg = SimulationConfig(
            true_counts=dose_fraction * config.standard_counts,
            psf_fwhm_mm=config.psf_fwhm_mm,
            seed=int(rng.integers(2**31 - 1)),
        )
        sim = simulate(phantom, layout, cfg, model=geometric)
        model = geometric.with_terms(multiplicative=sim.multiplicative, additive=sim.additive)
        noisy.append(osem(model, sim.prompts, config.osem_iterations, config.osem_subsets).image.cpu())
        truth = sim.truth
    return torch.stack(noisy), truth


def load_or_generate(
    config: DenoisingDataConfig, cache_dir: str | Path | None = None, progress: bool = False
) -> DenoisingDataset:
    """:func:`generate_pairs` with an ``.npz`` cache in ``cache_dir`` (none: always generate)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"denoising_{config.scanner.replace(' ', '_')}_{config.key()}.npz"
        if path.is_file():
            arrays, meta = read_npz(path)
            if meta.get("key") == config.key():
                return DenoisingDataset(
                    torch.from_numpy(arrays["noisy"]),
                    torch.from_numpy(arrays["target"]),
                    torch.from_numpy(arrays["mask"]).bool(),
                    torch.from_numpy(arrays["dose"]),
                    torch.from_numpy(arrays["phantom"]).long(),
                    tuple(meta["voxel_size_mm"]),
                    {"config": meta["config"]},
                )
    data = generate_pairs(config, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"key": config.key(), "config": asdict(config), "voxel_size_mm": list(data.voxel_size_mm)}
        write_npz(path, data.to_arrays(), meta)
    return data
