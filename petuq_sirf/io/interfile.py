"""STIR Interfile images (``.hv``/``.v``) and projection data (``.hs``/``.s``).

Supported: 3D images and 4D non-TOF projection data in float / signed / unsigned integer
formats, either byte order, data offset, image scaling factor, and both STIR storage
orders (``segment, view, axial`` and ``segment, axial, view``). Anything else raises a
:class:`InterfileError` that names the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petuq_sirf.io.atomic import atomic_write_bytes
from petuq_sirf.scanner.geometry import ScannerGeometry, get_scanner
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import SinogramLayout


class InterfileError(ValueError):
    """A header or data file that cannot be read; the message names the file and the problem."""


_LINE = re.compile(r"^\s*!?\s*(?P<key>[^:=]*?)\s*:=\s*(?P<value>.*?)\s*$")
_UNSUPPORTED_IF = {
    "number of time frames": lambda v: int(v) > 1,
    "number of energy windows": lambda v: int(v) > 1,
    "number of time-of-flight bins": lambda v: int(v) > 1,
    "maximum number of (unmashed) tof time bins": lambda v: int(v) > 1,
    "compression": lambda v: v.lower() not in ("", "none"),
    "data compression": lambda v: v.lower() not in ("", "none"),
    "applied corrections": lambda v: v.strip("{} ").lower() not in ("", "none"),
}


def _normalise_key(key: str) -> str:
    return " ".join(key.replace("!", "").replace("%", "").lower().split())


def parse_header(path: str | os.PathLike, allow: tuple[str, ...] = ()) -> dict[str, str]:
    """Read an Interfile header into ``{normalised key: value}`` (keys lower-case, no ``!``).

    ``allow``: keys whose otherwise unsupported values the caller handles itself (e.g. the
    list-mode reader's ``number of time frames``).
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InterfileError(f"cannot read Interfile header {path}: {exc.strerror}") from exc
    if "interfile" not in text[:200].lower():
        raise InterfileError(f"{path} is not an Interfile header (no '!INTERFILE :=' line at the top)")
    header: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split(";", 1)[0]
        m = _LINE.match(line)
        if m:
            header[_normalise_key(m["key"])] = m["value"]
    for key, bad in _UNSUPPORTED_IF.items():
        if key in header and header[key].strip() and key not in allow:
            try:
                unsupported = bad(header[key])
            except ValueError:
                unsupported = True
            if unsupported:
                raise InterfileError(f"{path}: unsupported value for key '{key}': {header[key]!r}")
    return header


def confined_data_path(header_path: str | os.PathLike, name: str) -> Path:
    """The data file ``name`` of a header, resolved against the header's folder; it must lie inside that folder.

    Absolute names are accepted when they resolve inside the folder. Raises :class:`InterfileError`
    otherwise, so a header cannot make us read (or a tool overwrite) files elsewhere.
    """
    header_path = Path(header_path)
    base = header_path.resolve().parent
    data_path = (base / name.strip().strip('"')).resolve()
    if base != data_path.parent and base not in data_path.parents:
        raise InterfileError(f"{header_path}: data file {name!r} lies outside the header's directory {base}")
    return data_path


def _number(header: dict[str, str], key: str, path: Path, cast=float, default=None):
    if key not in header or header[key] == "":
        if default is not None:
            return default
        raise InterfileError(f"{path}: required key '{key}' is missing")
    try:
        return cast(header[key])
    except ValueError as exc:
        raise InterfileError(f"{path}: key '{key}' has a non-numeric value {header[key]!r}") from exc


def _list(header: dict[str, str], key: str, path: Path) -> list[int]:
    if key not in header:
        raise InterfileError(f"{path}: required key '{key}' is missing")
    try:
        return [int(v) for v in header[key].strip("{} ").split(",")]
    except ValueError as exc:
        raise InterfileError(f"{path}: key '{key}' is not a list of integers: {header[key]!r}") from exc


def _dtype(header: dict[str, str], path: Path) -> np.dtype:
    fmt = header.get("number format", "float").lower()
    nbytes = _number(header, "number of bytes per pixel", path, int, default=4)
    kinds = {"float": "f", "short float": "f", "long float": "f", "signed integer": "i", "unsigned integer": "u"}
    if fmt not in kinds:
        raise InterfileError(f"{path}: unsupported 'number format' {fmt!r} (float, signed/unsigned integer)")
    order = header.get("imagedata byte order", "LITTLEENDIAN").upper()
    if order not in ("LITTLEENDIAN", "BIGENDIAN"):
        raise InterfileError(f"{path}: unsupported 'imagedata byte order' {order!r}")
    try:
        return np.dtype(("<" if order == "LITTLEENDIAN" else ">") + kinds[fmt] + str(nbytes))
    except TypeError as exc:
        raise InterfileError(f"{path}: unsupported {nbytes}-byte {fmt}") from exc


def _read_raw(header: dict[str, str], path: Path, count: int) -> np.ndarray:
    name = header.get("name of data file", "")
    if not name:
        raise InterfileError(f"{path}: key 'name of data file' is missing")
    data_path = confined_data_path(path, name)
    if not data_path.is_file():
        raise InterfileError(f"{path}: data file {data_path} does not exist")
    dtype = _dtype(header, path)
    offset = _number(header, "data offset in bytes [1]", path, int, default=0)
    offset = _number(header, "data offset in bytes", path, int, default=offset)
    need = offset + count * dtype.itemsize
    size = data_path.stat().st_size
    if size != need:
        # a longer file is as wrong as a shorter one: the header describes other data (another span,
        # TOF bins, more frames), and reading its first part would silently give a wrong array
        raise InterfileError(
            f"{path}: data file {data_path.name} is too {'short' if size < need else 'long'} for "
            f"its header: {size} bytes on disk, the header needs {need} "
            f"({count} values of {dtype.itemsize} bytes + {offset} offset)"
        )
    data = np.fromfile(data_path, dtype=dtype, count=count, offset=offset)
    return data.astype(np.float32)


@dataclass
class InterfileImage:
    """An image ``array`` of shape ``(z, y, x)`` with its grid."""

    array: np.ndarray
    geometry: ImageGeometry


def stir_axial_origin_mm(scanner: ScannerGeometry) -> float:
    """Our ``z`` of STIR's image ``z = 0`` (the first ring): ``-(rings - 1) / 2 * ring spacing``."""
    return -(scanner.num_rings - 1) / 2 * scanner.ring_spacing_mm


def read_image(path: str | os.PathLike, scanner: ScannerGeometry | None = None) -> InterfileImage:
    """Read a STIR Interfile image (``.hv``).

    With ``scanner``, the file's axial offsets are taken in STIR's convention (``z = 0`` at the
    first ring) and converted to ours (``z = 0`` at the scanner centre); without, they are kept.
    """
    path = Path(path)
    h = parse_header(path)
    ndim = _number(h, "number of dimensions", path, int, default=3)
    if ndim != 3:
        raise InterfileError(f"{path}: 'number of dimensions' is {ndim}; only 3D images are supported")
    sizes = [_number(h, f"matrix size [{i}]", path, int) for i in (1, 2, 3)]
    spacing = [_number(h, f"scaling factor (mm/pixel) [{i}]", path, float, default=1.0) for i in (1, 2, 3)]
    first = [_number(h, f"first pixel offset (mm) [{i}]", path, float, default=0.0) for i in (1, 2, 3)]
    nx, ny, nz = sizes
    count = nx * ny * nz
    data = _read_raw(h, path, count).reshape(nz, ny, nx)
    scale = _number(h, "image scaling factor [1]", path, float, default=1.0)
    scale = _number(h, "image scaling factor", path, float, default=scale)
    if scale != 1.0:
        data = data * np.float32(scale)
    centre = [f + (n - 1) / 2 * d for f, n, d in zip(first, sizes, spacing)]
    if scanner is not None:
        centre[2] += stir_axial_origin_mm(scanner)
    geometry = ImageGeometry((nz, ny, nx), (spacing[2], spacing[1], spacing[0]), (centre[2], centre[1], centre[0]))
    return InterfileImage(data, geometry)


def write_image(
    path: str | os.PathLike, array: np.ndarray, geometry: ImageGeometry, scanner: ScannerGeometry | None = None
) -> Path:
    """Write a float32 image ``(z, y, x)`` as ``path`` (``.hv``) plus ``.v`` data beside it.

    With ``scanner``, the axial offset is written in STIR's convention (``z = 0`` at the first
    ring) so STIR and SIRF place the image where we do; read it back with the same ``scanner``.
    """
    path = Path(path).with_suffix(".hv")
    array = np.asarray(array, dtype="<f4")
    if array.shape != geometry.shape:
        raise ValueError(f"image shape {array.shape} does not match its geometry {geometry.shape}")
    data_path = path.with_suffix(".v")
    nz, ny, nx = geometry.shape
    dz, dy, dx = geometry.voxel_size_mm
    first = [geometry.first_voxel_mm(a) for a in (2, 1, 0)]
    if scanner is not None:
        first[2] -= stir_axial_origin_mm(scanner)
    lines = [
        "!INTERFILE :=",
        "!imaging modality := PT",
        f"name of data file := {data_path.name}",
        "!GENERAL DATA :=",
        "!GENERAL IMAGE DATA :=",
        "!type of data := PET",
        "imagedata byte order := LITTLEENDIAN",
        "!PET STUDY (General) :=",
        "!PET data type := Image",
        "process status := Reconstructed",
        "!number format := float",
        "!number of bytes per pixel := 4",
        "number of dimensions := 3",
        "matrix axis label [1] := x",
        f"!matrix size [1] := {nx}",
        f"scaling factor (mm/pixel) [1] := {dx:.6g}",
        "matrix axis label [2] := y",
        f"!matrix size [2] := {ny}",
        f"scaling factor (mm/pixel) [2] := {dy:.6g}",
        "matrix axis label [3] := z",
        f"!matrix size [3] := {nz}",
        f"scaling factor (mm/pixel) [3] := {dz:.6g}",
        f"first pixel offset (mm) [1] := {first[0]:.6g}",
        f"first pixel offset (mm) [2] := {first[1]:.6g}",
        f"first pixel offset (mm) [3] := {first[2]:.6g}",
        "number of time frames := 1",
        "!END OF INTERFILE :=",
    ]
    atomic_write_bytes(data_path, array.tobytes())
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


@dataclass
class InterfileProjData:
    """Projection data ``array`` ``(sinograms, views, tangential)`` with the layout its header describes.

    ``layout`` is ``None`` when the header's scanner cannot reproduce the segment sizes
    (``layout_problem`` then says why); the array is still usable.
    """

    array: np.ndarray
    layout: SinogramLayout | None
    header: dict[str, str]
    layout_problem: str = ""


def _energy_from_header(h: dict[str, str], path: Path) -> dict:
    """The scanner's energy resolution and the exam's energy window, where the header gives them."""
    out: dict = {}
    if h.get("energy resolution", ""):
        out["energy_resolution"] = _number(h, "energy resolution", path)
    if h.get("reference energy (in kev)", ""):
        out["reference_energy_kev"] = _number(h, "reference energy (in kev)", path)
    lo, hi = h.get("energy window lower level[1]", ""), h.get("energy window upper level[1]", "")
    if lo and hi:
        out["energy_window_kev"] = (
            _number(h, "energy window lower level[1]", path),
            _number(h, "energy window upper level[1]", path),
        )
    return out


def _scanner_from_header(h: dict[str, str], path: Path) -> ScannerGeometry:
    energy = _energy_from_header(h, path)
    for key in ("scanner type", "originating system"):
        name = h.get(key, "")
        if name:
            try:
                named = get_scanner(name)
            except ValueError:
                continue
            rings = h.get("number of rings", "")
            if not rings or int(rings) == named.num_rings:
                return named.with_(**energy) if energy else named
    cm = 10.0
    return ScannerGeometry(
        name=h.get("scanner type", "userdefined") or "userdefined",
        num_rings=_number(h, "number of rings", path, int),
        detectors_per_ring=_number(h, "number of detectors per ring", path, int),
        inner_radius_mm=_number(h, "inner ring diameter (cm)", path) * cm / 2,
        average_doi_mm=_number(h, "average depth of interaction (cm)", path, default=0.0) * cm,
        ring_spacing_mm=_number(h, "distance between rings (cm)", path) * cm,
        default_bin_size_mm=_number(h, "default bin size (cm)", path) * cm,
        num_tangential_bins=_number(h, "maximum number of non-arc-corrected bins", path, int),
        intrinsic_tilt_deg=_number(h, "view offset (degrees)", path, default=0.0),
        **energy,
    )


def read_projdata(path: str | os.PathLike) -> InterfileProjData:
    """Read STIR Interfile projection data (``.hs``) into ``(sinograms, views, tangential)``."""
    path = Path(path)
    h = parse_header(path)
    ndim = _number(h, "number of dimensions", path, int, default=4)
    if ndim != 4:
        raise InterfileError(f"{path}: 'number of dimensions' is {ndim}; only 4D non-TOF projection data is supported")
    labels = {i: h.get(f"matrix axis label [{i}]", "").lower() for i in (1, 2, 3, 4)}
    if labels[4] != "segment" or labels[1] != "tangential coordinate":
        raise InterfileError(f"{path}: unsupported matrix axis labels {labels} (expected segment ... tangential)")
    if {labels[2], labels[3]} != {"view", "axial coordinate"}:
        raise InterfileError(f"{path}: unsupported matrix axis labels [2], [3]: {labels[2]!r}, {labels[3]!r}")
    axial_key = 2 if labels[2] == "axial coordinate" else 3
    n_seg = _number(h, "matrix size [4]", path, int)
    n_tang = _number(h, "matrix size [1]", path, int)
    n_views = _number(h, f"matrix size [{5 - axial_key}]", path, int)
    axial = _list(h, f"matrix size [{axial_key}]", path)
    if len(axial) != n_seg:
        raise InterfileError(f"{path}: {len(axial)} axial sizes listed for {n_seg} segments")
    raw = _read_raw(h, path, sum(axial) * n_views * n_tang)
    blocks, start = [], 0
    for n_ax in axial:
        block = raw[start : start + n_ax * n_views * n_tang]
        start += block.size
        if axial_key == 3:  # segment, axial, view, tangential: already sinogram-major
            blocks.append(block.reshape(n_ax, n_views, n_tang))
        else:  # segment, view, axial, tangential
            blocks.append(block.reshape(n_views, n_ax, n_tang).transpose(1, 0, 2))
    array = np.ascontiguousarray(np.concatenate(blocks, axis=0))
    layout, problem = None, ""
    try:
        scanner = _scanner_from_header(h, path)
        rd_min = _list(h, "minimum ring difference per segment", path)
        rd_max = _list(h, "maximum ring difference per segment", path)
        centre = rd_min.index(min(rd_min, key=abs)) if rd_min else 0
        span = rd_max[centre] - rd_min[centre] + 1
        if span == 1 and len(rd_min) > 1 and any(a != b for a, b in zip(rd_min, rd_max)):
            span = rd_max[centre + 1] - rd_min[centre + 1] + 1
        mash = scanner.num_views // n_views if n_views else 0
        layout = SinogramLayout(
            scanner,
            span=span,
            max_ring_difference=max(rd_max),
            view_mashing=max(mash, 1),
            num_tangential_bins=None if n_tang == scanner.num_tangential_bins else n_tang,
        )
        if layout.sinograms_per_segment != axial or layout.num_views != n_views:
            problem = (
                f"header sizes {axial} x {n_views} views do not match {layout.describe()} "
                f"({layout.sinograms_per_segment})"
            )
            layout = None
    except (InterfileError, ValueError) as exc:
        problem = str(exc)
        layout = None
    return InterfileProjData(array, layout, h, problem)


def _energy_window_keys(sc) -> list[str]:
    """The exam's energy window (STIR needs it for scatter simulation); none when the scanner's is unknown."""
    if sc.energy_window_kev is None:
        return []
    lo, hi = sc.energy_window_kev
    return [
        "number of energy windows := 1",
        f"energy window lower level[1] := {lo:.6g}",
        f"energy window upper level[1] := {hi:.6g}",
    ]


def write_projdata(path: str | os.PathLike, array: np.ndarray, layout: SinogramLayout) -> Path:
    """Write ``(sinograms, views, tangential)`` data as STIR Interfile (``.hs`` + ``.s``, sinogram order)."""
    path = Path(path).with_suffix(".hs")
    array = np.asarray(array, dtype="<f4")
    if array.shape != layout.shape:
        raise ValueError(f"projection data shape {array.shape} does not match the layout {layout.shape}")
    sc = layout.scanner
    data_path = path.with_suffix(".s")
    segs = layout.segments
    lines = [
        "!INTERFILE :=",
        "!imaging modality := PT",
        f"name of data file := {data_path.name}",
        f"originating system := {sc.name}",
        "!version of keys := STIR6.0",
        "!GENERAL DATA :=",
        "!GENERAL IMAGE DATA :=",
        "!type of data := PET",
        "imagedata byte order := LITTLEENDIAN",
        "!PET STUDY (General) :=",
        "!PET data type := Emission",
        "applied corrections := {None}",
        *_energy_window_keys(sc),
        "!number format := float",
        "!number of bytes per pixel := 4",
        "number of dimensions := 4",
        "matrix axis label [4] := segment",
        f"!matrix size [4] := {len(segs)}",
        "matrix axis label [3] := axial coordinate",
        f"!matrix size [3] := {{ {','.join(map(str, layout.sinograms_per_segment))}}}",
        "matrix axis label [2] := view",
        f"!matrix size [2] := {layout.num_views}",
        "matrix axis label [1] := tangential coordinate",
        f"!matrix size [1] := {layout.num_tangential}",
        f"minimum ring difference per segment := {{ {','.join(str(s.min_ring_difference) for s in segs)}}}",
        f"maximum ring difference per segment := {{ {','.join(str(s.max_ring_difference) for s in segs)}}}",
        "Scanner parameters:=",
        f"Scanner type := {sc.name}",
        f"Number of rings := {sc.num_rings}",
        f"Number of detectors per ring := {sc.detectors_per_ring}",
        f"Inner ring diameter (cm) := {sc.inner_radius_mm * 2 / 10:.6g}",
        f"Average depth of interaction (cm) := {sc.average_doi_mm / 10:.6g}",
        f"Distance between rings (cm) := {sc.ring_spacing_mm / 10:.6g}",
        f"Default bin size (cm) := {sc.default_bin_size_mm / 10:.6g}",
        f"View offset (degrees) := {sc.intrinsic_tilt_deg:.6g}",
        *(
            [
                f"Energy resolution := {sc.energy_resolution:.6g}",
                f"Reference energy (in keV) := {sc.reference_energy_kev:.6g}",
            ]
            if sc.energy_resolution > 0
            else []
        ),
        "Maximum number of (unmashed) TOF time bins := 1",
        f"Maximum number of non-arc-corrected bins := {sc.num_tangential_bins}",
        f"Default number of arc-corrected bins := {sc.num_tangential_bins}",
        "end scanner parameters:=",
        "!END OF INTERFILE :=",
    ]
    atomic_write_bytes(data_path, array.tobytes())
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
