"""Truth labels of jets from the GenPart decay chains (the AGC main line's definition).

- The *distinct parent* of a particle is its first ancestor with another pdgId (following
  ``genPartIdxMother`` through the particle's own copies); X's *distinct children* are the
  particles whose distinct parent is X.
- Candidate quarks: 1 <= |pdgId| <= 6, ``isLastCopy`` (bit 13 of ``statusFlags``), whose distinct
  parent is a top (|pdgId| 6) or a W (|pdgId| 24).
- Each jet takes the nearest candidate within dR <= 0.4 (dphi wrapped); its label is the
  |pdgId| of the candidate's distinct parent, 6 or 24; a top's label is -6 when the top's distinct
  children's distinct children hold a charged lepton and a neutrino (the leptonic top); a jet
  without a candidate in reach is :data:`NO_MATCH` (100).

The correct assignment of an event exists when, among its first ``min(nJet, 6)`` jets, exactly
two are labelled 24 (W1, W2), one 6 (b_had) and one -6 (b_lep); with four jets this is the AGC's
"labels sum to 48".
"""

from __future__ import annotations

import awkward as ak
import numba
import numpy as np

from utils.ml.assignment.features import MAX_JETS, permutation_index

W_LABEL, TOP_HAD_LABEL, TOP_LEP_LABEL, NO_MATCH = 24, 6, -6, 100
IS_LAST_COPY_BIT = 13
MATCH_DR = 0.4
#: GenPart branches the labels read
READ_BRANCHES: tuple[str, ...] = (
    "GenPart_pt", "GenPart_eta", "GenPart_phi", "GenPart_pdgId", "GenPart_genPartIdxMother", "GenPart_statusFlags",
)  # fmt: skip


@numba.njit(cache=True)
def _labels_kernel(offsets, pdg, mother, flags, eta, phi, jet_eta, jet_phi, n_jets, max_dr, out):
    for i in range(len(offsets) - 1):
        start, n = offsets[i], offsets[i + 1] - offsets[i]
        parent = np.full(n, -1, np.int64)
        for k in range(n):
            m = mother[start + k]
            steps = 0
            while 0 <= m < n and pdg[start + m] == pdg[start + k] and steps < n:
                m = mother[start + m]
                steps += 1
            parent[k] = m if 0 <= m < n and steps < n else -1
        has_lepton = np.zeros(n, np.bool_)
        has_neutrino = np.zeros(n, np.bool_)
        for k in range(n):
            j = parent[k]
            if j < 0 or parent[j] < 0:
                continue
            a = abs(pdg[start + k])
            if a == 11 or a == 13 or a == 15:
                has_lepton[parent[j]] = True
            elif a == 12 or a == 14 or a == 16:
                has_neutrino[parent[j]] = True
        for jet in range(n_jets[i]):
            best_dr = max_dr
            label = 100
            for k in range(n):
                a = abs(pdg[start + k])
                x = parent[k]
                if a < 1 or a > 6 or (flags[start + k] >> 13) & 1 == 0 or x < 0:
                    continue
                ax = abs(pdg[start + x])
                if ax != 6 and ax != 24:
                    continue
                dphi = (jet_phi[i, jet] - phi[start + k] + np.pi) % (2 * np.pi) - np.pi
                dr = np.sqrt((jet_eta[i, jet] - eta[start + k]) ** 2 + dphi**2)
                if dr <= best_dr:
                    if dr == best_dr and label != 100:
                        continue  # the first of equally near candidates
                    best_dr = dr
                    if ax == 24:
                        label = 24
                    elif has_lepton[x] and has_neutrino[x]:
                        label = -6
                    else:
                        label = 6
            out[i, jet] = label


def jet_labels(genpart, jet_eta: np.ndarray, jet_phi: np.ndarray, n_jets: np.ndarray) -> np.ndarray:
    """Labels ``[n, jets]`` (int64: 24, 6, -6 or 100; 0 beyond an event's ``n_jets``) of the jets
    ``jet_eta``/``jet_phi`` ``[n, jets]``, from ``genpart`` (a GenPart collection with pdgId,
    genPartIdxMother, statusFlags, eta, phi, one list per event)."""
    counts = ak.to_numpy(ak.num(genpart.pdgId)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def flat(field, dtype):
        return ak.to_numpy(ak.flatten(genpart[field])).astype(dtype)

    out = np.zeros(np.shape(jet_eta), dtype=np.int64)
    _labels_kernel(
        offsets, flat("pdgId", np.int64), flat("genPartIdxMother", np.int64), flat("statusFlags", np.int64),
        flat("eta", np.float64), flat("phi", np.float64), np.ascontiguousarray(jet_eta, dtype=np.float64),
        np.ascontiguousarray(jet_phi, dtype=np.float64), np.asarray(n_jets, dtype=np.int64), MATCH_DR, out,
    )  # fmt: skip
    return out


def truth_permutation(labels: np.ndarray, n_jets: np.ndarray) -> np.ndarray:
    """Row of the correct assignment in ``permutations(n_jets)`` per event (``labels`` ``[n, 6]``
    of the first jets), or -1 when the labels do not give exactly two W jets, one b_had and one
    b_lep."""
    out = np.full(len(labels), -1, dtype=np.int64)
    present = np.arange(labels.shape[1])[None, :] < np.asarray(n_jets)[:, None]
    lab = np.where(present, labels, 0)
    ok = ((lab == W_LABEL).sum(1) == 2) & ((lab == TOP_HAD_LABEL).sum(1) == 1) & ((lab == TOP_LEP_LABEL).sum(1) == 1)
    for n in range(4, MAX_JETS + 1):
        rows = np.flatnonzero(ok & (n_jets == n))
        if len(rows) == 0:
            continue
        sub = lab[rows]
        w = np.sort(np.argsort(sub != W_LABEL, axis=1, kind="stable")[:, :2], axis=1)
        perm = np.stack([w[:, 1], w[:, 0], np.argmax(sub == TOP_HAD_LABEL, 1), np.argmax(sub == TOP_LEP_LABEL, 1)], 1)
        out[rows] = permutation_index(n, perm)
    return out
