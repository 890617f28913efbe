"""Test-session settings shared by every test module."""
from __future__ import annotations

import os
import shutil
import tempfile

from nas.datacache import ENV_CACHE_DIR

_OWN_CACHE: list[str] = []  # the folder this session made (removed at its end)


def pytest_configure(config) -> None:
    """Image caches go to a throw-away folder, never the user's ``~/.cache/tinynas`` (workers inherit it)."""
    folder = tempfile.mkdtemp(prefix="tinynas-test-cache-")
    _OWN_CACHE.append(folder)
    os.environ[ENV_CACHE_DIR] = folder


def pytest_unconfigure(config) -> None:
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)
