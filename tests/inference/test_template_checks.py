"""Templates the fit cannot use are named before the fit (issue 14, cases 13 and 16)."""

from __future__ import annotations

import hist
import numpy as np
import pytest
import uproot

from utils.errors import StatisticsError
from utils.inference.templates import read_histograms


def write_templates(path, **contents) -> None:
    with uproot.recreate(path) as f:
        for name, values in contents.items():
            h = hist.Hist.new.Reg(len(values), 0, len(values)).Weight()
            h.view().value = values
            h.view().variance = np.abs(np.nan_to_num(values, nan=1.0, posinf=1.0))
            f[name] = h


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_template_bin_is_named(tmp_path, bad):
    path = tmp_path / "histograms.root"
    write_templates(path, **{"4j1b_ttbar": np.array([1.0, 2.0, 3.0]), "4j2b_wjets": np.array([1.0, bad, 3.0])})
    assert set(read_histograms(path, ["4j1b_ttbar"])) == {"4j1b_ttbar"}
    with pytest.raises(StatisticsError, match=r"template '4j2b_wjets' has non-finite content in bin\(s\) \[2\]"):
        read_histograms(path, ["4j1b_ttbar", "4j2b_wjets"])


def test_a_file_that_is_not_root_is_named(tmp_path):
    path = tmp_path / "histograms.root"
    path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(StatisticsError, match=rf"{path}: not a readable ROOT file"):
        read_histograms(path, ["4j1b_ttbar"])
