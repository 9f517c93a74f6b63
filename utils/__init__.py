"""The AGC CMS open data ttbar analysis: one package per stage (datasets, delivery, processing,
histograms, inference) and the runs, benchmarks and preservation built on them."""

import sys

# jsonschema (pyhf's schemas, the metrics schema) imports ``rfc3987_syntax`` when it is installed
# (Jupyter's ``jsonschema[format-nongpl]`` brings it) only to check the "iri" string formats,
# and that import compiles 39 grammars: 1-3.5 s of every kernel's start on 2 cores. Nothing in
# this project checks string formats (no FormatChecker), so the module is marked absent here,
# before jsonschema is imported, and jsonschema leaves the "iri" formats unchecked, as it does
# wherever the package is not installed. A process that imported jsonschema first is unaffected.
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
