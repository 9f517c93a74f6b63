"""The luminosity of the data actually processed: it follows the files a subset keeps and the
events the input checks leave (hand-made dataset descriptions; the files are never opened)."""

import json

import pytest

from utils.datasets.fileset import build_fileset, data_luminosity
from utils.errors import ConfigError

# data: 30 + 10 events recorded at 100 /pb: the files hold 75 and 25 /pb
DESCRIPTION = {
    "data": {"nominal": {"files": [{"path": "d0.root", "nevts": 30}, {"path": "d1.root", "nevts": 10}],
                         "nevts_total": 40, "lumi": 100.0}},
    "ttbar": {"nominal": {"files": [{"path": "t0.root", "nevts": 5}], "nevts_total": 5}},
}  # fmt: skip


def _write(tmp_path, description):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(description))
    return path


def _data(fileset):
    return fileset["data__nominal"]


def test_full_sample_has_the_recorded_luminosity(tmp_path):
    fileset = build_fileset(_write(tmp_path, DESCRIPTION), cross_sections={"ttbar": 1.0})
    assert data_luminosity(fileset) == pytest.approx(100.0)
    assert _data(fileset)["metadata"]["lumi"] == pytest.approx(100.0)


def test_one_file_has_its_share(tmp_path):
    fileset = build_fileset(_write(tmp_path, DESCRIPTION), n_files_max_per_sample=1, cross_sections={"ttbar": 1.0})
    assert data_luminosity(fileset) == pytest.approx(75.0)  # 100 x 30 / 40


@pytest.mark.parametrize(("max_events", "lumi"), [(1, 75.0), (30, 75.0), (31, 100.0), (-1, 100.0)])
def test_max_events_takes_whole_files_and_their_luminosity(tmp_path, max_events, lumi):
    fileset = build_fileset(_write(tmp_path, DESCRIPTION), max_events_per_sample=max_events,
                            cross_sections={"ttbar": 1.0})  # fmt: skip
    assert data_luminosity(fileset) == pytest.approx(lumi)


def test_skipped_file_and_lost_entries_scale_the_luminosity(tmp_path):
    fileset = build_fileset(_write(tmp_path, DESCRIPTION), cross_sections={"ttbar": 1.0})
    data = _data(fileset)
    # as the input checks drop an unreadable file under ON_BAD_INPUT="skip" ...
    d1 = next(p for p in data["files"] if p.endswith("d1.root"))
    del data["files"][d1]
    data["metadata"]["nevts"] -= 10
    assert data_luminosity(fileset) == pytest.approx(75.0)
    # ... and as processing subtracts the entries of unreadable chunks: 24 of d0's 30 events
    data["metadata"]["nevts"] -= 6
    assert data_luminosity(fileset) == pytest.approx(60.0)  # 75 x 24 / 30


def test_per_file_luminosity_is_used_where_recorded(tmp_path):
    desc = json.loads(json.dumps(DESCRIPTION))
    desc["data"]["nominal"]["files"][0]["lumi"] = 60.0
    desc["data"]["nominal"]["files"][1]["lumi"] = 40.0
    fileset = build_fileset(_write(tmp_path, desc), n_files_max_per_sample=1, cross_sections={"ttbar": 1.0})
    assert data_luminosity(fileset) == pytest.approx(60.0)


def test_per_file_luminosity_must_add_up_and_be_complete(tmp_path):
    desc = json.loads(json.dumps(DESCRIPTION))
    desc["data"]["nominal"]["files"][0]["lumi"] = 60.0
    with pytest.raises(ConfigError, match="for some files only"):
        build_fileset(_write(tmp_path, desc), cross_sections={"ttbar": 1.0})
    desc["data"]["nominal"]["files"][1]["lumi"] = 50.0
    with pytest.raises(ConfigError, match=r"add up to 110 /pb.*'lumi' is 100 /pb"):
        build_fileset(_write(tmp_path, desc), cross_sections={"ttbar": 1.0})


def test_data_without_recorded_luminosity_stands_for_the_full_luminosity(tmp_path):
    """As the real CMS list: no 'lumi'; the sample is the analysis luminosity, a subset its share."""
    desc = json.loads(json.dumps(DESCRIPTION))
    del desc["data"]["nominal"]["lumi"]
    path = _write(tmp_path, desc)
    full = build_fileset(path, cross_sections={"ttbar": 1.0})
    assert data_luminosity(full) is None
    assert data_luminosity(full, 3378.0) == pytest.approx(3378.0)
    one = build_fileset(path, n_files_max_per_sample=1, cross_sections={"ttbar": 1.0})
    assert data_luminosity(one, 3378.0) == pytest.approx(3378.0 * 30 / 40)


def test_no_data_sample_has_no_luminosity(tmp_path):
    fileset = build_fileset(_write(tmp_path, DESCRIPTION), processes=["ttbar"], cross_sections={"ttbar": 1.0})
    assert data_luminosity(fileset, 3378.0) is None


def test_processing_normalises_to_the_data_read_when_a_file_is_skipped(tiny_dataset, config, tmp_path):
    """Real processing: of two data files recorded at 200 /pb together, one is missing and skipped
    under ON_BAD_INPUT='skip'; the MC is normalised to the other file's 100 /pb."""
    from utils.processing.run import ProcessingOptions, process_fileset

    tiny = json.loads(tiny_dataset.read_text())["data"]["nominal"]["files"][0]
    n = tiny["nevts"]
    desc = {
        "data": {"nominal": {"files": [{"path": str(tiny_dataset.parent / tiny["path"]), "nevts": n},
                                       {"path": "missing.root", "nevts": n}],
                             "nevts_total": 2 * n, "lumi": 200.0}},
    }  # fmt: skip
    fileset = build_fileset(_write(tmp_path, desc))
    options = ProcessingOptions(executor="iterative", on_bad_input="skip", disable_processing=True)
    result = process_fileset(fileset, options, config, luminosity_from_data=True)
    assert result.mc_luminosity == pytest.approx(100.0)
    assert [b.path for b in result.input_report.bad] == [str(tmp_path / "missing.root")]
    # the same fileset with the configured luminosity when FIT_DATA is not 'data'
    assert process_fileset(fileset, options, config).mc_luminosity == pytest.approx(config.luminosity)


def test_processing_with_no_data_left_is_an_error(tiny_dataset, config, tmp_path):
    from utils.processing.run import ProcessingOptions, process_fileset

    ttbar = json.loads(tiny_dataset.read_text())["ttbar"]["nominal"]["files"][0]
    desc = {
        "data": {"nominal": {"files": [{"path": "missing.root", "nevts": 10}], "nevts_total": 10, "lumi": 5.0}},
        "ttbar": {"nominal": {"files": [{"path": str(tiny_dataset.parent / ttbar["path"]), "nevts": ttbar["nevts"]}],
                              "nevts_total": ttbar["nevts"]}},
    }  # fmt: skip
    fileset = build_fileset(_write(tmp_path, desc), cross_sections={"ttbar": 1.0})
    options = ProcessingOptions(executor="iterative", on_bad_input="skip", disable_processing=True)
    with pytest.raises(ConfigError, match="no data events were processed"):
        process_fileset(fileset, options, config, luminosity_from_data=True)


@pytest.mark.parametrize("preset", ["quickstart", "benchmark"])
def test_the_generator_records_each_data_files_share(preset, tmp_path):
    """The quick start's preselected data (and the benchmark's plain data) in 2 files: each file's
    'lumi' is the sample's times its share of the generated events, and a one-file subset has it.
    Only the plan and the description are made here; no event is generated."""
    from utils.datasets.embedded.dataset import _fileset, plan_dataset
    from utils.datasets.embedded.presets import get_preset

    plan = plan_dataset(get_preset(preset))
    data_tasks = [t for t in plan.tasks if t.process == "data"]
    assert len(data_tasks) == 2
    generated = [t.n_events for t in data_tasks]
    # written events: for preselected data a tenth of the generated (any number would do)
    nevts = {t.relpath: t.n_events // (10 if t.preselection is not None else 1) for t in plan.tasks}
    description = _fileset(plan, nevts, {})
    files = description["data"]["nominal"]["files"]
    assert plan.data_lumi is not None
    expected = [plan.data_lumi * g / sum(generated) for g in generated]
    assert [f["lumi"] for f in files] == pytest.approx(expected)
    assert sum(f["lumi"] for f in files) == pytest.approx(description["data"]["nominal"]["lumi"])
    path = _write(tmp_path, description)
    assert data_luminosity(build_fileset(path)) == pytest.approx(plan.data_lumi)
    assert data_luminosity(build_fileset(path, n_files_max_per_sample=1)) == pytest.approx(expected[0])


def test_delivered_files_keep_the_subsets_luminosity(tmp_path):
    """A delivered fileset (ServiceX skims: other files, the metadata unchanged) keeps the
    luminosity of the inputs taken, scaled by events lost on the way."""
    fileset = build_fileset(_write(tmp_path, DESCRIPTION), n_files_max_per_sample=1, cross_sections={"ttbar": 1.0})
    delivered = {s: {"files": {"/skims/0.parquet": None}, "metadata": dict(e["metadata"])} for s, e in fileset.items()}
    assert data_luminosity(delivered) == pytest.approx(75.0)
    delivered["data__nominal"]["metadata"]["nevts"] -= 3
    assert data_luminosity(delivered) == pytest.approx(75.0 * 27 / 30)
