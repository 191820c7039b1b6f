"""Scanner geometry, sinogram layout and image grids."""

from petuq_sirf.scanner.geometry import ScannerGeometry, get_scanner, scanner_names
from petuq_sirf.scanner.image_geometry import ImageGeometry
from petuq_sirf.scanner.layout import Segment, SinogramLayout, make_segments

__all__ = [
    "ImageGeometry",
    "ScannerGeometry",
    "Segment",
    "SinogramLayout",
    "get_scanner",
    "make_segments",
    "scanner_names",
]
