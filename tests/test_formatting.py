"""The shared message helpers: a reason is never empty, sizes read the same everywhere."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nas.formatting import bytes_and_kb, first_line, jsonable, kb, package_versions


def test_first_line_of_an_exception_with_an_empty_message_is_its_type() -> None:
    assert first_line(MemoryError()) == "MemoryError"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(RuntimeError("\n\n  ")) == "RuntimeError"


def test_first_line_skips_blank_lines_and_can_name_the_type() -> None:
    e = RuntimeError("\n  OOM when allocating tensor\nwith shape [64,96,96,16]\n")
    assert first_line(e) == "OOM when allocating tensor"
    assert first_line(e, with_type=True) == "RuntimeError: OOM when allocating tensor"
    assert first_line("a\nb") == "a"
    assert len(first_line("x" * 2000)) == 500


def test_sizes() -> None:
    assert kb(None) == "-" and kb(float("nan")) == "-"
    assert kb(256_000) == "250.0 KB"
    assert bytes_and_kb(23_040) == "23,040 B (22.5 KB)" and bytes_and_kb(None) == "-"


def test_jsonable() -> None:
    out = json.dumps({"a": np.int64(3), "b": np.arange(3), "c": Path("/x"), "d": np.float32(0.5)}, default=jsonable)
    assert json.loads(out) == {"a": 3, "b": [0, 1, 2], "c": "/x", "d": 0.5}
    with pytest.raises(TypeError, match="object"):
        json.dumps({"x": object()}, default=jsonable)


def test_package_versions() -> None:
    v = package_versions(("numpy", "no-such-package-xyz"))
    assert v["numpy"] == np.__version__ and "no-such-package-xyz" not in v and "python" in v
