"""Where derived files are kept between jobs: the report's JavaScript bundle, compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$CLIPBENCH_CACHE, else the user's cache folder."""
    if os.environ.get("CLIPBENCH_CACHE"):
        return Path(os.environ["CLIPBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipbench"
