"""PETSIRD list-mode (the PET standardisation initiative's vendor-neutral raw data) via the ``petsird`` package.

Reading maps every coincidence of a PETSIRD file onto a cylindrical :class:`SinogramLayout`:

1. the centre of every detecting element is computed from the scanner geometry (module
   transform x element transform x box centre), one per ``(module, element)``;
2. each element is assigned to our ``(ring, detector)`` by its axial position and angle
   (detector ``d`` sits at angle ``d * 2 pi / N + tilt``, ring ``r`` at
   ``(r - (R - 1) / 2) * ring spacing``); elements further than a quarter crystal from
   their assigned slot raise a ``ValueError`` (the geometries do not match);
3. each crystal pair goes to its sinogram bin through lookup tables built from
   :meth:`SinogramLayout.transaxial_crystal_pairs` and :meth:`SinogramLayout.ring_pairs`
   (pairs the layout does not keep, e.g. beyond the maximum ring difference, are dropped).

Event times are the start of their time block (ms). TOF and energy indices are ignored
(non-TOF binning over all energy windows). Only one module type is supported.

:func:`write_petsird` writes a PETSIRD file for a cylindrical scanner (one module per
detector column, one element per ring), which the tests use for round trips.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petuq_sirf.io.listmode import ListModeEvents
from petuq_sirf.scanner.geometry import ScannerGeometry
from petuq_sirf.scanner.layout import SinogramLayout


def _petsird():
    try:
        import petsird
    except ImportError as exc:  # an optional extra
        raise ImportError(
            "PETSIRD files need the 'petsird' package (>= 0.10): pip install 'petuq_sirf[petsird]'"
        ) from exc
    return petsird


def _mat44(transform) -> np.ndarray:
    return np.vstack([np.asarray(transform.matrix, dtype=np.float64), [0.0, 0.0, 0.0, 1.0]])


def crystal_centres(header) -> tuple[np.ndarray, int]:
    """Centres ``(x, y, z)`` in mm of every detecting element, shape ``(modules * elements, 3)``, and energy bins.

    Element ``i`` is ``module * elements_per_module + element``, as in PETSIRD's ``DetectionBin``.
    """
    geometry = header.scanner.scanner_geometry
    if len(geometry.replicated_modules) != 1:
        raise ValueError(
            f"PETSIRD scanners with {len(geometry.replicated_modules)} module types are not supported (only 1)"
        )
    rep = geometry.replicated_modules[0]
    det = rep.object.detecting_elements
    corners = np.array([np.asarray(c.c, dtype=np.float64) for c in det.object.shape.corners])
    centre = np.append(corners.mean(axis=0), 1.0)
    elements = np.stack([_mat44(t) @ centre for t in det.transforms])  # (E, 4)
    modules = np.stack([_mat44(t) for t in rep.transforms])  # (M, 4, 4)
    pos = np.einsum("mij,ej->mei", modules, elements)[..., :3].reshape(-1, 3)
    num_energy = max(1, len(header.scanner.event_energy_bin_edges[0].edges) - 1)
    return pos, num_energy


def scanner_from_petsird(header, name: str | None = None) -> ScannerGeometry:
    """A :class:`ScannerGeometry` inferred from a PETSIRD cylindrical scanner (rings, detectors, radius, spacing).

    The radius is that of the crystal centres (no separate depth of interaction), and the
    tilt is only identifiable modulo one crystal angle (it is reduced to ``[-d/2, d/2]``
    degrees, ``d = 360 / detectors``); pass the real :class:`SinogramLayout` to
    :func:`read_petsird` when sinograms must match a vendor's view numbering.
    """
    pos, _ = crystal_centres(header)
    z = np.unique(np.round(pos[:, 2], 3))
    rings = len(z)
    per_ring = len(pos) // rings
    if rings * per_ring != len(pos):
        raise ValueError("PETSIRD scanner is not a cylinder of equal rings")
    radius = float(np.median(np.hypot(pos[:, 0], pos[:, 1])))
    spacing = float(np.median(np.diff(z))) if rings > 1 else 4.0
    angles = np.sort(np.mod(np.arctan2(pos[:, 1], pos[:, 0]), 2 * np.pi)[np.isclose(pos[:, 2], pos[0, 2], atol=1e-3)])
    tilt = math.degrees(float(angles[0])) if len(angles) else 0.0
    if tilt > 180.0 / per_ring:
        tilt -= 360.0 / per_ring * round(tilt / (360.0 / per_ring))
    return ScannerGeometry(
        name=name or str(header.scanner.model_name or "petsird"),
        num_rings=rings,
        detectors_per_ring=per_ring,
        inner_radius_mm=radius,
        average_doi_mm=0.0,
        ring_spacing_mm=spacing,
        default_bin_size_mm=radius * 2 * math.pi / per_ring / 2,
        num_tangential_bins=per_ring // 2,
        intrinsic_tilt_deg=tilt,
    )


def crystal_slots(pos: np.ndarray, scanner: ScannerGeometry) -> tuple[np.ndarray, np.ndarray]:
    """``(ring, detector)`` of every crystal centre ``pos`` (mm); raises if a centre is off its slot."""
    dtheta = scanner.crystal_angle_rad
    angle = np.arctan2(pos[:, 1], pos[:, 0]) - math.radians(scanner.intrinsic_tilt_deg)
    f = angle / dtheta
    det = np.round(f).astype(np.int64)
    zf = pos[:, 2] / scanner.ring_spacing_mm + (scanner.num_rings - 1) / 2
    ring = np.round(zf).astype(np.int64)
    bad = (np.abs(f - det) > 0.25) | (np.abs(zf - ring) > 0.25) | (ring < 0) | (ring >= scanner.num_rings)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"PETSIRD crystal {i} at (x, y, z) = {np.round(pos[i], 2).tolist()} mm does not sit on a crystal of "
            f"{scanner.name} ({scanner.num_rings} rings x {scanner.detectors_per_ring} detectors): the geometries "
            "do not match"
        )
    return ring, np.mod(det, scanner.detectors_per_ring)


class CrystalPairBinner:
    """Flat bin of ``layout`` for crystal pairs ``(ring_1, det_1, ring_2, det_2)``; -1 where the layout drops the pair."""

    def __init__(self, layout: SinogramLayout) -> None:
        sc = layout.scanner
        N, R = sc.detectors_per_ring, sc.num_rings
        det_a, det_b = layout.transaxial_crystal_pairs()  # (mashing, views, tangential)
        _, V, T = layout.shape
        vt = (np.arange(V)[:, None] * T + np.arange(T)[None, :])[None].repeat(layout.view_mashing, 0)
        self.vt = np.full((N, N), -1, dtype=np.int64)
        self.swap = np.zeros((N, N), dtype=bool)
        self.vt[det_b.ravel(), det_a.ravel()] = vt.ravel()
        self.swap[det_b.ravel(), det_a.ravel()] = True
        self.vt[det_a.ravel(), det_b.ravel()] = vt.ravel()
        self.swap[det_a.ravel(), det_b.ravel()] = False
        sino, ra, rb = layout.ring_pairs()
        self.ring_sino = np.full((R, R), -1, dtype=np.int64)
        self.ring_sino[ra, rb] = sino
        self.VT = V * T

    def __call__(self, ring1, det1, ring2, det2) -> np.ndarray:
        vt = self.vt[det1, det2]
        swap = self.swap[det1, det2]
        sino = self.ring_sino[np.where(swap, ring2, ring1), np.where(swap, ring1, ring2)]
        return np.where((vt >= 0) & (sino >= 0), sino * self.VT + vt, -1)


@dataclass
class PetsirdInfo:
    """What a PETSIRD read saw: counts and the scanner used."""

    scanner: ScannerGeometry
    prompts: int = 0
    delayeds: int = 0
    dropped: int = 0
    time_blocks: int = 0


def _event_pairs(event_lists) -> np.ndarray:
    """``(n, 2)`` detection bins of a (lower-triangular) matrix of event lists (one module type: ``[0][0]``)."""
    if not event_lists:
        return np.zeros((0, 2), dtype=np.int64)
    events = event_lists[0][0] if event_lists and event_lists[0] else []
    if len(events) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return np.array([e.detection_bins for e in events], dtype=np.int64).reshape(-1, 2)


def read_petsird(
    path: str | os.PathLike,
    layout: SinogramLayout | None = None,
    info: PetsirdInfo | None = None,
) -> ListModeEvents:
    """Prompts and delayeds of a PETSIRD file as :class:`ListModeEvents` binned into ``layout``.

    ``layout`` defaults to span 1, all ring differences, on the scanner inferred from the
    file (:func:`scanner_from_petsird`). ``info`` (optional) receives counts.
    """
    petsird = _petsird()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PETSIRD file {path} does not exist")
    bins, times, prompt = [], [], []
    with petsird.BinaryPETSIRDReader(str(path)) as reader:
        header = reader.read_header()
        if layout is None:
            layout = SinogramLayout(scanner_from_petsird(header))
        pos, num_energy = crystal_centres(header)
        ring, det = crystal_slots(pos, layout.scanner)
        binner = CrystalPairBinner(layout)
        st = info if info is not None else PetsirdInfo(layout.scanner)
        st.scanner = layout.scanner
        for block in reader.read_time_blocks():
            if not isinstance(block, petsird.TimeBlock.EventTimeBlock):
                continue
            etb = block.value
            st.time_blocks += 1
            t0 = float(etb.time_interval.start)
            for events, is_prompt in ((etb.prompt_events, True), (etb.delayed_events, False)):
                pairs = _event_pairs(events)
                if not len(pairs):
                    continue
                crystal = pairs // num_energy
                b = binner(ring[crystal[:, 0]], det[crystal[:, 0]], ring[crystal[:, 1]], det[crystal[:, 1]])
                ok = b >= 0
                st.dropped += int((~ok).sum())
                if is_prompt:
                    st.prompts += int(ok.sum())
                else:
                    st.delayeds += int(ok.sum())
                bins.append(b[ok])
                times.append(np.full(int(ok.sum()), t0))
                prompt.append(np.full(int(ok.sum()), is_prompt))
    if not bins:
        return ListModeEvents(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool), layout.shape)
    b, t, p = np.concatenate(bins), np.concatenate(times), np.concatenate(prompt)
    order = np.argsort(t, kind="stable")
    return ListModeEvents(b[order], t[order], p[order], layout.shape)


# --- writer --------------------------------------------------------------------------------


def petsird_header(scanner: ScannerGeometry, crystal_size_mm: tuple[float, float, float] | None = None):
    """A PETSIRD header for ``scanner``: one module per detector column, one element per ring, 1 energy window, non-TOF.

    Element ``ring`` of module ``det`` is centred at angle ``det * 2 pi / N + tilt`` on
    ``scanner.effective_radius_mm`` and ``z = (ring - (R - 1) / 2) * ring spacing``.
    """
    petsird = _petsird()
    from petsird.helpers.create import initialize_scanner_information_dimensions

    depth, width, height = crystal_size_mm or (10.0, scanner.default_bin_size_mm, scanner.ring_spacing_mm)
    # box with its centre at (radius, 0, 0): depth along x, width along y, height along z
    r = scanner.effective_radius_mm
    corners = [
        (r + sx * depth / 2, sy * width / 2, sz * height / 2) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)
    ]
    box = petsird.BoxSolidVolume(
        shape=petsird.BoxShape(corners=[petsird.Coordinate(c=np.array(c, dtype=np.float32)) for c in corners]),
        material_id=1,
    )
    elements = petsird.ReplicatedBoxSolidVolume(object=box)
    R = scanner.num_rings
    for ring in range(R):
        m = np.eye(4, dtype=np.float32)[:3]
        m[2, 3] = (ring - (R - 1) / 2) * scanner.ring_spacing_mm
        elements.transforms.append(petsird.RigidTransformation(matrix=m))
    module = petsird.ReplicatedDetectorModule(object=petsird.DetectorModule(detecting_elements=elements))
    tilt = math.radians(scanner.intrinsic_tilt_deg)
    for d in range(scanner.detectors_per_ring):
        a = d * scanner.crystal_angle_rad + tilt
        m = np.array(
            [[math.cos(a), -math.sin(a), 0, 0], [math.sin(a), math.cos(a), 0, 0], [0, 0, 1, 0]], dtype=np.float32
        )
        module.transforms.append(petsird.RigidTransformation(matrix=m))
    info = petsird.ScannerInformation(
        model_name=scanner.name, scanner_geometry=petsird.ScannerGeometry(replicated_modules=[module])
    )
    initialize_scanner_information_dimensions(
        info, 1, allocate_detection_bin_efficiencies=False, allocate_module_pair_efficiencies=False
    )
    big = 2 * r
    info.tof_bin_edges[0][0] = petsird.BinEdges(edges=np.array([-big, big], dtype=np.float32))
    info.tof_resolution[0][0] = 1e4
    info.event_energy_bin_edges[0] = petsird.BinEdges(edges=np.array([430.0, 650.0], dtype=np.float32))
    info.energy_resolution_at_511[0] = 0.12
    return petsird.Header(scanner=info)


def write_petsird(
    path: str | os.PathLike, events: ListModeEvents, layout: SinogramLayout, time_block_ms: int = 1
) -> Path:
    """Write ``events`` (binned in ``layout``) as a PETSIRD file; times are grouped into blocks of ``time_block_ms``.

    Each event is written on the first ring pair and raw view of its bin (a
    :func:`read_petsird` into ``layout`` returns the same bins, with times floored to the
    block start).
    """
    petsird = _petsird()
    if tuple(events.data_shape) != layout.shape:
        raise ValueError(f"events are binned in {events.data_shape}, not in the layout {layout.shape}")
    if int(time_block_ms) != time_block_ms or time_block_ms < 1:
        raise ValueError(
            f"time_block_ms must be a whole number of ms >= 1 (PETSIRD time intervals), got {time_block_ms}"
        )
    sc = layout.scanner
    R = sc.num_rings
    det_a, det_b = layout.transaxial_crystal_pairs()
    sino, ra, rb = layout.ring_pairs()
    first_pair = np.full(layout.num_sinograms, -1, dtype=np.int64)
    first_pair[sino[::-1]] = np.arange(len(sino))[::-1]  # first ring pair of each sinogram
    _, V, T = layout.shape
    s, rest = events.bins // (V * T), events.bins % (V * T)
    v, t = rest // T, rest % T
    pair = first_pair[s]
    # crystal index = module (detector) * rings + element (ring); 1 energy bin
    c1 = det_a[0, v, t] * R + ra[pair]
    c2 = det_b[0, v, t] * R + rb[pair]
    c1, c2 = np.maximum(c1, c2), np.minimum(c1, c2)  # PETSIRD orders the detection bins of a pair
    block = np.floor(events.times_ms / time_block_ms).astype(np.int64)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with petsird.BinaryPETSIRDWriter(str(tmp)) as writer:
        writer.write_header(petsird_header(sc))
        blocks = []
        n_blocks = int(block.max()) + 1 if len(block) else 0
        order = np.argsort(block, kind="stable")
        edges = np.searchsorted(block[order], np.arange(n_blocks + 1))
        for k in range(n_blocks):
            idx = order[edges[k] : edges[k + 1]]
            lists = {}
            for flag in (True, False):
                sel = idx[events.prompt[idx] == flag]
                lists[flag] = [
                    petsird.CoincidenceEvent(detection_bins=[int(a), int(b)], tof_idx=0)
                    for a, b in zip(c1[sel], c2[sel])
                ]
            start, stop = int(k * time_block_ms), int((k + 1) * time_block_ms)
            blocks.append(
                petsird.TimeBlock.EventTimeBlock(
                    petsird.EventTimeBlock(
                        time_interval=petsird.TimeInterval(start=start, stop=stop),
                        prompt_events=[[lists[True]]],
                        delayed_events=[[lists[False]]],
                    )
                )
            )
        writer.write_time_blocks(blocks)
    os.replace(tmp, path)
    return path
