"""The reference-style processor (benchmarks/reference_processor.py, PROCESSOR="reference") run by
the processing stage: its histograms in the project's format agree with the fused processor's
wherever both define the same thing."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from utils.datasets.fileset import build_fileset
from utils.errors import ConfigError
from utils.processing.reference_style import REFERENCE_CLASS, load_reference_class
from utils.processing.run import ProcessingOptions, process_fileset


@pytest.fixture(scope="module")
def both(tiny_dataset, config):
    """The fused processor (iterative) and the reference-style one (a futures worker: the
    processor travels pickled and loads benchmarks/reference_processor.py there) on one file per
    sample of the tiny dataset."""
    fileset = build_fileset(tiny_dataset, 1)
    fused = process_fileset(copy.deepcopy(fileset), ProcessingOptions(executor="iterative", workers=1), config)
    reference = process_fileset(copy.deepcopy(fileset), ProcessingOptions(executor="futures", workers=1,
                                                                           processor="reference"), config)  # fmt: skip
    return fused, reference


def _cells(result, config):
    """{(variation, region): bin values and variances over process, observable with flow}."""
    h = result.histograms.hist
    view = h.view(flow=True)
    return {
        (v, r): (view.value[:, ir, :, iv, :], view.variance[:, ir, :, iv, :])
        for iv, v in enumerate(h.axes["variation"])
        for ir, r in enumerate(config.region_names)
    }


@pytest.mark.slow
def test_reference_histograms_agree_with_the_fused_ones(both, config):
    fused, reference = both
    assert reference.histograms.filled == fused.histograms.filled  # the same templates
    assert list(reference.histograms.hist.axes["process"]) == list(fused.histograms.hist.axes["process"])
    assert list(reference.histograms.hist.axes["variation"]) == list(fused.histograms.hist.axes["variation"])
    f, r = _cells(fused, config), _cells(reference, config)
    assert f.keys() == r.keys()
    samples = ("nominal", *config.alternative_variations)
    weights = {v for p in {"ttbar", "wjets"} for v in config.weight_variations(p)}
    assert {f"{fw.name}_up" for fw in config.flat_weights} <= weights
    for (variation, region), (value, variance) in f.items():
        ref_value, ref_variance = r[(variation, region)]
        if variation in samples or (variation == config.pt_scale_name and region == "4j1b"):
            # same events in the same bins, unweighted: the same numbers (HT of the scaled jet pT too)
            np.testing.assert_array_equal(ref_value, value, err_msg=f"{variation}/{region}")
            np.testing.assert_array_equal(ref_variance, variance, err_msg=f"{variation}/{region}")
        elif variation in weights:
            # weights in single precision against the fused kernel's fixed point (2**-24)
            np.testing.assert_allclose(ref_value, value, rtol=1e-6, err_msg=f"{variation}/{region}")
            np.testing.assert_allclose(ref_variance, variance, rtol=1e-6, err_msg=f"{variation}/{region}")
        else:
            # the AGC's jet variations: no mass scaling for m_bjj, numpy smearing for the resolution
            assert variation in (config.pt_scale_name, config.pt_res_name), variation
    assert f[("nominal", "4j2b")][0].sum() > 0 and f[("btag_var_0_up", "4j1b")][0].sum() > 0
    # the resolution variation really is the reference's own (numpy numbers), not the kernel's hash
    assert not np.array_equal(r[(config.pt_res_name, "4j1b")][0], f[(config.pt_res_name, "4j1b")][0])
    # everything in ML classification 0: there is no classifier
    assert reference.histograms.hist.view(flow=True).value[..., 1].sum() == 0


@pytest.mark.slow
def test_reference_run_records_the_same_metrics(both):
    fused, reference = both
    for key in ("entries", "chunks"):
        assert reference.metrics[key] == fused.metrics[key], key
    assert reference.nevents == fused.nevents
    assert reference.metrics["processtime"] > 0 and reference.metrics["walltime"] > 0
    assert reference.metrics["bytesread"] > 0 and reference.metrics["num_workers"] == 1
    assert reference.metrics["peak_memory_per_worker_mb"] > 0
    # the reference reads its columns through NanoEvents: at least the fused processor's branches
    read = {c.rsplit("-", 1)[0] for c in reference.metrics["columns"]}
    assert {c.rsplit("-", 1)[0] for c in fused.metrics["columns"]} <= read


def test_reference_options_refuse_what_it_cannot_do(config, tiny_dataset):
    with pytest.raises(ConfigError, match="processor='nope'"):
        ProcessingOptions(processor="nope")
    with pytest.raises(ConfigError, match="no I/O-only mode"):
        ProcessingOptions(processor="reference", disable_processing=True)
    with pytest.raises(ConfigError, match="input_format='ntuple'"):
        ProcessingOptions(processor="reference", input_format="nanoaod")

    class Classifier:
        threshold = 0.5

        def feature_names(self, region):
            return None

        def scores(self, region, features):
            return np.zeros(len(features), dtype=np.float32)

    fileset = build_fileset(tiny_dataset, 1)
    with pytest.raises(ConfigError, match="USE_ML=False"):
        process_fileset(fileset, ProcessingOptions(executor="iterative", processor="reference"), config, Classifier())


def test_the_reference_file_is_loaded_by_its_fixed_name(tmp_path):
    cls = load_reference_class()
    assert cls.__name__ == REFERENCE_CLASS and cls.__module__ == "agc_benchmarks_reference_processor"
    with pytest.raises(ConfigError, match=r"not found.*PROCESSOR='fused'"):
        load_reference_class(tmp_path / "reference_processor.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match=f"defines no class {REFERENCE_CLASS}"):
        load_reference_class(empty)
    assert load_reference_class().__name__ == REFERENCE_CLASS  # the fixed file again, after another one
