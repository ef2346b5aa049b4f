"""C kernels compiled on first use by the machine's C compiler and loaded with ctypes.

A shared library is cached per source, compiler and CPU (a cache folder shared by cluster
nodes of different CPUs keeps one per CPU); where no compiler works, :func:`load` returns None
and the caller keeps its torch path. ctypes releases the GIL during a call, so Python threads
can run one kernel on several parts at once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clipbench.cache import cache_dir
from clipbench.cpus import cpu_identity

HERE = Path(__file__).parent
# The flags every kernel that splits its work is built with (see run_split): torch's OpenMP.
OPENMP_FLAGS = ("-fopenmp",)


def _arch_flags() -> list[str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return ["-march=native"]
    if machine in ("aarch64", "arm64"):
        return ["-mcpu=native"]
    return []


def _compile(compiler: str, source: Path, target: Path, extra: tuple[str, ...]) -> None:
    """Compile to a temporary file and move it into place: concurrent jobs never load a
    half-written library. Retried without the ``extra`` flags, then without the CPU-specific
    ones, if the compiler refuses them."""
    target.parent.mkdir(parents=True, exist_ok=True)
    base = ["-O3", "-shared", "-fPIC", "-std=c99"]
    arch = _arch_flags()
    attempts = [base + arch + list(extra), base + arch, base + list(extra), base]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        for flags in dict.fromkeys(tuple(a) for a in attempts):
            done = subprocess.run(
                [compiler, *flags, "-o", str(out), str(source)], capture_output=True, text=True
            )
            if done.returncode == 0:
                os.replace(out, target)
                return
        raise OSError(f"{compiler} failed: {done.stderr.strip()[-500:]}")


@functools.cache
def _compiler_version(compiler: str) -> str:
    """What ``compiler --version`` prints: asked once per process, not once per kernel."""
    return subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout


@functools.cache
def load(name: str, extra: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The library built from ``clipbench/<name>.c`` (with the compiler flags ``extra`` where
    the compiler takes them), or None (with a warning) where it cannot be built or loaded.
    ``$CLIPBENCH_NATIVE=0`` turns every kernel off."""
    if os.environ.get("CLIPBENCH_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = HERE / f"{name}.c"
    try:
        version = _compiler_version(compiler)
        # The headers the sources include (native.h) are part of what is built.
        sources = [source.read_text(), *(h.read_text() for h in sorted(HERE.glob("*.h")))]
        key = hashlib.sha256(
            "\0".join([*sources, compiler, version, cpu_identity(), *extra]).encode()
        ).hexdigest()[:16]
        target = cache_dir() / "native" / f"{name}-{key}.so"
        if not target.is_file():
            _compile(compiler, source, target, extra)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as exc:
        warnings.warn(f"native kernel {name} unavailable ({exc}); torch path", stacklevel=2)
        return None


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="native")


def run_parts(kernel, args: tuple, parts: int) -> list:
    """``kernel(*args, part, parts)`` for every part, on ``parts`` threads at once (ctypes
    releases the GIL), the first on the calling thread; the kernels' return values in order."""
    if parts <= 1:
        return [kernel(*args, 0, 1)]
    others = [_pool(parts - 1).submit(kernel, *args, p, parts) for p in range(1, parts)]
    first = kernel(*args, 0, parts)
    return [first] + [other.result() for other in others]


def declare_split(lib: ctypes.CDLL, name: str, signature: list, restype) -> None:
    """Argument and result types of the two entry points :func:`run_split` calls:
    ``name(*signature, part, parts)`` and ``<name>_threads(*signature, threads)``."""
    for kernel, extra in ((getattr(lib, name), 2), (getattr(lib, f"{name}_threads"), 1)):
        kernel.argtypes = [*signature, *[ctypes.c_int64] * extra]
        kernel.restype = restype


def run_split(lib: ctypes.CDLL, name: str, args: tuple, threads: int) -> list:
    """C function ``name`` of ``lib`` over ``threads`` threads; the calls' return values.
    Built with OpenMP (``built_with_openmp()``), one call of ``<name>_threads(*args,
    threads)``: the library binds to the libgomp torch loaded, so those are torch's own
    threads, where Python threads would compete with them while they spin after a GEMM
    (ViT-B-32 bf16 attention: 150 img/s against 137). Else ``<name>(*args, part, parts)`` per
    part on Python threads (:func:`run_parts`)."""
    if lib.built_with_openmp():
        return [getattr(lib, f"{name}_threads")(*args, threads)]
    return run_parts(getattr(lib, name), args, threads)
