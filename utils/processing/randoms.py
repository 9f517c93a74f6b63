"""Reproducible random numbers of the analysis: pure functions of a key (a jet's stored
kinematics, an event's identifiers) and a named seed, the same for any chunking, executor or
skim. Shared by the ntuple selection kernel, the NanoAOD selection and the ML splits."""

from __future__ import annotations

import math

import numba
import numpy as np

# --- reproducible per-jet random numbers ---------------------------------------------------------
# The resolution smearing of a jet must not depend on entry numbers, chunking, executor or on
# what a ServiceX skim removed. It is derived from the jet itself: a counter-based hash
# (SplitMix64 finaliser) of the bit patterns of its stored pt, eta and phi and the configured seed,
# turned into a normal number by the Box-Muller transform and clipped at 5 sigma.

#: the resolution smearing's normal numbers are clipped at this many sigma
NORMAL_CLIP = 5.0
#: the golden-ratio increment of SplitMix64
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


@numba.njit(inline="always")
def splitmix64(z):
    """The SplitMix64 finaliser of a uint64 (or, called from Python, of a uint64 array:
    multiplications wrap modulo 2**64). The one implementation of the project's hashes."""
    z = (z ^ (z >> numba.uint64(30))) * numba.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> numba.uint64(27))) * numba.uint64(0x94D049BB133111EB)
    return z ^ (z >> numba.uint64(31))


@numba.njit(inline="always")
def jet_normal(pt_bits, eta_bits, phi_bits, seed):
    key = (
        numba.uint64(pt_bits)
        ^ (numba.uint64(eta_bits) << numba.uint64(21))
        ^ (numba.uint64(phi_bits) << numba.uint64(42))
        ^ (numba.uint64(phi_bits) >> numba.uint64(22))
    )
    return normal_of_key(key, seed)


@numba.njit(inline="always")
def normal_of_key(key, seed):
    """A standard normal number (clipped at 5 sigma) that is a pure function of a uint64 key and
    a seed: SplitMix64 twice, then Box-Muller."""
    h1 = splitmix64(key + numba.uint64(seed) * numba.uint64(GOLDEN_GAMMA))
    h2 = splitmix64(h1 + numba.uint64(GOLDEN_GAMMA))
    # 53-bit uniforms in (0, 1]
    u1 = ((h1 >> numba.uint64(11)) + numba.uint64(1)) * (1.0 / 9007199254740992.0)
    u2 = (h2 >> numba.uint64(11)) * (1.0 / 9007199254740992.0)
    z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    return min(NORMAL_CLIP, max(-NORMAL_CLIP, z))


@numba.njit(cache=True)
def _resolution_factors_kernel(pt_bits, eta_bits, phi_bits, seed, sigma, out):
    for i in range(pt_bits.shape[0]):
        out[i] = 1.0 + sigma * jet_normal(pt_bits[i], eta_bits[i], phi_bits[i], seed)


def jet_resolution_factors(pt, eta, phi, seed: int, sigma: float) -> np.ndarray:
    """The pt_res_up smearing factor of each jet (flat float32 arrays in, float64 out)."""
    pt, eta, phi = (np.ascontiguousarray(a, dtype=np.float32) for a in (pt, eta, phi))
    out = np.empty(len(pt), dtype=np.float64)
    _resolution_factors_kernel(pt.view(np.uint32), eta.view(np.uint32), phi.view(np.uint32), seed, sigma, out)
    return out
