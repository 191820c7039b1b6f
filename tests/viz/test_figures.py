"""Figures a reader can read: units on colour bars, settings in titles, ROI truth markers inside the axes."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def captured(monkeypatch):
    """The figures passed to ``save_figure`` (still written, so the PNG path is real)."""
    import petuq_sirf.viz.bootstrap_figures as bf
    import petuq_sirf.viz.images as im
    import petuq_sirf.viz.uq_figures as uq

    figures = []
    for module in (bf, im, uq):
        original = module.save_figure

        def keep(fig, path, *args, _original=original, **kwargs):
            figures.append(fig)
            return _original(fig, path, *args, **kwargs)

        monkeypatch.setattr(module, "save_figure", keep)
    return figures


def _colourbar_labels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_image_panel_states_units_and_settings(tmp_path, captured):
    from petuq_sirf.viz.images import image_panel
    from petuq_sirf.viz.labels import reconstruction_title

    title = reconstruction_title("map-rdp", 30, beta_strength=0.01, postfilter_fwhm_mm=4.0)
    assert title == "MAP-RDP 30 it, \u03b2 strength 0.01 + 4 mm FWHM filter"
    assert reconstruction_title("osem", 10, 8) == "OSEM 10 it \u00d7 8 subsets"
    img = np.random.default_rng(0).random((1, 8, 8))
    image_panel({"truth": img, title: img, "posterior std": img}, tmp_path / "a.png", units="Bq/mL")
    (fig,) = captured
    assert _colourbar_labels(fig) == ["activity (Bq/mL)", "activity (Bq/mL)", "std (Bq/mL)"]
    assert title in [ax.get_title() for ax in fig.axes]
    image_panel({"osem": img}, tmp_path / "b.png")
    assert _colourbar_labels(captured[-1]) == ["arbitrary activity units"]
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_bootstrap_roi_truth_markers_lie_inside_the_axes(tmp_path, captured):
    from petuq_sirf.viz.bootstrap_figures import bootstrap_figure

    img = np.ones((1, 8, 8))
    roi = {  # truth far outside every interval, as for a biased hot sphere
        "hot": {"mean": 2.0, "interval_0.90": [1.9, 2.1], "truth": 4.0},
        "cold": {"mean": 0.4, "interval_0.90": [0.3, 0.5], "truth": 0.0},
    }
    bootstrap_figure({"posterior mean": img, "posterior std": img}, roi, tmp_path / "b.png", title="B = 4")
    fig = captured[-1]
    ax = next(a for a in fig.axes if a.get_title() == "ROI posteriors")
    lo, hi = ax.get_xlim()
    assert lo < 0.0 and hi > 4.0  # both truth markers strictly inside
    assert "arbitrary activity units" in ax.get_xlabel()
    assert _colourbar_labels(fig) == ["arbitrary activity units", "std (arbitrary activity units)"]
    # calibrated intervals (petuq bootstrap --roi-calibration) are drawn too, and stay inside the axes
    bootstrap_figure({"mean": img}, roi, tmp_path / "c.png", roi_calibrated={"hot": {"interval": [1.0, 5.0]}})
    ax = next(a for a in captured[-1].axes if a.get_title() == "ROI posteriors")
    assert "ROI-conformal 90%" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlim()[1] > 5.0


def test_method_panels_label_the_input_and_units(tmp_path, captured):
    import torch

    from petuq_sirf.viz.uq_figures import method_panels, z_histograms

    t = torch.ones((1, 8, 8))
    method_panels(
        {"svi": {"truth": t, "noisy": t, "mean": t, "std": t}}, tmp_path / "p.png", input_label="input: OSEM 4 it"
    )
    fig = captured[-1]
    assert "input: OSEM 4 it" in [ax.get_title() for ax in fig.axes]
    assert _colourbar_labels(fig)[-1] == "|error| / std (unitless)"
    assert _colourbar_labels(fig)[3] == "std (arbitrary activity units)"
    z_histograms({"svi": torch.randn(100)}, tmp_path / "z.png", title="nema, dose 0.05")
    assert captured[-1].axes[0].get_title() == "nema, dose 0.05"


def test_viz_does_not_switch_the_matplotlib_backend():
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg'); import petuq_sirf.viz.images, petuq_sirf.viz.uq_figures, "
        "petuq_sirf.viz.bootstrap_figures; print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
