"""Where real STIR's ray tracer and the embedded projector agree: forward and back projection on ``test-3d``.

The geometry of the adapter tests (``tests/backends``): ``test-3d`` with 4 rings, span 3, maximum ring
difference 2, views mashed by 2; images of 7 x 39 x 39 (odd) and 7 x 40 x 40 (even) voxels of
2 x 4 x 4 mm. Prints, per STIR setting (rays per bin, cylindrical-FOV restriction), the NRMSE and
ratio of totals of STIR's forward projection of a smooth image and of its back projection of a
sinogram with terms, against the embedded projector with ``axial_model="line"`` (its default) and
``"tube"`` (STIR's axial model), and with ``"siddon_tube"`` (the tube with exact intersection lengths and the
same rays per bin: STIR's model), and the back projection's ratio per slice and per radius band.
Needs STIR's Python module (``source /work/sirfstir/prefix/env.sh``, see docs/sirf_stir.md)::

    PYTHONPATH=$PWD:$PYTHONPATH python benchmarks/stir_projector_agreement.py
"""

from __future__ import annotations

import json

import numpy as np
import torch

from petuq_sirf.backends.registry import backend_available, make_acquisition_model
from petuq_sirf.operators.axial_tube import AxialTubeProjector
from petuq_sirf.operators.projector import RayTracingProjector
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner


def smooth(image: ImageGeometry, seed: int) -> torch.Tensor:
    """Five Gaussian blobs within 45 mm of the axis (the adapter tests' image)."""
    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = image.meshgrid_mm(torch.float32)
    axial = image.shape[0] * image.voxel_size_mm[0]
    x = torch.zeros(image.shape)
    for _ in range(5):
        c = (torch.rand(3, generator=g) - 0.5) * torch.tensor([0.5 * axial, 60.0, 60.0])
        w = 8.0 + 10.0 * float(torch.rand(1, generator=g))
        a = float(torch.rand(1, generator=g) + 0.2)
        x += a * torch.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * w**2))
    return x


def nrmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(f"{float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double())):.3g}")


def main() -> None:
    torch.set_num_threads(1)
    if not backend_available("stir"):
        print(json.dumps({"stir": "skipped (does not import here)"}))
        return
    scanner = get_scanner("test-3d").with_(name="test-3d-small", num_rings=4)
    layout = SinogramLayout(scanner, span=3, max_ring_difference=2, view_mashing=2)
    cases = [((7, 39, 39), 2, False), ((7, 39, 39), 1, False), ((7, 40, 40), 2, False), ((7, 39, 39), 2, True)]
    for shape, rays, restrict in cases:
        image = ImageGeometry(shape, (2.0, 4.0, 4.0))
        stir = make_acquisition_model(
            "stir", layout, image, num_tangential_lors=rays, restrict_to_cylindrical_fov=restrict
        )
        x = smooth(image, 1)
        g = torch.Generator().manual_seed(0)
        line = RayTracingProjector(layout, image)
        y = line.forward(x) * (0.5 + torch.rand(layout.shape, generator=g)) + torch.rand(layout.shape, generator=g)
        fs, bs = stir.forward(x), stir.adjoint(y)
        _, yy, xx = image.meshgrid_mm(torch.float32)
        r = torch.sqrt(yy**2 + xx**2)
        edges = np.linspace(0.0, float(r.max()) + 1e-3, 6)
        out = {"image": list(shape), "rays_per_bin": rays, "restrict_to_cylindrical_fov": restrict}
        siddon_tube = AxialTubeProjector(layout, image, ray_model="siddon", rays_per_bin=rays)
        for name, proj in (("line", line), ("tube", AxialTubeProjector(layout, image)), ("siddon_tube", siddon_tube)):
            fe, be = proj.forward(x), proj.adjoint(y)
            out[name] = {
                "forward_nrmse": nrmse(fs, fe),
                "forward_total_ratio": round(float(fs.sum() / fe.sum()), 4),
                "back_nrmse": nrmse(bs, be),
                "back_total_ratio": round(float(bs.sum() / be.sum()), 4),
                "back_ratio_per_slice": [round(float(bs[z].sum() / be[z].sum()), 3) for z in range(shape[0])],
                "back_ratio_per_radius_band": [
                    round(float(bs[(r >= a) & (r < b)].sum() / be[(r >= a) & (r < b)].sum()), 3)
                    for a, b in zip(edges[:-1], edges[1:])
                ],
            }
        print(json.dumps(out))


if __name__ == "__main__":
    main()
