"""Analysis preservation and RECAST-style reinterpretation.

- :mod:`~utils.preservation.signal`: a signal is an input (a dataset description with its own
  cross-section), processed with the analysis configuration as the signal model's sample;
- :mod:`~utils.preservation.samples`: processing per sample, per-sample histograms, merging;
- :mod:`~utils.preservation.model`: background-only workspace, signal patches, patchsets, CLs;
- :mod:`~utils.preservation.publish`: ``agc publish`` (likelihood, patchset, HEPData tables,
  provenance) and ``agc reinterpret`` (a new signal against the published likelihood);
- :mod:`~utils.preservation.steps`: the workflow steps (``python -m utils.preservation``).

See docs/preservation.md.
"""

from utils.preservation.cli import publish, reinterpret

__all__ = ["publish", "reinterpret"]
