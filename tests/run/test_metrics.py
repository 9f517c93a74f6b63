"""The time-to-result split of the metrics: hand-computed parts that add up to the total."""

import pytest

from utils.run.metrics import time_to_result

PROCESSING = {
    "executor_startup_s": 2.0,
    "preflight_s": 0.25,
    "preprocessing_s": 0.5,
    "walltime": 4.5,
    "merging_s": 0.75,
}
STAGES = {"imports": 3.0, "dataset": 0.5, "processing": 8.0, "figures": 1.0, "variation_figures": 0.5,
          "histograms": 0.25, "fit": 6.0}  # fmt: skip


def test_parts_are_the_stages_and_the_processing_metrics():
    ttr = time_to_result(STAGES, PROCESSING, {"figures": 2.0, "fit": 3.0}, total=30.0)
    assert ttr == {
        "kernel_imports": 3.0,
        "worker_start": 2.0,
        "preflight": 0.25,
        "preprocessing": 0.5,
        "processing": 4.0,  # walltime less preprocessing
        "merging": 0.75,
        "saving": 0.25,
        "fit": 4.0,  # the fit stage less the fit's figures
        "figures": 3.5,  # both histogram figure stages and the fit's figures
        "other": 11.75,
        "total": 30.0,
    }
    assert sum(v for k, v in ttr.items() if k != "total") == pytest.approx(ttr["total"])


def test_a_run_without_fit_or_figures_has_zero_parts_and_a_total_from_the_process_age():
    ttr = time_to_result({"dataset": 0.1, "processing": 1.0}, {"walltime": 0.5})
    assert ttr["fit"] == ttr["figures"] == ttr["kernel_imports"] == 0.0
    assert ttr["processing"] == 0.5 and ttr["total"] >= 0.5 and ttr["other"] >= 0.0


def test_parts_beyond_the_total_raise_the_total_not_a_negative_rest():
    ttr = time_to_result(STAGES, PROCESSING, total=1.0)
    assert ttr["other"] == 0.0 and ttr["total"] == pytest.approx(sum(v for k, v in ttr.items() if k != "total"))


def test_the_jet_assignment_histograms_count_as_saving():
    """A NanoAOD run with the jet-parton assignment also saves histograms_ml.root (stage
    histograms_ml): saving, and a stage name the metrics schema knows."""
    from utils.config import load_schema, validate_against_schema

    stages = {**STAGES, "histograms_ml": 0.5}
    ttr = time_to_result(stages, PROCESSING, total=30.0)
    assert ttr["saving"] == 0.75
    full = load_schema("metrics")
    schema = {**full["properties"]["stage_walltime_s"], "$defs": full["$defs"]}
    validate_against_schema(stages, schema, "stage_walltime_s")
