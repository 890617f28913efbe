"""Where the tests find the ``shared/`` folder (holdout models, data sets, bug reproducers), and a hard stop
when it is missing.

Why fail rather than skip: CI has ``shared/`` beside the checkout, so a missing file means a broken setup,
and a skip would hide it and the tests that never ran. ``$TINYNAS_SHARED`` points elsewhere (a git worktree
whose ``../shared`` is not the project's).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("TINYNAS_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def require(path: Path) -> Path:
    """``path`` (under :data:`SHARED`) if it exists, else fail the test saying which file and why."""
    if not path.exists():
        pytest.fail(f"missing {path}: these tests need the shared/ folder beside the checkout ({SHARED}; CI has "
                    f"it), or TINYNAS_SHARED set to where it is", pytrace=False)
    return path
