"""The fit stage of the notebook, timed: ``python -m utils.benchmark.fit_stage HISTOGRAMS OUTPUT_DIR``.

Runs what the notebook's "Statistical inference" cell runs (``run_inference`` with PNG figures)
after what its set-up cell imports and a first CMS-style figure (the notebook's histogram figures
come before its fit), in this fresh process, and writes ``fit_stage.json`` into
``OUTPUT_DIR``: the stage's wall and CPU time, the inference's own timings (templates, workspace,
fit, scan, figures), the import of the inference packages, and what is left ("other": results
JSON, checksums, versions). ``beyond_fit_s`` is the stage less the fit itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from utils.io import write_json_atomic

log = logging.getLogger(__name__)


def measure(histograms: Path, output_dir: Path) -> dict[str, float]:
    import matplotlib.pyplot  # noqa: F401  # the notebook's set-up imports these first

    from utils.config import load_analysis_config
    from utils.histograms import figures  # noqa: F401

    config = load_analysis_config()
    _draw_before()
    wall, cpu = time.perf_counter(), time.process_time()
    from utils.inference.results import run_inference

    result = run_inference(histograms, output_dir, figure_format="png", analysis=config)
    stage_wall, stage_cpu = time.perf_counter() - wall, time.process_time() - cpu
    timings = {k: v for k, v in result.timings.items() if k != "total"}
    numbers = {
        "stage_wall_s": stage_wall,
        "stage_cpu_s": stage_cpu,
        "imports_and_other_s": stage_wall - sum(timings.values()),
        **{f"{k}_s": v for k, v in timings.items()},
        "beyond_fit_s": stage_wall - timings["fit"],
        "bestfit": result.bestfit,
        "uncertainty": result.uncertainty,
    }
    return numbers


def _draw_before() -> None:
    """What the notebook's histogram figures have done before its fit: a figure of the CMS style
    drawn (its fonts and the mathtext parser loaded)."""
    import io

    import matplotlib.pyplot as plt

    from utils.histograms.figures import cms_style

    with cms_style((4.0, 3.0)):
        fig, ax = plt.subplots()
        ax.set_xlabel(r"$m_{bjj}$ [GeV]")
        fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(argv) != 2:
        log.error("%s", __doc__)
        return 2
    histograms, output_dir = Path(argv[0]), Path(argv[1])
    numbers = measure(histograms, output_dir)
    write_json_atomic(output_dir / "fit_stage.json", numbers)
    log.info("%s", json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
