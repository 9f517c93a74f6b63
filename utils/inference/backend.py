"""The pyhf backend of every fit and CLs evaluation of the project, and pyhf's error messages
shortened for ours. :func:`numpy_backend` is used through :mod:`utils.inference.fit`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def numpy_backend(optimizer: Any = None) -> Iterator[None]:
    """Run pyhf on its numpy backend inside the block (whatever a notebook set), then restore.

    ``optimizer``: pyhf's ``custom_optimizer`` (``"minuit"``, an optimizer instance; None is
    pyhf's default, scipy; cabinetry's fits set MINUIT themselves). Build models inside the
    block: a pyhf model keeps tensors of the backend it was built with.
    """
    import pyhf

    previous = pyhf.get_backend()
    pyhf.set_backend("numpy", optimizer)
    try:
        yield
    finally:
        pyhf.set_backend(*previous)


def first_line(err: Exception) -> str:
    """Exception type and first message line (pyhf puts a whole MINUIT dump in its messages)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
