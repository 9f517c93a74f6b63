"""The upper limit of the project (utils.inference.limits): checked against pyhf's and
cabinetry's root finding on a counting workspace."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from utils.errors import StatisticsError
from utils.inference.fit import numpy_backend, upper_limit_of
from utils.inference.limits import CLsScan, cls_at, model_and_data, upper_limit


def test_upper_limit_agrees_with_pyhf_root_finding(counting_workspace):
    import pyhf

    ws = counting_workspace(10.0)
    scan = CLsScan.from_workspace(ws)
    limit = upper_limit(scan)
    model, data = model_and_data(ws)
    with numpy_backend():
        observed, expected = pyhf.infer.intervals.upper_limits.toms748_scan(data, model, 0.1, 50, level=0.05, rtol=1e-4)
    assert limit.confidence_level == 0.95
    assert limit.observed_limit == pytest.approx(float(observed), rel=0.01)
    assert limit.expected_limit[2] == pytest.approx(float(expected[2]), rel=0.01)
    assert limit.expected_limit == pytest.approx([float(e) for e in expected], rel=0.01)
    assert len(scan.evaluated) <= 10
    with pytest.raises(StatisticsError, match="does not fall"):
        upper_limit(CLsScan.from_workspace(counting_workspace(0.01)))


def test_upper_limit_agrees_with_cabinetry(counting_workspace):
    """The search that replaced ``cabinetry.fit.limit`` gives its numbers (within 1%)."""
    import cabinetry

    model, data = model_and_data(counting_workspace(5.0))
    ours = upper_limit_of(model, data)
    with numpy_backend():
        theirs = cabinetry.fit.limit(model, data, bracket=(1e-3, 50))
    assert ours.observed_limit == pytest.approx(float(theirs.observed_limit), rel=0.01)
    assert ours.expected_limit == pytest.approx([float(x) for x in theirs.expected_limit], rel=0.01)


def test_cls_is_cached_and_the_backend_restored(counting_workspace):
    import pyhf

    ws = counting_workspace(10.0)
    previous = pyhf.get_backend()
    pyhf.set_backend("numpy", "scipy")  # what a notebook may have set
    try:
        scan = CLsScan.from_workspace(ws)
        first = scan(1.0)
        assert pyhf.get_backend()[1].name == "scipy"
    finally:
        pyhf.set_backend(*previous)
    assert scan(1.0) is first and len(scan.evaluated) == 1
    assert first == cls_at(ws, 1.0)
    assert 0 < first.cls_obs < 1 and list(first.cls_exp) == sorted(first.cls_exp)
    assert all(math.isfinite(x) for x in first.curves)


def test_a_model_without_poi_is_refused(counting_workspace):
    import pyhf

    with numpy_backend():
        model = pyhf.Workspace(counting_workspace(1.0)).model(poi_name=None)
    with pytest.raises(StatisticsError, match="no POI"):
        CLsScan(model, [52.0, 29.0])
    with pytest.raises(StatisticsError, match=r"upper-limit search failed.*no POI"):
        upper_limit_of(model, [52.0, 29.0])


def test_a_negative_poi_bound_is_taken_as_zero(counting_workspace):
    ws = counting_workspace(10.0)
    negative = counting_workspace(10.0)
    negative["measurements"][0]["config"]["parameters"][0]["bounds"] = [[-5, 50]]
    scan = CLsScan.from_workspace(negative)
    assert scan.bounds == (0.0, 50.0)
    assert upper_limit(scan) == upper_limit(CLsScan.from_workspace(ws))


def test_cls_is_what_pyhf_cls_prints(counting_workspace, tmp_path):
    ws = counting_workspace(10.0)
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(ws))
    pyhf_cli = Path(sys.executable).parent / "pyhf"
    out = subprocess.run(
        [str(pyhf_cli), "cls", str(path), "--optimizer", "minuit"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    cli = json.loads(out.stdout)
    ours = cls_at(ws, 1.0)
    assert ours.cls_obs == pytest.approx(cli["CLs_obs"], abs=1e-9)
    assert list(ours.cls_exp) == pytest.approx(cli["CLs_exp"], abs=1e-9)
