"""GenPart of the embedded NanoAOD: the generator record as decay chains with copies, mother
indices and status flags, in the conventions of CMS NanoAOD (Pythia 8 records).

Per event, mothers precede daughters; ``genPartIdxMother`` is the index of the mother within the
event, -1 for none. Tops, W bosons and quarks (W daughters, the b of t -> W b) appear twice: a
first copy (status 22 for t and W, 23 for quarks; flags isPrompt, isHardProcess,
fromHardProcess, isFirstCopy) and a last copy (status 62 t, 52 W, 71 quarks; isPrompt,
fromHardProcess, fromHardProcessBeforeFSR, isLastCopy) whose mother is the first copy.
Daughters hang on the last copy of their parent: t -> W b, W -> q q' / l nu / tau nu,
tau -> e/mu (status 1, tau-decay-product flags, not prompt); a hadronic tau decay keeps only the
tau (status 2). Leptons and neutrinos of the W are single copies (status 1, isFirstCopy and
isLastCopy). Other record rows (the partner quark of single top) have no mother.

The "distinct parent" of a last-copy quark (its first ancestor with another pdgId) is therefore
the W or the top, as the AGC's jet-parton truth labels need (see ``agc-nanoaod-facts.md``).
"""

from __future__ import annotations

import numpy as np

from utils.datasets.embedded.events import Jagged, offsets_of
from utils.datasets.embedded.particles import Origin

# statusFlags bits (CMS NanoAOD GenPart)
IS_PROMPT = 1 << 0
IS_TAU_DECAY_PRODUCT = 1 << 2
IS_PROMPT_TAU_DECAY_PRODUCT = 1 << 3
IS_DIRECT_TAU_DECAY_PRODUCT = 1 << 4
IS_DIRECT_PROMPT_TAU_DECAY_PRODUCT = 1 << 5
IS_HARD_PROCESS = 1 << 7
FROM_HARD_PROCESS = 1 << 8
IS_HARD_PROCESS_TAU_DECAY_PRODUCT = 1 << 9
IS_DIRECT_HARD_PROCESS_TAU_DECAY_PRODUCT = 1 << 10
FROM_HARD_PROCESS_BEFORE_FSR = 1 << 11
IS_FIRST_COPY = 1 << 12
IS_LAST_COPY = 1 << 13
IS_LAST_COPY_BEFORE_FSR = 1 << 14

FIRST_COPY_FLAGS = IS_PROMPT | IS_HARD_PROCESS | FROM_HARD_PROCESS | IS_FIRST_COPY
LAST_COPY_FLAGS = IS_PROMPT | FROM_HARD_PROCESS | FROM_HARD_PROCESS_BEFORE_FSR | IS_LAST_COPY
SINGLE_COPY_FLAGS = FIRST_COPY_FLAGS | FROM_HARD_PROCESS_BEFORE_FSR | IS_LAST_COPY | IS_LAST_COPY_BEFORE_FSR
TAU_PRODUCT_FLAGS = (
    IS_TAU_DECAY_PRODUCT
    | IS_PROMPT_TAU_DECAY_PRODUCT
    | IS_DIRECT_TAU_DECAY_PRODUCT
    | IS_DIRECT_PROMPT_TAU_DECAY_PRODUCT
    | IS_HARD_PROCESS_TAU_DECAY_PRODUCT
    | IS_DIRECT_HARD_PROCESS_TAU_DECAY_PRODUCT
    | FROM_HARD_PROCESS
    | IS_FIRST_COPY
    | IS_LAST_COPY
)
LAST_COPY_STATUS = {6: 62, 24: 52}  # |pdgId| -> status of the last copy; quarks: 71


def genpart_chains(record: Jagged) -> Jagged:
    """The generator record of an :class:`EventBatch` (``collections['GenPart']``, with the
    ``origin``/``top_sign`` truth) as NanoAOD GenPart: copies, ``genPartIdxMother`` (within the
    event) and ``statusFlags``; see the module doc for the conventions."""
    counts = record.counts.astype(np.int64)
    n = len(counts)
    ev = np.repeat(np.arange(n, dtype=np.int64), counts)
    pdg = record.fields["pdgId"].astype(np.int32)
    apdg = np.abs(pdg)
    m = len(pdg)
    if m and ("origin" not in record.truth or "top_sign" not in record.truth):
        raise ValueError("GenPart record lacks the origin/top_sign truth the decay chains are built from")
    origin = record.truth.get("origin", np.zeros(m, np.int8))
    top_sign = record.truth.get("top_sign", np.zeros(m, np.int8)).astype(np.int64)
    status_in = record.fields["status"].astype(np.int32)
    group = ev * 3 + (top_sign + 1)  # one decay chain per (event, top sign)

    is_top, is_w = apdg == 6, apdg == 24
    is_tau = (apdg == 15) & (status_in == 2)
    w_daughter = origin == Origin.W_DAUGHTER
    is_taulep = w_daughter & np.isin(apdg, (11, 13)) & np.isin(group, group[is_tau]) & ~is_tau
    is_wkid = w_daughter & ~is_taulep
    is_topb = (origin == Origin.TOP_B) & ~is_top & ~is_w
    two_copies = is_top | is_w | ((is_topb | is_wkid) & (apdg <= 5))
    # level: the generation of a row (mothers at lower levels, so they come first)
    level0 = np.select([is_top, is_w | is_topb, is_wkid, is_taulep], [0, 2, 4, 6], 2).astype(np.int64)

    src = np.concatenate([np.arange(m), np.flatnonzero(two_copies)])
    copy = np.concatenate([np.zeros(m, np.int8), np.ones(int(two_copies.sum()), np.int8)])
    level = level0[src] + copy
    order = np.lexsort((copy, src, level, ev[src]))
    src, copy, level = src[order], copy[order], level[order]
    n_out = len(src)
    out_ev = ev[src]
    position = np.arange(n_out)

    def locate(select: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Output position of the row ``select`` (a mask over outputs) with each of ``keys``
        (groups), -1 where the group has none."""
        cand = np.flatnonzero(select)
        cand_keys = group[src[cand]]
        sort = np.argsort(cand_keys, kind="stable")
        cand, cand_keys = cand[sort], cand_keys[sort]
        where = np.searchsorted(cand_keys, keys)
        where = np.minimum(where, max(len(cand) - 1, 0))
        found = (len(cand) > 0) & (cand_keys[where] == keys) if len(cand) else np.zeros(len(keys), bool)
        return np.where(found, cand[where] if len(cand) else -1, -1)

    last_copy = (copy == 1) | ~two_copies[src]
    mother = np.full(n_out, -1, dtype=np.int64)
    first = copy == 0
    # last copies hang on their first copy (same source row)
    first_position = np.empty(m, dtype=np.int64)
    first_position[src[first]] = position[first]
    mother[~first] = first_position[src[~first]]
    g = group[src]
    top_last = is_top[src] & last_copy
    w_last = is_w[src] & last_copy
    for mask, parent in (
        (first & is_w[src] & (top_sign[src] != 0), top_last),
        (first & is_topb[src], top_last),
        (first & is_wkid[src], w_last),
        (first & is_taulep[src], is_tau[src]),
    ):
        idx = np.flatnonzero(mask)
        mother[idx] = locate(parent, g[idx])
    out_counts = np.bincount(out_ev, minlength=n).astype(np.int64)
    start = offsets_of(out_counts)[:-1]
    local_mother = np.where(mother >= 0, mother - start[out_ev], -1).astype(np.int32)

    status = status_in[src].copy()
    a = apdg[src]
    status[(copy == 0) & two_copies[src]] = np.where(a[(copy == 0) & two_copies[src]] <= 5, 23, 22)
    last_status = np.where(a == 6, LAST_COPY_STATUS[6], np.where(a == 24, LAST_COPY_STATUS[24], 71))
    status[copy == 1] = last_status[copy == 1]
    flags = np.where(copy == 1, LAST_COPY_FLAGS, np.where(two_copies[src], FIRST_COPY_FLAGS, SINGLE_COPY_FLAGS))
    flags = np.where(is_taulep[src], TAU_PRODUCT_FLAGS, flags).astype(np.int32)
    fields = {
        "pt": record.fields["pt"][src].astype(np.float32),
        "eta": record.fields["eta"][src].astype(np.float32),
        "phi": record.fields["phi"][src].astype(np.float32),
        "mass": record.fields["mass"][src].astype(np.float32),
        "pdgId": pdg[src],
        "genPartIdxMother": local_mother,
        "status": status.astype(np.int32),
        "statusFlags": flags,
    }
    return Jagged(out_counts.astype(np.int32), fields)
