"""Which device a job runs on, and what each `encode.precision` setting means there.

Every setting means the same accuracy on every machine, decided by what the hardware does, not
by its name:

- ``fp32-strict``: float32 kernels, nothing reduced.
- ``fp32``: float32 results at float32-level error. Another float32 matmul mode (oneDNN's
  ``"medium"``, CUDA's TF32) runs only where it measures float32-level error and faster on
  this device (:mod:`clipbench.fp32_modes`); on AMX CPUs ``"medium"`` computes in bf16 and is
  refused, on CUDA TF32 is.
- ``bf16`` / ``fp16``: reduced precision, deviation from strict float32 measured per run.
  On CPU the weights are cast (measured: autocast re-casts per op and ran ViTs slower than
  fp32); on CUDA autocast runs under ``no_grad``, where its weight-cast cache works (under
  ``inference_mode`` it does not, and every op casts its weights again).
- ``auto`` (default): the fastest reduced precision the device runs natively (bf16 on CPUs
  with AVX-512 BF16 or AMX and on CUDA devices that support it, fp16 on older GPUs), fp32
  where there is none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clipbench.errors import InputError
from clipbench.fp32_modes import fp32_matmul_level, fp32_post_ops, matmul_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Bounds on the largest elementwise difference of L2-normalised embeddings between two
# computations at a precision (batched vs one at a time, fast path vs reference): what the
# tests hold each precision to.
EMBEDDING_TOLERANCE = {"fp32-strict": 2e-5, "fp32": 2e-5, "bf16": 2e-2, "fp16": 5e-3}
# The stated bound on each run's measured deviation from strict float32 (largest cosine
# distance over the strict sample), held by the tests on the demo's models.
DEVIATION_BOUND = {"fp32-strict": 0.0, "fp32": 1e-5, "bf16": 1e-3, "fp16": 1e-3}


def resolve_device(requested: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit device must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {requested!r} requested but CUDA is not available; use auto")
    return device


def native_reduced(device: torch.device) -> str | None:
    """The reduced precision the device computes natively, None where it only emulates one."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "cpu" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    ):
        return "bf16"
    return None


@dataclass(frozen=True)
class Precision:
    """What a precision setting runs as on one device (see the module's docstring)."""

    requested: str  # the config value
    name: str  # what runs: fp32-strict, fp32, bf16 or fp16
    device: torch.device
    matmul: str  # torch float32 matmul precision for the float32 parts
    cast_weights: bool  # the model's weights are cast to `dtype`
    autocast: bool  # ops run under torch.autocast(dtype)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights and of the pixels fed to the model."""
        return DTYPES[self.name] if self.cast_weights else torch.float32

    @property
    def reduced(self) -> bool:
        """bf16 or fp16, by cast weights or autocast."""
        return self.name in ("bf16", "fp16")

    @property
    def strict(self) -> bool:
        """Strict float32 kernels in the library's own modules: the reference every other
        setting's deviation is measured against."""
        return self.name == "fp32-strict"

    @property
    def fast_paths(self) -> bool:
        """Whether the encoders may swap in their fused fast paths (clipbench.fused)."""
        return not self.strict

    @property
    def tolerance(self) -> float:
        return EMBEDDING_TOLERANCE[self.name]

    @property
    def deviation_bound(self) -> float:
        return DEVIATION_BOUND[self.name]

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        # Autocast caches its casts of the weights only outside inference_mode.
        grad = torch.no_grad() if self.autocast else torch.inference_mode()
        with contextlib.ExitStack() as stack:
            stack.enter_context(grad)
            stack.enter_context(matmul_precision(self.matmul))
            if self.autocast:
                stack.enter_context(torch.autocast(self.device.type, dtype=DTYPES[self.name]))
            yield

    def describe(self, fused: bool = False) -> dict:
        """What runs; with ``fused`` (the encoder runs clipbench.fused's fast paths) also where
        their float32 linears' add and activation run, as measured here."""
        mechanism = "cast weights" if self.cast_weights else "autocast" if self.autocast else None
        described = {
            "requested": self.requested,
            "ran": self.name,
            "float32_matmul": self.matmul,
            "mechanism": mechanism or "float32",
        }
        if fused and self.name == "fp32" and self.device.type == "cpu":
            post_ops = fp32_post_ops(self.device)
            described["float32_epilogues"] = "oneDNN post-ops" if post_ops else "after the GEMM"
        return described


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The :class:`Precision` a setting runs as on ``device``; an impossible pair is refused."""
    name = requested
    if requested == "auto":
        name = native_reduced(device) or "fp32"
    if name == "fp16" and device.type != "cuda":
        raise InputError("precision fp16 needs a CUDA device; use bf16, fp32 or auto on CPU")
    if name == "fp32-strict":
        return Precision(requested, name, device, "highest", False, False)
    if name == "fp32":
        return Precision(requested, name, device, fp32_matmul_level(device), False, False)
    cast = device.type == "cpu"
    return Precision(requested, name, device, "highest", cast, not cast)


def deviation_from(strict: np.ndarray | None, embeddings: np.ndarray) -> dict | None:
    """Largest cosine distance between embeddings and their strict float32 counterparts."""
    if strict is None:
        return None
    distance = 1.0 - np.sum(strict * embeddings[: len(strict)], axis=1)
    return {"max_cosine_distance": float(distance.max()), "sample": len(strict)}
