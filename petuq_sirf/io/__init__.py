"""File formats, no model: STIR Interfile, NIfTI/npz images, Siemens mMR list-mode, PETSIRD, acquisition folders,
weight folders (safetensors + config.json), and the one atomic writer."""

from petuq_sirf.io.acquisition_folder import Acquisition, load_acquisition, save_acquisition
from petuq_sirf.io.image_io import read_image, write_image
from petuq_sirf.io.listmode import ListModeEvents
from petuq_sirf.io.weights import WeightsError, load_weights, save_weights

__all__ = [
    "Acquisition",
    "ListModeEvents",
    "WeightsError",
    "load_acquisition",
    "load_weights",
    "read_image",
    "save_acquisition",
    "save_weights",
    "write_image",
]
