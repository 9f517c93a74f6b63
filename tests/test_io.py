"""Atomic outputs: nothing half-written ever takes an output's name."""

import json
import math
from dataclasses import dataclass

import matplotlib
import pytest

from utils.io import atomic_path, json_ready, save_figure, sha256_file, write_json_atomic, write_text_atomic

matplotlib.use("Agg")


def test_atomic_path_keeps_the_suffix_and_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "histograms.root"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".tmp-") and tmp.suffix == ".root"
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in target.parent.iterdir()] == ["histograms.root"]


def test_a_crash_leaves_the_previous_output_untouched(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"old": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_text_round_trips(tmp_path):
    path = write_text_atomic(tmp_path / "a.txt", "é\n")
    assert path.read_text(encoding="utf-8") == "é\n"


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_001)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_001).hexdigest()


def test_save_figure_writes_the_format_of_the_suffix(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert save_figure(fig, tmp_path / "f.pdf") is fig
    assert save_figure(fig, tmp_path / "f.png") is fig
    assert save_figure(fig, None) is fig
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]
    plt.close(fig)


@dataclass(frozen=True)
class _Summary:
    value: float
    band: tuple[float, ...]


def test_json_ready_gives_strict_json(tmp_path):
    content = {"a": _Summary(math.inf, (1.0, math.nan)), "b": [(1, 2)], "c": None, "d": "text"}
    ready = json_ready(content)
    assert ready == {"a": {"value": None, "band": [1.0, None]}, "b": [[1, 2]], "c": None, "d": "text"}
    path = write_json_atomic(tmp_path / "out.json", ready)
    assert json.loads(path.read_text()) == ready
    assert json_ready(None) is None and json_ready(_Summary) is _Summary  # a class is left alone
