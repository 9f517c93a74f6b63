"""The embedded tiny dataset reproduces the committed reference histograms bin by bin."""

import pytest

from utils.histograms.validation import validate_histograms
from utils.run.references import histograms_of_preset, reference_path


@pytest.mark.slow
def test_tiny_histograms_match_committed_reference(tiny_dataset, tmp_path):
    histograms = histograms_of_preset("tiny", tmp_path / "histograms.root", workers=1)
    report = validate_histograms(histograms, reference_path("tiny"))
    assert report.n_compared > 100
    assert report.ok, "\n".join(str(m) for m in report.mismatches[:20])
