"""utils.io: strict-JSON content of results."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from utils.io import json_ready, write_json_atomic


@dataclass(frozen=True)
class _Summary:
    value: float
    band: tuple[float, ...]


def test_json_ready_gives_strict_json(tmp_path):
    content = {"a": _Summary(math.inf, (1.0, math.nan)), "b": [(1, 2)], "c": None, "d": "text"}
    ready = json_ready(content)
    assert ready == {"a": {"value": None, "band": [1.0, None]}, "b": [[1, 2]], "c": None, "d": "text"}
    path = write_json_atomic(tmp_path / "out.json", ready)
    assert json.loads(path.read_text()) == ready
    assert json_ready(None) is None and json_ready(_Summary) is _Summary  # a class is left alone
