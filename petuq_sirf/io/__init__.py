"""File formats, no model: STIR Interfile, NIfTI/npz images, Siemens mMR list-mode, PETSIRD, acquisition folders."""

from petuq_sirf.io.listmode import ListModeEvents

__all__ = ["ListModeEvents"]
