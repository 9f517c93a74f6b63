"""The processing stage's use of the input check: one metadata read per file."""

import pytest
from coffea.processor import Runner

from utils.datasets.fileset import build_fileset
from utils.datasets.inputs import preflight
from utils.processing.run import ProcessingOptions, coffea_metadata_cache, process_fileset


def test_the_metadata_cache_holds_what_coffeas_preprocessing_would_read(tiny_dataset):
    fileset, report = preflight(build_fileset(tiny_dataset, 1))
    cache = coffea_metadata_cache(fileset, report)
    fetched = {}
    for dataset, entry in fileset.items():
        for path, tree in entry["files"].items():
            for meta in Runner.metadata_fetcher_root(30, False, {}, _filemeta(dataset, path, tree, entry)):
                fetched[meta] = meta.metadata
    assert cache == fetched and len(cache) == sum(len(e["files"]) for e in fileset.values())


def _filemeta(dataset, path, tree, entry):
    from coffea.processor.executor import FileMeta

    return FileMeta(dataset, path, tree, dict(entry["metadata"]))


def test_processing_does_not_read_the_file_metadata_again(tiny_dataset, config, monkeypatch):
    def no_second_read(*args, **kwargs):
        raise AssertionError("coffea preprocessing opened a file the input check had read")

    monkeypatch.setattr(Runner, "metadata_fetcher_root", staticmethod(no_second_read))
    fileset = build_fileset(tiny_dataset, 1)
    result = process_fileset(fileset, ProcessingOptions(executor="iterative", systematics=False), config)
    assert result.metrics["entries"] == sum(e["metadata"]["nevts"] for e in fileset.values())


def test_a_file_without_a_check_is_left_to_coffea(tiny_dataset):
    fileset, report = preflight(build_fileset(tiny_dataset, 1))
    report.files.clear()
    assert coffea_metadata_cache(fileset, report) == {}


@pytest.mark.parametrize("treename", [None, "events"])
def test_cache_keys_follow_the_runners_tree_name_rule(tiny_dataset, treename):
    fileset, report = preflight(build_fileset(tiny_dataset, 1))
    if treename:
        fileset = {s: {**e, "treename": treename} for s, e in fileset.items()}
    assert {k.treename for k in coffea_metadata_cache(fileset, report)} == {"events"}
