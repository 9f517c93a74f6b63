"""Faster ZLIB decompression for uproot.

uproot 5.7 decompresses ZLIB baskets with Python's zlib unless told otherwise; ISA-L's
inflater (the ``isal`` package) is about twice as fast and gives identical bytes. The switch
is uproot's private class attribute ``uproot.compression._DecompressZLIB.library``; this module
is the one place that touches it, checks that it still exists, and falls back to zlib with a
warning if it does not.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_WARNED = False


def use_fast_zlib(library: str = "isal") -> str:
    """Make uproot inflate ZLIB baskets with ``library`` (isal, deflate or zlib) in this process.

    Idempotent and cheap: the processor calls it at the start of every chunk so that it holds
    in every worker process. Returns the library in use afterwards.
    """
    global _WARNED
    import uproot.compression

    cls = getattr(uproot.compression, "_DecompressZLIB", None)
    if cls is None or not hasattr(cls, "library"):
        if not _WARNED:
            log.warning("this uproot has no _DecompressZLIB.library switch; ZLIB stays on Python's zlib")
            _WARNED = True
        return "zlib"
    if cls.library == library:
        return library
    if library == "isal":
        try:
            import isal.isal_zlib  # noqa: F401
        except ImportError:
            if not _WARNED:
                log.warning("isal is not installed; ZLIB decompression stays on Python's zlib")
                _WARNED = True
            return cls.library
    cls.library = library
    return library
