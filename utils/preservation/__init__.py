"""Analysis preservation and RECAST-style reinterpretation.

- :mod:`~utils.preservation.signal`: a signal is an input (a dataset description with its own
  cross-section), processed with the analysis configuration as the signal model's sample;
- :mod:`~utils.preservation.samples`: processing per sample, per-sample histograms, merging;
- :mod:`~utils.preservation.model`: background-only workspace, signal patches, patchsets;
- :mod:`~utils.preservation.evaluation`: CLs and upper limit of a signal point (through
  :mod:`utils.inference.limits`, the limit of the inference stage);
- :mod:`~utils.preservation.publish`: ``agc publish`` (likelihood, patchset, HEPData tables,
  provenance) and ``agc reinterpret`` (a new signal against the published likelihood);

The commands are in :mod:`utils.cli.preservation` (``agc publish``, ``agc reinterpret``) and
:mod:`utils.cli.workflow` (the workflow steps, ``python -m utils.cli.workflow STEP``).

See docs/preservation.md.
"""
