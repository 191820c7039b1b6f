"""Phantoms, the physics of an acquisition (attenuation, normalisation, randoms, scatter), simulation, list-mode draws."""
