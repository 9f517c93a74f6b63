"""The fast likelihood of the ranking against pyhf, and the fast ranking against cabinetry's."""

from __future__ import annotations

import numpy as np
import pytest

from utils.inference.fit import numpy_backend
from utils.inference.likelihood import FastLikelihood
from utils.inference.ranking import rank_parameters

#: every modifier the fast likelihood implements, two channels, a sample missing from one
SPEC = {
    "channels": [
        {
            "name": "SR",
            "samples": [
                {
                    "name": "signal",
                    "data": [5.0, 12.0, 8.0],
                    "modifiers": [
                        {"name": "mu", "type": "normfactor", "data": None},
                        {"name": "lumi", "type": "lumi", "data": None},
                        {"name": "jes", "type": "normsys", "data": {"hi": 1.08, "lo": 0.95}},
                        {"name": "jes", "type": "histosys", "data": {"hi_data": [6, 12, 7], "lo_data": [4, 11.5, 9]}},
                        {"name": "staterror_SR", "type": "staterror", "data": [0.5, 1.0, 0.8]},
                    ],
                },
                {
                    "name": "background",
                    "data": [50.0, 30.0, 10.0],
                    "modifiers": [
                        {"name": "lumi", "type": "lumi", "data": None},
                        {"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.85}},
                        {"name": "jes", "type": "histosys", "data": {"hi_data": [52, 29, 9], "lo_data": [47, 31, 11]}},
                        {"name": "staterror_SR", "type": "staterror", "data": [2.0, 1.5, 1.0]},
                    ],
                },
            ],
        },
        {
            "name": "CR",
            "samples": [
                {
                    "name": "background",
                    "data": [200.0, 150.0],
                    "modifiers": [
                        {"name": "lumi", "type": "lumi", "data": None},
                        {"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.85}},
                        {"name": "cr_shape", "type": "shapefactor", "data": None},
                    ],
                }
            ],
        },
    ],
    "parameters": [{"name": "lumi", "auxdata": [1.0], "sigmas": [0.02], "bounds": [[0.9, 1.1]], "inits": [1.0]}],
}
OBSERVED = [210.0, 140.0, 60.0, 40.0, 22.0]  # pyhf orders channels by name: CR, SR


@pytest.fixture(scope="module")
def model_and_data():
    import pyhf

    with numpy_backend():
        model = pyhf.Model(SPEC, poi_name="mu")
        data = OBSERVED + model.config.auxdata
    return model, data


def test_every_modifier_matches_pyhf_at_random_points(model_and_data):
    model, data = model_and_data
    fast = FastLikelihood.from_model(model)
    assert fast is not None
    objective = fast.objective(data)
    rng = np.random.default_rng(3)
    init = np.asarray(model.config.suggested_init())
    with numpy_backend():
        for scale in (0.0, 0.3, 1.5):  # 1.5: interpolation beyond +/-1 sigma too
            pars = init + scale * rng.standard_normal(len(init))
            pars[model.config.par_slice("lumi")] = 1 + 0.02 * scale
            pars[model.config.par_slice("staterror_SR")] = np.abs(pars[model.config.par_slice("staterror_SR")])
            expected = float(-2 * model.logpdf(pars, data)[0])
            assert objective(pars) == pytest.approx(expected, rel=1e-12, abs=1e-9)
            np.testing.assert_allclose(fast.expected(pars), model.expected_actualdata(pars), rtol=1e-12)
            step = 1e-6
            numeric = [
                (
                    float(-2 * model.logpdf(pars + step * e, data)[0])
                    - float(-2 * model.logpdf(pars - step * e, data)[0])
                )
                / (2 * step)
                for e in np.eye(len(pars))
            ]
            np.testing.assert_allclose(objective.gradient(pars), numeric, rtol=1e-5, atol=1e-5)


def test_unsupported_modifier_falls_back_to_pyhf():
    import pyhf

    with numpy_backend():
        model = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [5.0])  # shapesys: Poisson constraints
    assert FastLikelihood.from_model(model) is None


def test_fast_ranking_equals_cabinetrys(model_and_data):
    import cabinetry

    model, data = model_and_data
    # cabinetry's default tolerance (EDM below 2e-4) leaves the POI (uncertainty 0.46 here) a few
    # 1e-3 from the minimum, in the best fit and in each refit: the reference converges further
    with numpy_backend():
        fit_results = cabinetry.fit.fit(model, data, strategy=2, tolerance=1e-4)
        reference = cabinetry.fit.ranking(model, data, fit_results=fit_results, strategy=2, tolerance=1e-4)
        fast = rank_parameters(model, data, fit_results)
    assert list(fast.labels) == list(reference.labels)
    for field in ("prefit_up", "prefit_down", "postfit_up", "postfit_down"):
        ours, theirs = np.asarray(getattr(fast, field)), np.asarray(getattr(reference, field))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3, err_msg=field)
    # the impacts are not trivially small: the comparison means something
    assert np.max(np.abs(reference.postfit_up)) > 0.05


def test_fast_minimum_is_migrads_without_the_gradient(model_and_data):
    """The fit's minimiser (exact gradient, whitened coordinates) finds the minimum that MIGRAD
    differencing pyhf's logpdf finds, in a fraction of its calls."""
    import iminuit

    from utils.inference.likelihood import expected_information, fast_minimum

    model, data = model_and_data
    with numpy_backend():
        fast = FastLikelihood.from_model(model)
        assert fast is not None
        fixed = list(model.config.suggested_fixed())
        bounds = [tuple(b) for b in model.config.suggested_bounds()]
        found = fast_minimum(fast, data, model.config.suggested_init(), fixed, bounds, 0.0005)
        assert found is not None
        x, errors, calls = found

        m = iminuit.Minuit(lambda p: float(-2 * model.logpdf(np.asarray(p), data)[0]), model.config.suggested_init())
        m.limits, m.fixed, m.errordef, m.tol = bounds, fixed, 1.0, 0.0005
        m.migrad(ncall=100_000)
        m.hesse()
        assert m.valid
        reference = np.asarray(m.values)
        assert fast.twice_nll(x, data) <= m.fval + 1e-6
        np.testing.assert_allclose(x, reference, atol=2e-3 * np.max(m.errors))
        free = [k for k in range(len(x)) if not fixed[k]]
        # the first steps it hands to MINUIT: the expected information's uncertainties, near HESSE's
        np.testing.assert_allclose(errors[free], np.asarray(m.errors)[free], rtol=0.3)
        assert calls < m.nfcn
        info = expected_information(fast, x, free)
        np.testing.assert_allclose(info, info.T)
        assert np.all(np.linalg.eigvalsh(info) > 0)


def test_fast_minimum_declines_a_start_without_information(model_and_data):
    """A start where some free parameters carry no information (the expected information is
    singular) cannot be whitened: None, and the fit then runs MIGRAD without the gradient."""
    from utils.inference.likelihood import fast_minimum

    model, data = model_and_data
    with numpy_backend():
        fast = FastLikelihood.from_model(model)
        shapefactors = [i for i, n in enumerate(model.config.par_names) if n.startswith("cr_shape")]
        # the control region's shapefactors at zero: it predicts nothing, and its bins weigh nothing
        init = list(model.config.suggested_init())
        for i in shapefactors:
            init[i] = 0.0
        found = fast_minimum(fast, data, init, list(model.config.suggested_fixed()),
                             [tuple(b) for b in model.config.suggested_bounds()], 0.0005)  # fmt: skip
        assert found is None


def test_jacobian_of_the_yields_matches_pyhf(model_and_data):
    model, _ = model_and_data
    fast = FastLikelihood.from_model(model)
    rng = np.random.default_rng(5)
    init = np.asarray(model.config.suggested_init())
    pars = init + 0.4 * rng.standard_normal(len(init))
    pars[model.config.par_slice("staterror_SR")] = np.abs(pars[model.config.par_slice("staterror_SR")])
    step = 1e-6
    with numpy_backend():
        numeric = np.array(
            [
                (model.expected_actualdata(pars + step * e) - model.expected_actualdata(pars - step * e)) / (2 * step)
                for e in np.eye(len(pars))
            ]
        ).T
    np.testing.assert_allclose(fast.jacobian(pars), numeric, rtol=1e-6, atol=1e-6)
