"""Phantoms, the physics of an acquisition (attenuation, normalisation, randoms, scatter), simulation, list-mode draws."""

from petuq_sirf.simulation.listmode_draws import events_from_counts
from petuq_sirf.simulation.phantoms import (
    Phantom,
    brain_phantom,
    make_phantom,
    nema_iec_phantom,
    random_ellipses_phantom,
)
from petuq_sirf.simulation.simulate import SimulatedAcquisition, SimulationConfig, simulate

__all__ = [
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
