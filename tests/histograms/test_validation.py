"""Histogram validation: reference dumps, bin-by-bin comparison, allowed migrations, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hist
import numpy as np
import pytest
import uproot
from click.testing import CliRunner

from utils.cli.inference import validate
from utils.config import REPO_ROOT
from utils.errors import ConfigError
from utils.histograms.validation import (
    MigrationRule,
    compare,
    dump_reference,
    load_reference,
    parse_migration_rule,
    parse_reference,
    read_histogram_file,
    validate_histograms,
)

AGC_HISTOGRAMS = REPO_ROOT / ".." / "shared" / "realdata" / "agc-histograms" / "histograms.root"
EDGES = np.linspace(50, 550, 26)
WEIGHT = 0.25  # one event's weight in the synthetic histograms


def event_hist(counts: np.ndarray, weight: float = WEIGHT) -> hist.Hist:
    """A weighted histogram of ``counts`` events per bin (flow bins included), all of one weight."""
    h = hist.Hist(hist.axis.Variable(EDGES), storage=hist.storage.Weight())
    h.view(flow=True)["value"] = counts * weight
    h.view(flow=True)["variance"] = counts * weight**2
    return h


def base_counts() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    names = ["4j1b_ttbar", "4j1b_ttbar_pt_res_up", "4j2b_wjets", "4j2b_pseudodata"]
    return {name: rng.integers(0, 50, size=len(EDGES) + 1).astype(float) for name in names}


def write_file(path: Path, counts: dict[str, np.ndarray]) -> Path:
    with uproot.recreate(path) as f:
        for name, c in counts.items():
            f[name] = event_hist(c)
    return path


@pytest.fixture
def histograms(tmp_path) -> Path:
    return write_file(tmp_path / "histograms.root", base_counts())


@pytest.fixture
def reference(histograms, tmp_path) -> Path:
    path = tmp_path / "reference.json"
    dump_reference(histograms, path, migrations=[MigrationRule("*_pt_res_up", 1, "smearing near a cut")])
    return path


def test_dump_has_edges_and_flow_bins(histograms, reference):
    data = json.loads(reference.read_text())
    assert data["format"] == "agc-histogram-reference"
    h = data["histograms"]["4j1b_ttbar"]
    assert h["edges"] == [EDGES.tolist()]
    assert len(h["sumw"]) == len(h["sumw2"]) == 27  # 25 bins + under- and overflow
    assert h["sumw"] == (base_counts()["4j1b_ttbar"] * WEIGHT).tolist()
    assert data["migrations"] == [{"pattern": "*_pt_res_up", "max_events": 1, "reason": "smearing near a cut"}]
    assert len(data["source_sha256"]) == 64


def test_file_agrees_with_its_own_dump(histograms, reference):
    report = validate_histograms(histograms, reference)
    assert report.ok and report.n_compared == 4 and not report.tolerated


def test_changed_bin_is_named(histograms, reference, tmp_path):
    counts = base_counts()
    counts["4j2b_wjets"][7] += 3
    changed = write_file(tmp_path / "changed.root", counts)
    report = validate_histograms(changed, reference)
    assert not report.ok
    assert {(m.histogram, m.quantity) for m in report.mismatches} == {("4j2b_wjets", "sumw"), ("4j2b_wjets", "sumw2")}
    sumw = next(m for m in report.mismatches if m.quantity == "sumw")
    assert sumw.bin == "bin 7 [170, 190)"
    assert sumw.expected == base_counts()["4j2b_wjets"][7] * WEIGHT
    assert sumw.got == sumw.expected + 3 * WEIGHT
    assert "4j2b_wjets bin 7 [170, 190) sumw: expected" in str(sumw)


def test_flow_bins_are_compared(histograms, reference, tmp_path):
    counts = base_counts()
    counts["4j1b_ttbar"][-1] += 1
    report = validate_histograms(write_file(tmp_path / "c.root", counts), reference)
    assert [m.bin for m in report.mismatches] == ["overflow (>= 550)"] * 2


def test_missing_and_extra_histograms(histograms, reference, tmp_path):
    counts = base_counts()
    del counts["4j2b_pseudodata"]
    counts["4j2b_ttbar"] = counts["4j2b_wjets"]
    report = validate_histograms(write_file(tmp_path / "c.root", counts), reference)
    assert {(m.histogram, m.quantity) for m in report.mismatches} == {
        ("4j2b_pseudodata", "missing"),
        ("4j2b_ttbar", "extra"),
    }


def test_float_rounding_passes_but_more_does_not(histograms, reference):
    ref = load_reference(reference)
    candidate = read_histogram_file(histograms)
    h = candidate["4j2b_wjets"]
    rounded = {**candidate, "4j2b_wjets": h._replace(sumw=h.sumw * (1 + 1e-12))}
    assert compare(rounded, ref).ok
    worse = {**candidate, "4j2b_wjets": h._replace(sumw=h.sumw * (1 + 1e-7))}
    assert not compare(worse, ref).ok


def migrate(counts: np.ndarray, moves: list[tuple[int, int]]) -> np.ndarray:
    out = counts.copy()
    for src, dst in moves:
        out[src] -= 1
        if dst is not None:
            out[dst] += 1
    return out


@pytest.mark.parametrize(
    ("name", "moves", "ok"),
    [
        ("4j1b_ttbar_pt_res_up", [(5, 6)], True),  # one event to the next bin: allowed there
        ("4j1b_ttbar_pt_res_up", [(5, None)], True),  # one event out of the histogram
        ("4j1b_ttbar_pt_res_up", [(5, 6), (9, 10)], False),  # two events: more than allowed
        ("4j1b_ttbar", [(5, 6)], False),  # nominal: exact
    ],
)
def test_allowed_migrations(histograms, reference, tmp_path, name, moves, ok):
    counts = base_counts()
    counts[name] = migrate(counts[name], moves)
    report = validate_histograms(write_file(tmp_path / "m.root", counts), reference)
    assert report.ok is ok
    if ok:
        assert report.tolerated[name] == pytest.approx(len(moves))
    else:
        assert {m.histogram for m in report.mismatches} == {name}


def test_extra_migration_rules_on_the_command_line(histograms, reference, tmp_path):
    counts = base_counts()
    counts["4j2b_wjets"] = migrate(counts["4j2b_wjets"], [(3, 4), (12, 13)])
    changed = write_file(tmp_path / "m.root", counts)
    assert not validate_histograms(changed, reference).ok
    assert validate_histograms(changed, reference, [parse_migration_rule("4j2b_*=2")]).ok
    with pytest.raises(ConfigError, match="PATTERN=N"):
        parse_migration_rule("4j2b_*")


def test_malformed_reference_names_the_key(reference):
    data = json.loads(reference.read_text())
    data["histograms"]["4j1b_ttbar"]["sumw_2"] = data["histograms"]["4j1b_ttbar"].pop("sumw2")
    with pytest.raises(ConfigError, match=r"\['histograms'\]\['4j1b_ttbar'\].*sumw_2"):
        parse_reference(data, source="ref.json")
    data = json.loads(reference.read_text())
    data["histograms"]["4j1b_ttbar"]["sumw"] = data["histograms"]["4j1b_ttbar"]["sumw"][:-1]
    with pytest.raises(ConfigError, match=r"ref.json: at \['histograms'\]\['4j1b_ttbar'\]\['sumw'\]: shape"):
        parse_reference(data, source="ref.json")


def test_cli_dump_and_compare(histograms, tmp_path):
    runner = CliRunner()
    ref = tmp_path / "ref.json"
    result = runner.invoke(validate, [str(histograms), "--dump-json", str(ref), "--allow-migrations", "*_pt_res_up=1"])
    assert result.exit_code == 0, result.output
    assert json.loads(ref.read_text())["migrations"][0]["pattern"] == "*_pt_res_up"
    result = runner.invoke(validate, [str(histograms), str(ref)])
    assert result.exit_code == 0 and "all agree" in result.output

    counts = base_counts()
    counts["4j2b_wjets"][7] += 3
    changed = write_file(tmp_path / "changed.root", counts)
    result = runner.invoke(validate, [str(changed), str(ref)])
    assert result.exit_code == 1
    assert "4j2b_wjets bin 7 [170, 190) sumw" in result.output and "2 mismatch(es)" in result.output

    result = runner.invoke(validate, [str(histograms)])
    assert result.exit_code == 2 and "either REFERENCE" in result.output


def test_installed_command_exit_code(reference, tmp_path):
    """Through the `agc` entry point (its error handling included): exit 1, mismatch listed."""
    counts = base_counts()
    del counts["4j2b_pseudodata"]
    changed = write_file(tmp_path / "changed.root", counts)
    cmd = [sys.executable, "-m", "utils.cli", "validate", str(changed), str(reference)]
    bad = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert bad.returncode == 1, bad.stderr
    assert "4j2b_pseudodata: missing" in bad.stdout


def test_real_agc_histograms_round_trip(tmp_path):
    if not AGC_HISTOGRAMS.is_file():
        pytest.skip(f"real AGC histograms not available at {AGC_HISTOGRAMS} (../shared/realdata is absent)")
    ref = tmp_path / "agc.json"
    content = dump_reference(AGC_HISTOGRAMS, ref)
    assert len(content["histograms"]) == 124
    assert validate_histograms(AGC_HISTOGRAMS, ref).ok
