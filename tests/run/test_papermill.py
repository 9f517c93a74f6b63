"""Executing notebooks with papermill: the kernel talks over IPC, so ipykernel has no
unencrypted TCP transport to warn about, and the output is there."""

from __future__ import annotations

import json

import nbformat

from utils.run.papermill import execute_notebook, parse_value


def test_kernel_over_ipc_without_the_tcp_warning(tmp_path, capfd):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("OUTPUT_DIR = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os; print(40 + 2, OUTPUT_DIR is not None)"),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "small.ipynb"
    nbformat.write(notebook, path)
    executed = execute_notebook({}, tmp_path / "out", path, progress=False)
    captured = capfd.readouterr()
    assert "without encryption" not in captured.out + captured.err
    cells = json.loads(executed.read_text())["cells"]
    assert cells[-1]["outputs"][0]["text"] == ["42 True\n"]


def test_parse_value():
    assert parse_value("2") == 2 and parse_value("True") is True and parse_value("coffea") == "coffea"
