"""On-the-fly 3D Joseph projection that separates the transaxial and axial interpolation.

All sinograms share the transaxial geometry of a LOR (view, tangential bin); only the axial end
points differ. So for a block of transaxial LORs we first interpolate the image in-plane at every
plane crossing, for all slices at once (``columns``, shape ``(lors, planes, z)``), then interpolate
each sinogram's LOR along z in those columns. The weights are exactly the bilinear Joseph weights
of :func:`~petuq_sirf.operators.projector.joseph_coefficients`, so the result equals the generic
path and the back projection (the same steps reversed with scatter-adds) is its exact adjoint.
"""

from __future__ import annotations

import torch

from petuq_sirf.operators.kernels.plan import steps_along_x
from petuq_sirf.scanner.image_geometry import ImageGeometry

_BLOCK_ELEMENTS = 1 << 22


class SeparableJoseph:
    """Projector kernels for images ``(z, y, x)`` with ``z > 1`` and data ``(sinograms, transaxial LORs)``.

    Args:
        p_a_xy, p_b_xy: transaxial end points in mm, shape ``(Q, 2)`` (x, y).
        z_a, z_b: axial end points of each sinogram in mm, shape ``(S,)``.
        image: the image grid.
    """

    def __init__(
        self,
        p_a_xy: torch.Tensor,
        p_b_xy: torch.Tensor,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        image: ImageGeometry,
    ) -> None:
        self.image = image
        self.p_a, self.p_b = p_a_xy, p_b_xy
        self.z_a, self.dz = z_a, z_b - z_a
        d = p_b_xy - p_a_xy
        x_dominant = steps_along_x(d[:, 0], d[:, 1])
        self.groups = [(torch.nonzero(x_dominant).squeeze(1), 2), (torch.nonzero(~x_dominant).squeeze(1), 1)]

    def _transaxial(self, q: torch.Tensor, plane_axis: int):
        """In-plane coefficients of LORs ``q``: rows and weights of the 2 neighbours, t, step terms."""
        image = self.image
        _, ny, nx = image.shape
        col = {2: 0, 1: 1}
        other = 1 if plane_axis == 2 else 2
        pa, pb = self.p_a[q], self.p_b[q]
        d = pb - pa
        dp = d[:, col[plane_axis]]
        planes = image.centres_mm(plane_axis, dtype=pa.dtype).to(pa.device)
        t = (planes[None, :] - pa[:, col[plane_axis], None]) / dp[:, None]
        inside = ((t >= 0) & (t <= 1)).to(pa.dtype)
        pos = pa[:, col[other], None] + t * d[:, col[other], None]
        f = (pos - image.first_voxel_mm(other)) / image.voxel_size_mm[other]
        o0 = torch.floor(f)
        fo = f - o0
        o0 = o0.long()
        n_other = image.shape[other]
        plane_index = torch.arange(image.shape[plane_axis], device=pa.device)[None, :]
        rows, weights = [], []
        for oi, w in ((o0, 1 - fo), (o0 + 1, fo)):
            valid = (oi >= 0) & (oi < n_other)
            oc = oi.clamp(0, n_other - 1)
            rows.append(oc * nx + plane_index if plane_axis == 2 else plane_index * nx + oc)
            weights.append(torch.where(valid, w * inside, torch.zeros_like(w)))
        len_xy = torch.linalg.norm(d, dim=1)
        return rows, weights, t, len_xy, dp.abs()

    def _axial(self, s: torch.Tensor, t: torch.Tensor, len_xy: torch.Tensor, dp: torch.Tensor, plane_axis: int):
        """Axial indices/weights ``(s, q, P)`` and the step length ``(s, q)`` of sinograms ``s``."""
        image = self.image
        nz = image.shape[0]
        z = self.z_a[s, None, None] + t[None] * self.dz[s, None, None]
        fz = (z - image.first_voxel_mm(0)) / image.voxel_size_mm[0]
        z0 = torch.floor(fz)
        wz = fz - z0
        z0 = z0.long()
        parts = []
        for zi, w in ((z0, 1 - wz), (z0 + 1, wz)):
            valid = (zi >= 0) & (zi < nz)
            parts.append((zi.clamp(0, nz - 1), torch.where(valid, w, torch.zeros_like(w))))
        step = image.voxel_size_mm[plane_axis] * torch.sqrt(len_xy[None] ** 2 + self.dz[s, None] ** 2) / dp[None]
        return parts, step

    def _blocks(self, plane_axis: int, n_q: int):
        planes = self.image.shape[plane_axis]
        nz = self.image.shape[0]
        q_block = max(1, _BLOCK_ELEMENTS // (planes * nz))
        s_block = max(1, _BLOCK_ELEMENTS // (planes * q_block))
        return q_block, s_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project one image ``(z, y, x)`` to ``(S, Q)``."""
        nz, ny, nx = self.image.shape
        img_t = x.reshape(nz, ny * nx).T.contiguous()  # (y*x, z)
        S = len(self.z_a)
        out = torch.zeros(S, len(self.p_a), dtype=x.dtype, device=x.device)
        all_s = torch.arange(S, device=x.device)
        for q_all, axis in self.groups:
            q_block, s_block = self._blocks(axis, len(q_all))
            for qs in range(0, len(q_all), q_block):
                q = q_all[qs : qs + q_block]
                rows, weights, t, len_xy, dp = self._transaxial(q, axis)
                columns = img_t[rows[0]] * weights[0][..., None] + img_t[rows[1]] * weights[1][..., None]
                for ss in range(0, S, s_block):
                    s = all_s[ss : ss + s_block]
                    parts, step = self._axial(s, t, len_xy, dp, axis)
                    cols = columns.unsqueeze(0).expand(len(s), *columns.shape)
                    acc = sum(torch.gather(cols, 3, zi.unsqueeze(-1)).squeeze(-1) * w for zi, w in parts)
                    out[ss : ss + len(s), q] = acc.sum(-1) * step
        return out

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Back project ``(S, Q)`` to one image ``(z, y, x)``."""
        nz, ny, nx = self.image.shape
        img_t = torch.zeros(ny * nx, nz, dtype=y.dtype, device=y.device)
        S = y.shape[0]
        all_s = torch.arange(S, device=y.device)
        for q_all, axis in self.groups:
            q_block, s_block = self._blocks(axis, len(q_all))
            planes = self.image.shape[axis]
            for qs in range(0, len(q_all), q_block):
                q = q_all[qs : qs + q_block]
                rows, weights, t, len_xy, dp = self._transaxial(q, axis)
                columns = torch.zeros(len(q) * planes * nz, dtype=y.dtype, device=y.device)
                base = torch.arange(len(q), device=y.device)[:, None] * planes + torch.arange(planes, device=y.device)
                for ss in range(0, S, s_block):
                    s = all_s[ss : ss + s_block]
                    parts, step = self._axial(s, t, len_xy, dp, axis)
                    scaled = (y[ss : ss + len(s), q] * step)[..., None]
                    for zi, w in parts:
                        columns.index_add_(0, (base[None] * nz + zi).reshape(-1), (scaled * w).reshape(-1))
                columns = columns.reshape(len(q), planes, nz)
                for r, w in zip(rows, weights, strict=True):
                    img_t.index_add_(0, r.reshape(-1), (columns * w[..., None]).reshape(-1, nz))
        return img_t.T.reshape(nz, ny, nx)
