"""The events record coffea builds from the ntuple branches."""

import awkward as ak
import uproot
from coffea.nanoevents import NanoEventsFactory

from utils.processing.schema import AGCSchema, branch_to_field
from utils.processing.selection import READ_BRANCHES


def test_branch_to_field_names():
    assert branch_to_field("jet_pt") == ("jet", "pt")
    assert branch_to_field("jet_e") == ("jet", "stored_energy")
    assert branch_to_field("electron_e") == ("electron", "energy")
    assert branch_to_field("met_pt") == ("met", "pt")
    assert branch_to_field("numberjet") == ("numberjet",)


def test_every_analysis_branch_is_a_field_of_the_events(poet_file):
    events = NanoEventsFactory.from_root({str(poet_file): "events"}, schemaclass=AGCSchema, mode="eager").events()
    with uproot.open(poet_file) as f:
        tree = f["events"]
        for branch in READ_BRANCHES:
            field = branch_to_field(branch)
            values = events[field]
            assert ak.all(ak.num(values) == ak.num(events[field[0]])), branch
            assert ak.to_list(ak.flatten(values)) == ak.to_list(ak.flatten(tree[branch].array())), branch
