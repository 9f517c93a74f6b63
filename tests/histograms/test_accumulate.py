"""Histogram accumulation, names in histograms.root, and pseudo-data."""

import numpy as np
import pytest
import uproot

from utils.histograms.accumulate import AnalysisHistograms, HistogramAccumulator, histogram_name, save_histograms
from utils.processing.processor import sample_variations

SAMPLES = {  # sample: (process, variation)
    "ttbar__nominal": ("ttbar", "nominal"), "ttbar__ME_var": ("ttbar", "ME_var"),
    "ttbar__PS_var": ("ttbar", "PS_var"), "ttbar__scaleup": ("ttbar", "scaleup"),
    "ttbar__scaledown": ("ttbar", "scaledown"), "wjets__nominal": ("wjets", "nominal"),
    "single_top_s_chan__nominal": ("single_top_s_chan", "nominal"),
    "single_top_t_chan__nominal": ("single_top_t_chan", "nominal"),
    "single_top_tW__nominal": ("single_top_tW", "nominal"),
}  # fmt: skip


def filled_accumulators(config, seed=0, n=500):
    rng = np.random.default_rng(seed)
    out = {}
    for sample, (process, variation) in SAMPLES.items():
        acc = HistogramAccumulator.empty(config, process, sample_variations(config, process, variation))
        for v in acc.variations:
            region = rng.integers(0, 2, n)
            obs = rng.uniform(0, 700, n)
            cls = rng.integers(0, 2, n)
            acc.fill(v, region, obs, cls, None if v == "nominal" else rng.uniform(0.8, 1.2, n))
        out[sample] = acc
    return out


def test_bin_index_matches_hist(config):
    acc = HistogramAccumulator.empty(config, "ttbar", ("nominal",))
    x = np.array([-1.0, 49.999, 50.0, 70.0, 549.99, 550.0, 1e9, np.nan])
    np.testing.assert_array_equal(acc.bin_index(x), [0, 0, 1, 2, 25, 26, 26, 26])


def test_fixed_point_sums_are_independent_of_grouping(config):
    rng = np.random.default_rng(7)
    n = 10_000
    region, obs, cls = rng.integers(0, 2, n), rng.uniform(40, 600, n), rng.integers(0, 2, n)
    w = 1.0 + 0.075 * rng.uniform(25, 300, n) / 50.0
    whole = HistogramAccumulator.empty(config, "ttbar", ("nominal", "btag_var_0_up"))
    whole.fill("btag_var_0_up", region, obs, cls, w)
    parts = [HistogramAccumulator.empty(config, "ttbar", ("nominal", "btag_var_0_up")) for _ in range(3)]
    for part, sl in zip(parts, (slice(0, 1234), slice(1234, 7001), slice(7001, n)), strict=True):
        part.fill("btag_var_0_up", region[sl], obs[sl], cls[sl], w[sl])
    summed = parts[2] + parts[0] + parts[1]
    np.testing.assert_array_equal(summed.sumw, whole.sumw)
    np.testing.assert_array_equal(summed.sumw2, whole.sumw2)
    # and the fixed-point sum is the float sum to quantisation precision
    assert whole.sumw.sum() / 2**24 == pytest.approx(w.sum(), abs=n * 2.0**-25)


def test_histogram_names_and_pseudodata(config, tmp_path):
    accs = filled_accumulators(config)
    norm = {s: 0.5 + i for i, s in enumerate(sorted(SAMPLES))}
    hists = AnalysisHistograms.from_accumulators(accs, norm, config)
    path = tmp_path / "histograms.root"
    names = save_histograms(hists, path, config)
    with uproot.open(path) as f:
        keys = {k.split(";")[0] for k in f.keys()}  # noqa: SIM118 (uproot directory)
        assert keys == set(names)
        for must in ("4j2b_ttbar", "4j1b_ttbar_btag_var_2_up", "4j1b_wjets_scale_var_down", "4j2b_ttbar_PS_var",
                     "4j1b_ttbar_pt_res_up", "4j2b_single_top_tW_pt_scale_up", "4j1b_pseudodata"):  # fmt: skip
            assert must in keys
        assert "4j1b_ttbar_scale_var_up" not in keys  # scale_var applies to W+jets only
        assert "4j1b_wjets_ME_var" not in keys
        # 5 ttbar alternatives/nominal... : per region 4 ttbar alternatives + nominal-sample variations
        n_nominal_vars = {p: len(sample_variations(config, p, "nominal")) for p in
                          ("ttbar", "wjets", "single_top_s_chan", "single_top_t_chan", "single_top_tW")}  # fmt: skip
        assert len(keys) == 2 * (sum(n_nominal_vars.values()) + 4 + 1)
        for region in ("4j1b", "4j2b"):
            pd = f[f"{region}_pseudodata"].to_hist()
            expected = 0.5 * (
                f[f"{region}_ttbar_ME_var"].values(flow=True) + f[f"{region}_ttbar_PS_var"].values(flow=True)
            )
            for p in ("wjets", "single_top_s_chan", "single_top_t_chan", "single_top_tW"):
                expected = expected + f[f"{region}_{p}"].values(flow=True)
            np.testing.assert_allclose(pd.values(flow=True), expected, rtol=1e-12)
            # sumw2 kept
            assert np.all(f[f"{region}_ttbar"].variances() > 0)
            # normalisation applied: nominal ttbar = norm x raw counts
            raw = accs["ttbar__nominal"].sumw[0, config.region_names.index(region)].sum(axis=0) / 2**24
            np.testing.assert_allclose(f[f"{region}_ttbar"].values(flow=True), raw * norm["ttbar__nominal"])
    assert histogram_name("4j2b", "ttbar", "nominal") == "4j2b_ttbar"


def test_missing_pseudodata_input_is_an_error(config, tmp_path):
    accs = filled_accumulators(config)
    del accs["ttbar__PS_var"]
    hists = AnalysisHistograms.from_accumulators(accs, dict.fromkeys(accs, 1.0), config)
    with pytest.raises(Exception, match=r"ttbar/PS_var"):
        save_histograms(hists, tmp_path / "h.root", config)
    assert not (tmp_path / "h.root").exists()
    assert not list(tmp_path.iterdir())  # no temporary left behind
