"""One limit per workspace: a signal point's CLs and upper limit (utils.preservation.evaluation)
come from the inference stage's limit code, and preservation has no fitting code of its own."""

from __future__ import annotations

import json
from pathlib import Path

import cabinetry

from utils.inference.fit import numpy_backend, upper_limit_of
from utils.inference.limits import model_and_data
from utils.preservation.evaluation import evaluate

PRESERVATION = Path(__file__).resolve().parents[2] / "utils" / "preservation"


def test_preservation_and_inference_give_the_same_limit(counting_workspace):
    ws = counting_workspace(10.0)
    point = evaluate(ws, "point", {"mass": 500.0}, 2.5)
    assert point.failure is None
    assert point.limit == upper_limit_of(*model_and_data(ws))  # exactly: the same code
    with numpy_backend():  # the model the inference stage fits (run_inference)
        model, data = cabinetry.model_utils.model_and_data(ws)
    assert point.limit == upper_limit_of(model, data)
    assert 1 < point.limit.observed_limit < 2
    content = json.loads(json.dumps(point.to_dict(), allow_nan=False))
    assert content["limit"]["observed_limit"] == point.limit.observed_limit
    assert content["cls"]["cls_exp"] == list(point.cls.cls_exp)
    assert (content["poi"], content["parameters"], content["xsec_pb"]) == ("mu", {"mass": 500.0}, 2.5)


def test_a_failed_limit_is_recorded(counting_workspace):
    point = evaluate(counting_workspace(0.01), "tiny signal")
    assert point.limit is None and "does not fall" in point.failure
    assert point.to_dict()["limit"] is None and 0 < point.cls.cls_obs <= 1
    assert evaluate(counting_workspace(0.01), "no limit", with_limit=False).failure is None


def test_preservation_has_no_fitting_code_of_its_own():
    for path in sorted(PRESERVATION.glob("*.py")):
        text = path.read_text()
        for call in ("pyhf.infer", "pyhf.set_backend", "cabinetry.fit", "pyhf.optimize"):
            assert call not in text, f"{path.name} calls {call}; use utils.inference"
