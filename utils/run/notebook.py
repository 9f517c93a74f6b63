"""Notebook conveniences: short error display for project errors."""

from __future__ import annotations

from utils.errors import AGCError


def show_project_errors_briefly() -> bool:
    """In IPython, show an :class:`AGCError` as its message in the cell that failed, without the
    traceback through the library (other exceptions keep their full traceback). The cell still
    fails, so papermill and "Run All" stop there. Returns whether a handler was installed."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None:
        return False

    def handler(shell, etype, evalue, tb, tb_offset=None):
        shell.showtraceback((etype, evalue, None), exception_only=True)
        return None

    ip.set_custom_exc((AGCError,), handler)
    return True
