"""Phantoms, physics of the acquisition (attenuation, normalisation, randoms, scatter), simulation, files."""

from petuq_sirf.data.listmode import ListModeEvents, events_from_counts
from petuq_sirf.data.phantoms import Phantom, brain_phantom, make_phantom, nema_iec_phantom, random_ellipses_phantom
from petuq_sirf.data.simulate import SimulatedAcquisition, SimulationConfig, simulate

__all__ = [
    "ListModeEvents",
    "Phantom",
    "SimulatedAcquisition",
    "SimulationConfig",
    "brain_phantom",
    "events_from_counts",
    "make_phantom",
    "nema_iec_phantom",
    "random_ellipses_phantom",
    "simulate",
]
