"""ISA-L decompression gives the same arrays as Python's zlib."""

import numpy as np
import uproot
import uproot.compression

from utils.processing.fastio import use_fast_zlib
from utils.processing.selection import READ_BRANCHES


def test_isal_switch_reads_identical_arrays(poet_file):
    cls = uproot.compression._DecompressZLIB
    before = cls.library
    try:
        cls.library = "zlib"
        with uproot.open(poet_file) as f:
            ref = f["events"].arrays(list(READ_BRANCHES), library="np")
        assert use_fast_zlib("isal") == "isal"
        assert cls.library == "isal"
        with uproot.open(poet_file) as f:
            fast = f["events"].arrays(list(READ_BRANCHES), library="np")
        for b in READ_BRANCHES:
            for x, y in zip(ref[b], fast[b], strict=True):
                np.testing.assert_array_equal(x, y)
    finally:
        cls.library = before
