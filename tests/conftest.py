"""Test-session settings shared by every test module."""
from __future__ import annotations

import os
import tempfile

from nas.datacache import ENV_CACHE_DIR


def pytest_configure(config) -> None:
    """Image caches go to a throw-away folder, never the user's ``~/.cache/tinynas`` (workers inherit it)."""
    os.environ[ENV_CACHE_DIR] = tempfile.mkdtemp(prefix="tinynas-test-cache-")
