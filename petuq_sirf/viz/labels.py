"""Labels every figure states: activity units on colour bars, the method's settings in titles.

Images reconstructed here are in arbitrary activity units unless the acquisition carries a calibration
to Bq/mL (``activity_units`` in its info): the simulated phantoms are in arbitrary concentration units and
no scanner calibration factor is applied to measured data. The figures say so on every colour bar.
"""

from __future__ import annotations

from collections.abc import Mapping

ACTIVITY_UNITS = "arbitrary activity units"
CALIBRATED_UNITS = "Bq/mL"


def activity_units(info: Mapping | None = None) -> str:
    """``"Bq/mL"`` when ``info`` (an acquisition's info) records a calibration to it, else arbitrary units."""
    units = (info or {}).get("activity_units")
    return CALIBRATED_UNITS if units == CALIBRATED_UNITS else ACTIVITY_UNITS


def colourbar_label(name: str, units: str = ACTIVITY_UNITS) -> str:
    """The colour-bar label of an image called ``name``: a spread or an activity, in ``units``."""
    low = name.lower()
    if "|error|/std" in low or "z-score" in low:
        return "|error| / std (unitless)"
    if "std" in low:
        return f"std ({units})"
    if "width" in low:
        return f"interval width ({units})"
    return units if units == ACTIVITY_UNITS else f"activity ({units})"


def add_colourbar(fig, image, ax, label: str) -> None:
    """A slim colour bar beside ``ax`` with ``label`` (small font)."""
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def _num(v: float) -> str:
    return f"{v:.3g}"


def reconstruction_title(
    method: str,
    iterations: int | None = None,
    subsets: int | None = None,
    beta: float | None = None,
    beta_strength: float | None = None,
    postfilter_fwhm_mm: float | None = None,
    samples: int | None = None,
) -> str:
    """``"OSEM 10 it x 8 subsets"``, ``"MAP-RDP 30 it, beta strength 0.01"``, ``"... + 6 mm FWHM filter"``."""
    names = {"osem": "OSEM", "mlem": "MLEM", "map-rdp": "MAP-RDP", "pnp-admm": "PnP-ADMM", "unrolled": "unrolled"}
    text = names.get(method, method)
    if iterations is not None:
        text += f" {iterations} it"
        if subsets is not None and subsets > 1:
            text += f" \u00d7 {subsets} subsets"
    if beta is not None:
        text += f", \u03b2 {_num(beta)}"
    elif beta_strength is not None:
        text += f", \u03b2 strength {_num(beta_strength)}"
    if postfilter_fwhm_mm:
        text += f" + {_num(postfilter_fwhm_mm)} mm FWHM filter"
    if samples is not None:
        text += f", {samples} samples"
    return text


__all__ = [
    "ACTIVITY_UNITS",
    "CALIBRATED_UNITS",
    "activity_units",
    "add_colourbar",
    "colourbar_label",
    "reconstruction_title",
]
