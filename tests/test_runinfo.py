"""Facts about a run: stage timing, versions, memory, machine."""

import time

import pytest

from utils.runinfo import StageTimer, git_commit, machine, package_versions, peak_memory_mb


def test_stage_timer_records_each_stage_also_when_it_raises():
    timer = StageTimer()
    with timer("fast"):
        pass
    with pytest.raises(KeyError), timer("failing"):
        time.sleep(0.01)
        raise KeyError("x")
    assert set(timer.timings) == {"fast", "failing"}
    assert timer.timings["failing"] >= 0.01 > timer.timings["fast"] >= 0


def test_stage_timer_can_fill_an_existing_dict():
    times: dict[str, float] = {"dataset": 1.0}
    with StageTimer(times)("fit"):
        pass
    assert set(times) == {"dataset", "fit"}


def test_package_versions_of_installed_and_absent_packages():
    versions = package_versions(("numpy", "surely-not-installed-agc"))
    assert versions["numpy"] and versions["surely-not-installed-agc"] is None
    assert {"coffea", "uproot", "cabinetry"} <= set(package_versions())


def test_memory_machine_and_commit():
    assert peak_memory_mb(children=False) > 10
    assert peak_memory_mb() >= peak_memory_mb(children=False)
    m = machine()
    assert m["cores"] >= 1 and m["python"].startswith("3.")
    commit = git_commit()
    assert commit is None or len(commit.removesuffix("-dirty")) == 40
