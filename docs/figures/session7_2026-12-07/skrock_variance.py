"""Stationary variance of SK-ROCK (Abdulle, Almuslimani & Vilmart 2018; used for imaging by Pereyra, Vargas-Mieles &
Zygalakis 2020) on a 1-D Gaussian target ``N(0, 1/lambda)``, relative to the true variance, as a function of the
step size ``delta`` (a fraction of the method's stability limit ``l_s / L``, ``L = 1`` the largest curvature) and of
the curvature ``lambda`` in (0, L]. Exact: one SK-ROCK step on a linear target is ``x' = R x + S sqrt(2 delta) xi``,
so the stationary variance is ``2 delta S^2 / (1 - R^2)``. ULA at PnP-ULA's step (``delta = 1/(3L)``) is shown for
comparison (``1 / (1 - delta lambda / 2)``).

Run: ``python docs/figures/session7_2026-12-07/skrock_variance.py`` (a second, no dependencies beyond numpy).
"""

import numpy as np


def chebyshev(s: int, w: float) -> list[float]:
    t = [1.0, w]
    for _ in range(2, s + 1):
        t.append(2 * w * t[-1] - t[-2])
    return t


def skrock_coefficients(s: int, eta: float = 0.05):
    w0 = 1 + eta / s**2
    t = chebyshev(s, w0)
    u = [1.0, 2 * w0]  # Chebyshev polynomials of the second kind: T_s' = s U_(s-1)
    for _ in range(2, s):
        u.append(2 * w0 * u[-1] - u[-2])
    w1 = t[s] / (s * u[s - 1])
    mu = [None, w1 / w0] + [2 * w1 * t[j - 1] / t[j] for j in range(2, s + 1)]
    nu = [None, s * w1 / 2] + [2 * w0 * t[j - 1] / t[j] for j in range(2, s + 1)]
    kappa = [None, s * w1 / w0] + [-t[j - 2] / t[j] for j in range(2, s + 1)]
    limit = (s - 0.5) ** 2 * (2 - 4 / 3 * eta) - 1.5
    return mu, nu, kappa, limit


def linear_step(s: int, p: float, coeffs) -> tuple[float, float]:
    """(R, S) of one SK-ROCK step on grad log pi(x) = -lambda x, with p = -delta lambda."""
    mu, nu, kappa, _ = coeffs
    k0, k1 = (1.0, 0.0), (1 + mu[1] * p, kappa[1] + mu[1] * nu[1] * p)
    for j in range(2, s + 1):
        k0, k1 = k1, tuple(mu[j] * p * a + nu[j] * a + kappa[j] * b for a, b in zip(k1, k0, strict=True))
    return k1


s = 10
coeffs = skrock_coefficients(s)
limit = coeffs[3]
curvatures = np.logspace(-3, 0, 7)
print(f"SK-ROCK, s = {s} stages, damping 0.05: stability limit delta L = {limit:.1f} ({s} gradients per step)")
print("variance / true variance at curvature lambda / L =", ", ".join(f"{c:.3g}" for c in curvatures))
for frac in (0.01, 0.05, 0.2, 0.5, 1.0):
    delta = frac * limit
    ratios = []
    for lam in curvatures:
        r, sn = linear_step(s, -delta * lam, coeffs)
        ratios.append(2 * delta * sn * sn / (1 - r * r) * lam)
    print(
        f"  delta = {frac:4.2f} x limit (delta L = {delta:6.1f}, {delta / s:5.2f} per gradient):", np.round(ratios, 3)
    )
delta = 1 / 3
print(f"ULA, delta L = 1/3 ({delta:.2f} per gradient):", np.round(1 / (1 - delta * curvatures / 2), 3))
