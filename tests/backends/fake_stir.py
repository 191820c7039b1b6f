"""A tiny stand-in for STIR's Python module (``import stir``) following its documented array conventions.

NOT STIR: the projector is our embedded one. It reproduces what our STIR adapter relies on:
``ProjData.read_from_file`` / ``FloatVoxelsOnCartesianGrid.read_from_file`` on Interfile,
``ProjDataInMemory.fill`` / ``as_array`` with sinograms in STIR's standard segment sequence
(0, +1, -1, ...), forward / back projectors set up from a projection matrix, and STIR's
measured geometry conventions (z from the first ring, x-voxel units, odd x/y sizes). Tests with it
check our adapter (reordering, PSF, terms, autograd), not STIR.

Object lifetimes as in the SWIG binding: ``ProjData.get_exam_info()`` is a non-owning view that
dies with its ``ProjData``; the fake frees it eagerly (when the template is collected) and raises
where real STIR would read freed memory and segfault. Ray-tracing matrices start with STIR's
defaults (1 ray per bin, cylindrical FOV restricted).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch

from petuq_sirf.io.interfile import read_image, read_projdata
from petuq_sirf.operators.axial_tube import AxialTubeProjector
from tests.backends.fake_sirf import _PROJECTORS, _array_order, stir_to_our_geometry


class DanglingPointerError(RuntimeError):
    """Raised where real STIR would dereference freed memory (and crash)."""


class _ExamInfo:
    """A non-owning view of a ``ProjData``'s exam info: invalid once its owner is gone."""

    def __init__(self):
        self.alive = True

    def check(self):
        if not self.alive:
            raise DanglingPointerError("ExamInfo used after its ProjData was freed (real STIR: segfault)")


class _ProjData:
    def __init__(self, layout, values, exam_info=None):
        self.layout, self.values = layout, values
        self._own_exam_info = exam_info is None
        self._exam_info = _ExamInfo() if exam_info is None else exam_info

    def __del__(self):
        if getattr(self, "_own_exam_info", False):
            self._exam_info.alive = False  # freed eagerly, as C++ does when the owner goes

    @staticmethod
    def read_from_file(path):
        pd = read_projdata(path)
        return _ProjData(pd.layout, pd.array[_array_order(pd.layout)].copy())

    def get_proj_data_info(self):
        return self.layout

    def get_exam_info(self):
        return self._exam_info  # non-owning, like the SWIG binding's

    def fill(self, value):
        self._exam_info.check()
        if isinstance(value, (int, float)):
            self.values[...] = float(value)
        else:  # a numpy ".flat" iterator, as STIR's fill accepts
            self.values[...] = np.fromiter(value, dtype=np.float32, count=self.values.size).reshape(self.values.shape)

    def as_array(self):
        self._exam_info.check()
        return self.values[None].copy()  # (TOF, sinograms, views, tangential)


def ProjDataInMemory(exam_info, layout):
    return _ProjData(layout, np.zeros(layout.shape, np.float32), exam_info)


class FloatVoxelsOnCartesianGrid:
    def __init__(self, geometry, values):
        self.geometry, self.values = geometry, values

    @staticmethod
    def read_from_file(path):
        im = read_image(path)
        return FloatVoxelsOnCartesianGrid(im.geometry, np.asarray(im.array, np.float32).copy())

    def fill(self, value):
        if isinstance(value, (int, float)):
            self.values[...] = float(value)
        else:
            self.values[...] = np.fromiter(value, dtype=np.float32, count=self.values.size).reshape(self.values.shape)

    def as_array(self):
        return self.values.copy()


class ProjMatrixByBinUsingRayTracing:
    def __init__(self):
        self.n, self.restrict = 1, True  # STIR's defaults

    def get_num_tangential_LORs(self):
        return self.n

    def set_num_tangential_LORs(self, n):
        self.n = n

    def set_restrict_to_cylindrical_FOV(self, flag):
        self.restrict = flag


class _Projector:
    def __init__(self, matrix):
        self.matrix = matrix

    def set_up(self, layout, image):
        self.layout = layout
        ours = stir_to_our_geometry(layout, image.geometry)
        n = self.matrix.get_num_tangential_LORs()
        key = (layout, ours, n)
        if key not in _PROJECTORS:  # share system matrices between projectors and tests
            # STIR's ray tracer: axial tube, exact intersection lengths, n tangential rays per bin
            _PROJECTORS[key] = AxialTubeProjector(layout, ours, ray_model="siddon", rays_per_bin=n)
        self.proj = _PROJECTORS[key]
        self.pixel = ours.voxel_size_mm[2]  # STIR ray tracing: lengths in x-voxel units
        self.order = _array_order(layout)


class ForwardProjectorByBinUsingProjMatrixByBin(_Projector):
    def forward_project(self, projdata, image):
        projdata._exam_info.check()
        projdata.values[...] = (self.proj.forward(torch.from_numpy(image.values)) / self.pixel).numpy()[self.order]


class BackProjectorByBinUsingProjMatrixByBin(_Projector):
    def back_project(self, image, projdata):
        projdata._exam_info.check()
        y = np.empty_like(projdata.values)
        y[self.order] = projdata.values
        image.values[...] += (self.proj.adjoint(torch.from_numpy(y)) / self.pixel).numpy()


def install(monkeypatch):
    module = types.ModuleType("stir")
    module.ProjData = _ProjData
    module.ProjDataInMemory = ProjDataInMemory
    for cls in (
        FloatVoxelsOnCartesianGrid,
        ProjMatrixByBinUsingRayTracing,
        ForwardProjectorByBinUsingProjMatrixByBin,
        BackProjectorByBinUsingProjMatrixByBin,
    ):
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "stir", module)
