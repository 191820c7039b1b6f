"""Linear operators on torch tensors: ``forward``/``adjoint``, composition, an adjointness test and the norm.

Every linear piece of the acquisition model is a :class:`LinearOperator`: the projector, the PSF,
the multiplicative factors per bin (:class:`Multiplication`) and the linear part ``x -> m * G x`` of
every backend's acquisition model (``model.linear_operator()``). They compose with ``@``::

    A = Multiplication(m) @ projector @ psf       # x -> m * G(PSF x)
    A.adjointness_test()                          # |<A x, y> - <x, A^T y>| / (|A x| |y|)
    A.norm()                                      # largest singular value, by power iteration

Shapes are the operator's ``in_shape`` (e.g. an image ``(z, y, x)``) and ``out_shape`` (e.g.
projection data ``(sinograms, views, tangential)``); inputs may carry leading batch dimensions
where the concrete operator allows it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class LinearOperator:
    """A linear map ``in_shape -> out_shape`` with its adjoint. Subclasses define ``forward`` and ``adjoint``."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ComposedOperator(self, other)

    @property
    def H(self) -> LinearOperator:  # noqa: N802 - the usual name of the adjoint
        """The adjoint as an operator (``A.H.forward = A.adjoint``)."""
        return AdjointOperator(self)

    def _probe_options(self) -> dict:
        """dtype and device of test vectors (subclasses holding tensors say which)."""
        return {"dtype": getattr(self, "dtype", torch.float32), "device": getattr(self, "device", "cpu")}

    def adjointness_test(
        self, generator: torch.Generator | None = None, num_trials: int = 1, dtype: torch.dtype | None = None
    ) -> float:
        """Largest relative error ``|<A x, y> - <x, A^T y>| / (||A x|| ||y||)`` over random ``x >= 0``, ``y >= 0``.

        Zero for an exact adjoint up to rounding: about 1e-7 in float32, 1e-15 in float64. Non-negative
        random vectors keep the test meaningful for operators used on PET images and counts. ``dtype``
        overrides the operator's own float type for the test vectors.
        """
        gen = generator or torch.Generator().manual_seed(0)
        opts = self._probe_options()
        if dtype is not None:
            opts["dtype"] = dtype
        worst = 0.0
        with torch.no_grad():
            for _ in range(num_trials):
                x = torch.rand(self.in_shape, generator=gen, dtype=torch.float64).to(**opts)
                y = torch.rand(self.out_shape, generator=gen, dtype=torch.float64).to(**opts)
                ax = self.forward(x)
                aty = self.adjoint(y)
                lhs = float((ax.double() * y.double()).sum())
                rhs = float((x.double() * aty.double()).sum())
                scale = float(ax.double().norm() * y.double().norm())
                worst = max(worst, abs(lhs - rhs) / scale if scale > 0 else abs(lhs - rhs))
        return worst

    def norm(self, num_iterations: int = 100, rtol: float = 1e-5, generator: torch.Generator | None = None) -> float:
        """Operator 2-norm ``||A||`` (largest singular value) by power iteration on ``A^T A``.

        Stops when the estimate changes by less than ``rtol`` (relative) or after ``num_iterations``.
        """
        gen = generator or torch.Generator().manual_seed(0)
        opts = self._probe_options()
        with torch.no_grad():
            x = torch.rand(self.in_shape, generator=gen, dtype=torch.float64).to(**opts)
            x = x / x.norm()
            estimate = 0.0
            for _ in range(num_iterations):
                z = self.adjoint(self.forward(x))
                value = float(z.double().norm())  # ||A^T A x|| with ||x|| = 1
                if value == 0.0:
                    return 0.0
                x = z / value
                new = value**0.5
                if abs(new - estimate) <= rtol * new:
                    return new
                estimate = new
        return estimate


class ComposedOperator(LinearOperator):
    """``outer @ inner``: ``x -> outer(inner(x))``; adjoint ``inner^T(outer^T(y))``."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        if tuple(outer.in_shape) != tuple(inner.out_shape):
            raise ValueError(f"cannot compose: {tuple(inner.out_shape)} output into {tuple(outer.in_shape)} input")
        self.outer, self.inner = outer, inner
        self.in_shape, self.out_shape = tuple(inner.in_shape), tuple(outer.out_shape)

    def _probe_options(self) -> dict:
        return self.inner._probe_options()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


class AdjointOperator(LinearOperator):
    """The adjoint of ``op`` as an operator of its own."""

    def __init__(self, op: LinearOperator) -> None:
        self.op = op
        self.in_shape, self.out_shape = tuple(op.out_shape), tuple(op.in_shape)

    def _probe_options(self) -> dict:
        return self.op._probe_options()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)


class Multiplication(LinearOperator):
    """Elementwise product with fixed factors (self-adjoint), e.g. the multiplicative term ``m`` per bin.

    ``factors`` must be finite and ``>= 0`` (:func:`check_term`); ``in_shape = out_shape = factors.shape``.
    """

    def __init__(self, factors: torch.Tensor, name: str = "multiplicative term") -> None:
        self.factors = check_term(factors, tuple(factors.shape), name)
        self.in_shape = self.out_shape = tuple(self.factors.shape)
        self.dtype, self.device = self.factors.dtype, self.factors.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factors * x

    adjoint = forward


class FunctionOperator(LinearOperator):
    """A linear operator from two callables (e.g. a model's ``direct`` and ``adjoint``)."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        adjoint: Callable[[torch.Tensor], torch.Tensor],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        self._forward, self._adjoint = forward, adjoint
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.dtype, self.device = dtype, torch.device(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._adjoint(y)


def check_term(
    term: torch.Tensor,
    shape: tuple[int, ...],
    name: str,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    batched: bool = False,
) -> torch.Tensor:
    """``term`` as a tensor (on ``device``, in ``dtype``) after checking it: shape ``shape``, finite, ``>= 0``.

    ``batched`` allows leading batch dimensions (per-item terms of a batch). One-line errors name ``name``.
    """
    t = torch.as_tensor(term)
    if dtype is not None or device is not None:
        t = t.to(device=device, dtype=dtype)
    core = tuple(t.shape[t.dim() - len(shape) :]) if t.dim() >= len(shape) else None
    if core != tuple(shape) or (not batched and t.dim() != len(shape)):
        expected = f"(B, *{tuple(shape)})" if batched else f"{tuple(shape)}"
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expected}")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    return t
