"""The README's numbers and figures, taken from a complete run so that they cannot go stale.

``make docs-figures`` runs the quick start into ``outputs/docs-quickstart`` and then
``python -m utils.run.docs outputs/docs-quickstart``, which copies the run's figures into
``docs/figures/`` and rewrites the README's generated blocks (between ``<!-- generated:NAME -->``
and ``<!-- /generated:NAME -->``) from the run's ``fit_results.json`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.config import REPO_ROOT
from utils.errors import AGCError
from utils.io import write_text_atomic

log = logging.getLogger(__name__)

README = REPO_ROOT / "README.md"
DOCS_FIGURES = REPO_ROOT / "docs" / "figures"
#: the run's figures the README shows, by the name they have in docs/figures/
FIGURES = (
    "stack_4j1b.png",
    "stack_4j2b.png",
    "variations_btag_4j1b.png",
    "variations_jet_4j2b.png",
    "pulls.png",
    "data_mc_postfit_4j2b-SR.png",
)


@dataclass(frozen=True)
class DocsUpdate:
    dataset: str
    bestfit: float
    uncertainty: float
    figures: tuple[Path, ...]
    blocks: tuple[str, ...]


def fit_sentence(bestfit: float, uncertainty: float) -> str:
    return f"{bestfit:.3f} +/- {uncertainty:.3f}"


def replace_block(text: str, name: str, content: str, source: str = "README") -> str:
    """``text`` with the generated block ``name`` replaced by ``content``."""
    pattern = re.compile(rf"(<!-- generated:{re.escape(name)} -->)(.*?)(<!-- /generated:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise AGCError(
            f"{source}: no generated block {name!r} (<!-- generated:{name} --> ... <!-- /generated:{name} -->)"
        )
    return pattern.sub(lambda m: m.group(1) + content + m.group(3), text)


def update_docs(run_dir: str | Path, readme: Path = README, figures_dir: Path = DOCS_FIGURES) -> DocsUpdate:
    """Copy a complete run's figures into ``figures_dir`` and rewrite the generated blocks of
    ``readme`` from its results."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise AGCError(f"{run_dir}: no manifest.json, not a complete run; run `make docs-figures`")
    results = json.loads((run_dir / "fit_results.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    poi = results["poi"]
    dataset = str(metrics.get("dataset_source", run_dir.name))
    figures_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in FIGURES:
        source = run_dir / "figures" / name
        if not source.is_file():
            raise AGCError(f"{source}: figure missing from the run; was it run with SYSTEMATICS='all' and the fit?")
        shutil.copyfile(source, figures_dir / name)
        copied.append(figures_dir / name)
    text = readme.read_text()
    text = replace_block(text, "fit-result", fit_sentence(poi["bestfit"], poi["uncertainty"]), str(readme))
    write_text_atomic(readme, text)
    log.info("%s: ttbar_norm %s; %d figures in %s", readme, fit_sentence(poi["bestfit"], poi["uncertainty"]),
             len(copied), figures_dir)  # fmt: skip
    return DocsUpdate(dataset, poi["bestfit"], poi["uncertainty"], tuple(copied), ("fit-result",))


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        raise SystemExit("usage: python -m utils.run.docs RUN_FOLDER   (a complete run of the quick start)")
    update = update_docs(argv[0])
    for path in update.figures:
        log.info("figure %s", path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main(sys.argv[1:])
