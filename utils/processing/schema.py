"""A coffea NanoEvents schema for the 2015 CMS "POET ntuple" format (one TTree ``events``).

Branches named ``<collection>_<field>`` become records ``events.<collection>.<field>``. Jagged
collections take their offsets from one of their own jagged branches (``pt`` when present), so
no counter branch needs to be read, and the same schema reads the original files, the embedded
stand-in, and ServiceX-delivered skims (whatever counters they carry: ``number<name>``,
``n<name>`` or ``n<name>_<field>``).

coffea's vector behaviour accepts one coordinate system per record: jets, taus and generator
particles are ``PtEtaPhiMLorentzVector`` (their stored energy is kept as ``stored_energy``),
electrons, muons, photons and trigger objects ``PtEtaPhiELorentzVector`` (``e`` becomes
``energy``); stored Cartesian components are kept as ``stored_px``, ``stored_py``, ``stored_pz``.
Branches that fit no collection stay top-level fields, so files with extra branches work.
"""

from __future__ import annotations

import re
from typing import Any

from coffea.nanoevents.schemas.base import BaseSchema, zip_forms

# collection -> Lorentz-vector record name
COLLECTIONS: dict[str, str] = {
    "jet": "PtEtaPhiMLorentzVector",
    "tau": "PtEtaPhiMLorentzVector",
    "GenPart": "PtEtaPhiMLorentzVector",
    "electron": "PtEtaPhiELorentzVector",
    "muon": "PtEtaPhiELorentzVector",
    "photon": "PtEtaPhiELorentzVector",
    "trigobj": "PtEtaPhiELorentzVector",
}
_RENAMES_M = {"e": "stored_energy", "px": "stored_px", "py": "stored_py", "pz": "stored_pz"}
_RENAMES_E = {"e": "energy", "px": "stored_px", "py": "stored_py", "pz": "stored_pz"}
# each jagged collection member also stays reachable as ``events[OWN_PREFIX + branch]`` with its
# own offsets: the zipped collection takes every member's offsets from one branch, so a sibling
# with other counts per event would be misaligned silently; its own offsets reveal it
OWN_PREFIX = "_own_"
_COUNTER = re.compile(r"^(number\w+|numGenPart|n[A-Za-z]+(_\w+)?)$")


def _is_jagged(form: dict[str, Any]) -> bool:
    return form["class"].startswith("ListOffsetArray") or form["class"].startswith("ListArray")


class AGCSchema(BaseSchema):
    """Schema of the 2015 CMS open data ntuples used by the AGC ttbar analysis."""

    __dask_capable__ = True

    def __init__(self, base_form: dict[str, Any], *args, **kwargs):
        super().__init__(base_form)
        fields, contents = self._build(dict(zip(base_form["fields"], base_form["contents"], strict=True)))
        self._form["fields"] = fields
        self._form["contents"] = contents

    @staticmethod
    def _build(branches: dict[str, dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
        out: dict[str, dict[str, Any]] = {}
        used: set[str] = set()
        for name, record in COLLECTIONS.items():
            prefix = name + "_"
            members = {k[len(prefix) :]: v for k, v in branches.items() if k.startswith(prefix) and _is_jagged(v)}
            if not members:
                continue
            renames = _RENAMES_M if record.endswith("MLorentzVector") else _RENAMES_E
            content = {renames.get(f, f): form for f, form in members.items()}
            has_vector = {"pt", "eta", "phi"} <= set(content) and (
                "mass" in content if record.endswith("MLorentzVector") else "energy" in content
            )
            # offsets from the pt branch (always read by the analysis), else the first field
            first = "pt" if "pt" in content else next(iter(content))
            content = {first: content[first], **{k: v for k, v in content.items() if k != first}}
            out[name] = zip_forms(content, name, record if has_vector else None)
            used.update(prefix + f for f in members)
            for f in members:
                out[OWN_PREFIX + prefix + f] = branches[prefix + f]
        # PV: jagged vertex fields, scalars stay top level
        pv = {k[3:]: v for k, v in branches.items() if k.startswith("PV_") and _is_jagged(v)}
        if pv:
            out["PV"] = zip_forms(pv, "PV")
            used.update("PV_" + f for f in pv)
        met = {k[4:]: v for k, v in branches.items() if k.startswith("met_") and not _is_jagged(v)}
        if met:
            out["met"] = zip_forms(met, "met")
            used.update("met_" + f for f in met)
        for k, v in branches.items():
            if k in used or (_COUNTER.match(k) and not k.startswith("number") and k != "numGenPart"):
                continue  # uproot-style n<name>_<field> counters are redundant with the offsets
            out[k] = v
        return list(out), list(out.values())

    @classmethod
    def behavior(cls) -> dict:
        from coffea.nanoevents.methods import base, vector

        behavior: dict = {}
        behavior.update(base.behavior)
        behavior.update(vector.behavior)
        return behavior


def branch_to_field(branch: str) -> tuple[str, ...]:
    """Where a branch of the file lives in the events record, e.g. ``jet_e`` ->
    ``("jet", "stored_energy")``, ``electron_e`` -> ``("electron", "energy")``, ``met_pt`` ->
    ``("met", "pt")``, ``numberjet`` -> ``("numberjet",)``."""
    collection, _, field = branch.partition("_")
    if collection in COLLECTIONS and field:
        renames = _RENAMES_M if COLLECTIONS[collection].endswith("MLorentzVector") else _RENAMES_E
        return collection, renames.get(field, field)
    if collection in ("met", "PV") and field and field not in ("npvs", "npvsGood"):
        return collection, field
    return (branch,)
