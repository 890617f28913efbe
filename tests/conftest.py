"""Test-session settings shared by every test module."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from nas.datacache import ENV_CACHE_DIR

_CACHE_KEY = pytest.StashKey[str]()  # the folder this session made (removed at its end)


def pytest_configure(config: pytest.Config) -> None:
    """Image caches go to a throw-away folder, never the user's ``~/.cache/tinynas`` (workers inherit it)."""
    folder = tempfile.mkdtemp(prefix="tinynas-test-cache-")
    config.stash[_CACHE_KEY] = folder
    os.environ[ENV_CACHE_DIR] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(config.stash.get(_CACHE_KEY, ""), ignore_errors=True)
