"""Executing a notebook with papermill: the main analysis notebook, into a run's output folder."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT
from utils.errors import AGCError

MAIN_NOTEBOOK = REPO_ROOT / "notebooks" / "ttbar_analysis_pipeline.ipynb"


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value: a Python literal (``2``, ``True``, ``None``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def ipc_kernel_manager_class() -> type:
    """A kernel manager whose kernel talks over local IPC sockets, not TCP: nothing listens on
    a port, and ipykernel has no unencrypted TCP transport to warn about."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

    return IPCKernelManager


def execute_notebook(
    parameters: dict, output_dir: Path, notebook: Path = MAIN_NOTEBOOK, kernel_name: str = "python3",
    progress: bool = True,
) -> Path:  # fmt: skip
    """Execute a notebook with papermill; the executed copy goes into ``output_dir``."""
    import papermill

    output_dir = Path(output_dir).resolve()  # the kernel runs in notebooks/: never a relative path
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = output_dir / notebook.name
    parameters = {**parameters, "OUTPUT_DIR": str(output_dir)}
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=parameters, cwd=str(notebook.parent),
            kernel_name=kernel_name, progress_bar=progress, log_output=False,
            kernel_manager_class=ipc_kernel_manager_class(),
            shutdown_kernel="immediate",  # Ctrl-C: the kernel is stopped at once, not mid-reply
        )  # fmt: skip
    except papermill.PapermillExecutionError as err:
        raise AGCError(
            f"notebook cell {err.exec_count} failed with {err.ename}: {err.evalue}\n"
            f"the executed notebook with the error is {executed}"
        ) from None
    return executed
