"""The README's generated blocks and figures: rewritten from a complete run, present."""

from __future__ import annotations

import json
import re

import pytest

from utils.config import REPO_ROOT
from utils.errors import AGCError
from utils.run import docs


def fake_run(folder, bestfit=1.0234, uncertainty=0.1129):
    (folder / "figures").mkdir(parents=True)
    for name in docs.FIGURES:
        (folder / "figures" / name).write_bytes(b"\x89PNG " + name.encode())
    (folder / "fit_results.json").write_text(json.dumps({"poi": {"bestfit": bestfit, "uncertainty": uncertainty}}))
    (folder / "metrics.json").write_text(json.dumps({"dataset_source": "quickstart/fileset.json"}))
    (folder / "manifest.json").write_text("{}")
    return folder


def test_update_rewrites_the_number_and_copies_the_figures(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("fit: <!-- generated:fit-result -->0.9 +/- 0.1<!-- /generated:fit-result --> end\n")
    update = docs.update_docs(fake_run(tmp_path / "run"), readme, tmp_path / "figures")
    assert readme.read_text() == "fit: <!-- generated:fit-result -->1.023 +/- 0.113<!-- /generated:fit-result --> end\n"
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(docs.FIGURES)
    assert (tmp_path / "figures" / "pulls.png").read_bytes() == b"\x89PNG pulls.png"
    assert update.bestfit == pytest.approx(1.0234)


def test_incomplete_run_and_missing_block_are_refused(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "manifest.json").unlink()
    with pytest.raises(AGCError, match="not a complete run"):
        docs.update_docs(run, tmp_path / "README.md", tmp_path / "figures")
    with pytest.raises(AGCError, match="no generated block 'fit-result'"):
        docs.replace_block("no block here", "fit-result", "1")


def test_readme_has_the_generated_block_and_its_figures_exist():
    text = (REPO_ROOT / "README.md").read_text()
    assert re.search(r"<!-- generated:fit-result -->\d\.\d{3} \+/- \d\.\d{3}<!-- /generated:fit-result -->", text)
    images = re.findall(r'src="(docs/[^"]+)"|\]\((docs/[^)]+\.png)\)', text)
    paths = [a or b for a, b in images]
    assert paths and all((REPO_ROOT / p).is_file() for p in paths), paths
    assert "OWNER/REPO" not in text
