"""Fit diagnostics and the stability of the POI uncertainty on the real AGC histograms."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import AGC_HISTOGRAMS
from utils.inference.diagnostics import FitDiagnostics, _with_problems, central_hessian, fit_with_diagnostics
from utils.inference.fit import numpy_backend
from utils.inference.results import prepare_workspace, run_inference


@pytest.fixture(scope="module")
def agc_histograms():
    if not AGC_HISTOGRAMS.is_file():
        pytest.skip(f"real AGC histograms not available at {AGC_HISTOGRAMS} (../shared/realdata is absent)")
    return AGC_HISTOGRAMS


@pytest.fixture(scope="module")
def agc_model(agc_histograms, tmp_path_factory):
    import cabinetry

    with numpy_backend():
        _, ws, _ = prepare_workspace(agc_histograms, tmp_path_factory.mktemp("ws"), keep_templates=False)
        model, data = cabinetry.model_utils.model_and_data(ws)
    return model, data


def test_agc_answer_with_diagnostics_in_the_results(agc_histograms, tmp_path):
    result = run_inference(agc_histograms, tmp_path, figures=False, keep_templates=False)
    assert result.bestfit == pytest.approx(0.960, abs=0.003)
    assert 0.088 <= result.uncertainty <= 0.092
    assert result.uncertainty == pytest.approx(0.0911, abs=0.0003)  # RooFit: 0.0913
    d = result.diagnostics
    assert d.minuit_valid and d.edm < d.edm_goal and d.covariance_status == "accurate"
    assert d.hessian_positive_definite and d.poi_hessian_uncertainty == result.uncertainty
    assert d.minos_valid and d.poi_minos[0] < 0 < d.poi_minos[1]
    assert result.problems == ()
    # the published model's ME and PS variations are constrained by the data: listed, not problems
    assert {"ME variation", "PS variation"} <= set(d.constrained)
    content = json.loads(result.results_path.read_text())
    diag = content["diagnostics"]
    assert diag["covariance_status"] == "accurate" and diag["problems"] == []
    assert diag["poi_minos_symmetric"] == pytest.approx(0.5 * (d.poi_minos[1] - d.poi_minos[0]))
    assert {"constraint", "pull"} <= set(diag["thresholds"])
    treatment = content["template_treatment"]
    assert treatment and all({"systematic", "region", "sample", "action", "reason"} == set(t) for t in treatment)
    # W+jets scale variation is a pure normalisation: its (zero) shape part is pruned
    assert {"systematic": "W+jets scale variation", "action": "shape pruned"}.items() <= next(
        t for t in treatment if t["systematic"] == "W+jets scale variation"
    ).items()


def test_poi_uncertainty_is_stable_across_strategies_and_perturbations(agc_model):
    model, data = agc_model
    poi = model.config.poi_index
    uncertainties, hesse, minos = [], [], None
    with numpy_backend():
        for strategy in (0, 1, 2):
            fit, d = fit_with_diagnostics(model, data, strategy=strategy, minos=strategy == 1)
            assert d.minuit_valid, strategy
            uncertainties.append(fit.uncertainty[poi])
            hesse.append(d.poi_hesse_uncertainty)
            if strategy == 1:
                minos = d.poi_minos_symmetric
        rng = np.random.default_rng(13)
        for _ in range(2):
            perturbed = list(np.asarray(data) * (1 + 1e-12 * rng.standard_normal(len(data))))
            fit, _ = fit_with_diagnostics(model, perturbed, minos=False)
            uncertainties.append(fit.uncertainty[poi])
    spread = max(uncertainties) / min(uncertainties) - 1
    assert spread < 0.02, uncertainties
    # the symmetrised MINOS interval (-0.085/+0.098) agrees too, and MINUIT's own HESSE at
    # strategies 0 and 1 (0.0916/0.0920). Its strategy-2 HESSE is kept in the diagnostics but not
    # trusted: it refines its step sizes on the last bits of the likelihood and moved between
    # 0.066 and 0.094 with changes of the model of 1e-13 (the reported value: our own Hessian)
    assert max(abs(h / uncertainties[1] - 1) for h in hesse[:2]) < 0.02
    assert 0 < hesse[2] < 2 * uncertainties[1]
    assert abs(minos / uncertainties[1] - 1) < 0.02


def test_central_hessian_of_a_quadratic_form_is_exact():
    a = np.array([[4.0, 1.0], [1.0, 3.0]])

    def f(x):
        return float(x @ a @ x)

    h = central_hessian(f, np.array([0.5, -0.2]), np.array([0.1, 0.1]), [(-10, 10), (-10, 10)])
    np.testing.assert_allclose(h, 2 * a, rtol=1e-8)
    # near a bound the step shrinks and stays inside
    h = central_hessian(f, np.array([0.01, 0.0]), np.array([0.1, 0.1]), [(0, 10), (-10, 10)])
    np.testing.assert_allclose(h, 2 * a, rtol=1e-5)


def _good() -> FitDiagnostics:
    return FitDiagnostics(
        minuit_valid=True, edm=1e-6, edm_goal=2e-5, covariance_status="accurate", strategy=1, n_calls=100,
        poi_hesse_uncertainty=0.1, poi_hessian_uncertainty=0.1, hessian_positive_definite=True,
        poi_minos=(-0.1, 0.1), minos_valid=True, constrained={"JES": 0.3},
    )  # fmt: skip


def test_one_line_per_problem_and_none_when_all_is_well():
    assert _with_problems(_good(), "mu").problems == ()
    bad = replace(
        _good(),
        minuit_valid=False,
        covariance_status="forced positive-definite",
        poi_minos=(-0.08, 0.14),
        pulled={"PS variation": -2.5},
        negative_yields=2,
    )
    lines = _with_problems(bad, "mu").problems
    assert len(lines) == 5
    assert any(line.startswith("2 bin(s) with a negative expected yield") for line in lines)
    assert any(line.startswith("covariance forced positive-definite") and "not reliable" in line for line in lines)
    assert any("MINUIT minimum not valid" in line for line in lines)
    assert any("MINOS" in line and "quote MINOS" in line for line in lines)
    assert any("PS variation pulled by -2.50" in line for line in lines)
    assert all("see the 'diagnostics' of fit_results.json" in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("categories", [False, True], ids=["regions", "ml"])
def test_tiny_poi_uncertainty_is_stable(tiny_histograms, categories, tmp_path):
    import cabinetry

    from utils.inference.config import REPO_ROOT

    name = "histograms_ml.root" if categories else "histograms.root"
    model_config = REPO_ROOT / "cabinetry_config.yml"
    with numpy_backend():
        _, ws, _ = prepare_workspace(
            tiny_histograms / name, tmp_path, model_config, keep_templates=False, ml_categories=categories
        )
        model, data = cabinetry.model_utils.model_and_data(ws)
        poi = model.config.poi_index
        uncertainties = []
        for strategy in (0, 1, 2):
            fit, d = fit_with_diagnostics(model, data, strategy=strategy, minos=False)
            assert d.minuit_valid and d.hessian_positive_definite
            uncertainties.append(fit.uncertainty[poi])
        perturbed = list(np.asarray(data) * (1 + 1e-12 * np.random.default_rng(5).standard_normal(len(data))))
        uncertainties.append(fit_with_diagnostics(model, perturbed, minos=False)[0].uncertainty[poi])
    assert max(uncertainties) / min(uncertainties) - 1 < 0.02, uncertainties
