"""What the futures workers' fork server loads once, before it forks the workers.

Imported by the fork server (``multiprocessing`` forkserver preload, see
:func:`utils.processing.executors.worker_context`), never by library code: its import has the
side effect of initialising numba (the extension registries and entry points, ~3 s of CPU on
first use in every process otherwise). Each worker forked from the server starts with coffea,
awkward, uproot, numba and the processor imported and numba initialised; torch is not loaded
here (only a run with ML on loads it, in its warm-up).
"""

from __future__ import annotations

import numba

import utils.processing.processor  # noqa: F401 (coffea, awkward, uproot, the selection kernels)
from utils.processing.fastio import use_fast_zlib


@numba.njit(cache=False)
def _first_compilation(x: int) -> int:
    return x + 1


_first_compilation(1)  # numba's compilation chain is initialised once here, not in every worker
use_fast_zlib()
