"""Vectorised four-vector helpers (numpy, float64): construction, boosts, two-body decays,
truncated Breit-Wigner masses and falling spectra. No per-event Python loops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ETA_MAX_GEN = 10.0  # |eta| reported for (near) zero-pT particles, as generator records do


@dataclass(frozen=True)
class P4:
    """Arrays of four-momenta (GeV)."""

    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray

    @classmethod
    def from_pt_eta_phi_m(cls, pt, eta, phi, m, dtype=np.float64) -> P4:
        pt, eta, phi, m = (np.asarray(x, dtype=dtype) for x in (pt, eta, phi, m))
        pz = pt * np.sinh(eta)
        return cls(pt * np.cos(phi), pt * np.sin(phi), pz, np.sqrt(pt**2 + pz**2 + m**2))

    @classmethod
    def from_pt_y_phi_m(cls, pt, y, phi, m) -> P4:
        """From rapidity: E = mT cosh y, pz = mT sinh y."""
        pt, y, phi, m = (np.asarray(x, dtype=np.float64) for x in (pt, y, phi, m))
        mt = np.sqrt(pt**2 + m**2)
        return cls(pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y), mt * np.cosh(y))

    @classmethod
    def concatenate(cls, vectors: list[P4]) -> P4:
        return cls(*(np.concatenate([getattr(v, c) for v in vectors]) for c in ("px", "py", "pz", "e")))

    def __add__(self, other: P4) -> P4:
        return P4(self.px + other.px, self.py + other.py, self.pz + other.pz, self.e + other.e)

    def __sub__(self, other: P4) -> P4:
        return P4(self.px - other.px, self.py - other.py, self.pz - other.pz, self.e - other.e)

    def __getitem__(self, index) -> P4:
        return P4(self.px[index], self.py[index], self.pz[index], self.e[index])

    def scaled(self, factor) -> P4:
        return P4(self.px * factor, self.py * factor, self.pz * factor, self.e * factor)

    def __len__(self) -> int:
        return len(self.px)

    @property
    def pt(self) -> np.ndarray:
        return np.hypot(self.px, self.py)

    @property
    def p(self) -> np.ndarray:
        return np.sqrt(self.px**2 + self.py**2 + self.pz**2)

    @property
    def phi(self) -> np.ndarray:
        return np.arctan2(self.py, self.px)

    @property
    def eta(self) -> np.ndarray:
        pt = self.pt
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = np.arcsinh(self.pz / pt)
        return np.where(pt > 0, np.clip(eta, -ETA_MAX_GEN, ETA_MAX_GEN), np.sign(self.pz) * ETA_MAX_GEN)

    @property
    def mass(self) -> np.ndarray:
        m2 = self.e**2 - self.px**2 - self.py**2 - self.pz**2
        return np.sign(m2) * np.sqrt(np.abs(m2))

    def boost(self, bx, by, bz) -> P4:
        """Lorentz boost by velocity (bx, by, bz) (|b| < 1)."""
        b2 = bx**2 + by**2 + bz**2
        gamma = 1.0 / np.sqrt(1.0 - b2)
        bp = bx * self.px + by * self.py + bz * self.pz
        with np.errstate(divide="ignore", invalid="ignore"):
            g2 = np.where(b2 > 0, (gamma - 1.0) / b2, 0.0)
        coef = g2 * bp + gamma * self.e
        return P4(self.px + coef * bx, self.py + coef * by, self.pz + coef * bz, gamma * (self.e + bp))

    def velocity(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.px / self.e, self.py / self.e, self.pz / self.e


def isotropic_directions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cos_t = rng.uniform(-1.0, 1.0, n)
    sin_t = np.sqrt(1.0 - cos_t**2)
    phi = rng.uniform(-np.pi, np.pi, n)
    return sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t


def two_body_momentum(m, m1, m2) -> np.ndarray:
    """Momentum of either daughter in the rest frame of a parent of mass m."""
    arg = (m**2 - (m1 + m2) ** 2) * (m**2 - (m1 - m2) ** 2)
    return np.sqrt(np.maximum(arg, 0.0)) / (2.0 * m)


def back_to_back(p, m1, m2, ux, uy, uz) -> tuple[P4, P4]:
    """Two daughters with momentum p along +/-u in their common rest frame."""
    e1 = np.sqrt(p**2 + m1**2)
    e2 = np.sqrt(p**2 + m2**2)
    return P4(p * ux, p * uy, p * uz, e1), P4(-p * ux, -p * uy, -p * uz, e2)


def two_body_decay(rng: np.random.Generator, parent: P4, m1, m2) -> tuple[P4, P4]:
    """Isotropic two-body decay in the parent rest frame, boosted to the lab."""
    m = parent.mass
    ux, uy, uz = isotropic_directions(rng, len(parent))
    d1, d2 = back_to_back(two_body_momentum(m, m1, m2), m1, m2, ux, uy, uz)
    bx, by, bz = parent.velocity()
    return d1.boost(bx, by, bz), d2.boost(bx, by, bz)


def breit_wigner(rng: np.random.Generator, n: int, mass: float, width: float, n_widths: float) -> np.ndarray:
    """Cauchy (non-relativistic Breit-Wigner) masses truncated to mass +/- n_widths * width."""
    lo, hi = (np.arctan(s * n_widths * 2.0) for s in (-1.0, 1.0))
    u = rng.uniform(lo, hi, n)
    return mass + 0.5 * width * np.tan(u)


def power_law(rng: np.random.Generator, n: int, x_min, index: float, x_max: float = np.inf) -> np.ndarray:
    """Power-law spectrum dN/dx ~ x^-index on [x_min, x_max] (index > 1), by inversion."""
    k = index - 1.0
    tail = (x_min / x_max) ** k if np.isfinite(x_max) else 0.0
    u = rng.uniform(0.0, 1.0, n)
    return x_min * (1.0 - u * (1.0 - tail)) ** (-1.0 / k)


def delta_phi(a, b) -> np.ndarray:
    return (a - b + np.pi) % (2.0 * np.pi) - np.pi
