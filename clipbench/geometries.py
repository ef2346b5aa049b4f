"""A model's resize/crop written down as data once, per library version, in the cache folder:
the `pixels` job then runs it without importing torch, torchvision and open_clip, which only
building the transform needs (2.3 s of that job's 6.7 on a 2-vCPU Xeon, on the critical path
before any model computes).

What is written: the steps (`clipbench.resample.GeometricSteps.describe`) and the geometry
key the encode jobs compare. It is keyed by the geometry's config entry, the contents of the
files it names (a custom architecture's config), the versions of the libraries that decide a
transform, and the source of the code that builds and runs it; any change makes a new entry.
A geometry whose steps cannot be described is built as before, every time.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from importlib import metadata
from pathlib import Path

from clipbench.arrow_io import atomic_path
from clipbench.cache import cache_dir
from clipbench.encoders import Geometry
from clipbench.kinds.base import ModelSpec

log = logging.getLogger("clipbench")

LIBRARIES = ("open_clip_torch", "torchvision", "torch", "pillow", "timm", "transformers")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_path(spec: ModelSpec) -> Path:
    here = Path(__file__)
    code = [here, here.with_name("resample.py"), Path(inspect.getfile(type(spec)))]
    parts = {
        "entry": spec.geometry_entry(),
        "files": [_sha(Path(f).read_bytes()) for f in spec.geometry_files()],
        "libraries": {name: _version(name) for name in LIBRARIES},
        "code": [_sha(path.read_bytes()) for path in code],
    }
    key = _sha(json.dumps(parts, sort_keys=True, default=str).encode())[:32]
    return cache_dir() / "geometry" / f"{key}.json"


def cached_geometry(spec: ModelSpec) -> Geometry:
    """``spec.geometry()``, from the cache where it was written down before, else built and
    (where its steps can be described) written down for the next job."""
    from clipbench.resample import DescribedSteps

    try:
        path = cache_path(spec)
    except OSError:  # a file it names is unreadable: spec.geometry() says why
        return spec.geometry()
    try:
        held = json.loads(path.read_text())
        return Geometry(DescribedSteps(held["steps"]), held["key"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not written yet, unreadable or of another layout: build it
    geometry = spec.geometry()
    describe = getattr(geometry.resize_crop, "describe", None)
    steps = describe() if describe is not None else None
    if steps is not None and geometry.geometry_key is not None:
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"key": geometry.geometry_key, "steps": steps}))
        except OSError as exc:  # e.g. a read-only cache folder: built again next time
            log.debug("geometry not cached (%s)", exc)
    return geometry
