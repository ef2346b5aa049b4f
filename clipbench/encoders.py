"""The interface every model kind's encoder implements (clipbench.kinds: one module per kind),
and the loading helpers they share: safe checkpoint reads, hub files fetched with retries,
skipped random initialisation, batch normalisation.

torch is imported inside the functions that use it: the kind modules build on this one, and
the Snakefile imports those on every invocation.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipbench.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from clipbench.precision import Precision
    from clipbench.settings import RetrySettings

OFFLINE_HINT = (
    "Offline? Set HF_HUB_OFFLINE=1 with a populated Hugging Face cache, or point the model "
    "to local files (`checkpoint`, `model_config`, `text_model_dir`, `image_checkpoint`, "
    "`model_dir`)"
)


@dataclass(frozen=True)
class Geometry:
    """Only a model's resize/crop, built from its spec without its weights
    (``ModelSpec.geometry``): what the shared `pixels` job needs of an encoder."""

    resize_crop: Callable[[Image.Image], Image.Image]
    geometry_key: str | None  # as Encoder.geometry_key

    def geometry(self, image: Image.Image) -> Image.Image:
        return self.resize_crop(image)


class Encoder:
    """Maps PIL images and caption strings into one embedding space (unnormalised)."""

    kind: str
    # Describes `geometry` exactly; images prepared once by it can be shared by every model with
    # the same key (None: not shareable).
    geometry_key: str | None = None
    # The hub commit the weights came from, where the loader reports it (recorded per run).
    resolved_revision: str | None = None

    def geometry(self, image: Image.Image) -> Image.Image:
        """The resize/crop part of preprocessing: RGB PIL image in, PIL image out."""
        raise NotImplementedError

    def finish(self, image: Image.Image) -> torch.Tensor:
        """The rest of preprocessing, on `geometry`'s output: to a normalised tensor."""
        raise NotImplementedError

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.geometry(image))

    def finish_batch(self, pixels: np.ndarray) -> torch.Tensor | None:
        """``finish`` on a whole batch of ``geometry`` outputs (B, H, W, 3 uint8) at once,
        bit-identical to it image by image; None where the steps are not known to allow it."""
        return None

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    # Convolutional image towers run faster with NHWC activations (oneDNN, cuDNN).
    channels_last = False

    def image_tower(self) -> torch.nn.Module:
        raise NotImplementedError

    def to(self, device: torch.device) -> Encoder:
        import torch

        for module in self.modules():
            module.to(device).eval()
        self.channels_last = any(
            isinstance(m, torch.nn.Conv2d) and m.kernel_size != m.stride
            for m in self.image_tower().modules()
        )
        if self.channels_last:
            self.image_tower().to(memory_format=torch.channels_last)
        self.device = device
        self.dtype = torch.float32
        return self

    # CPU fast paths (clipbench.fused) for every precision but fp32-strict, each tested
    # against the stock module; False keeps the library's modules as they are.
    fast_paths = True
    fused = False

    def set_image_tower(self, tower: torch.nn.Module) -> None:
        raise NotImplementedError

    def apply_fast_paths(self) -> None:
        """Fused transformer blocks, attention pools and patch embeddings in every tower,
        folded and fused convolutions in the image tower: done in float32, before the weights
        are cast, so folding rounds once."""
        from clipbench.fused import (
            fuse_attention_pools,
            fuse_convolutional_tower,
            fuse_patch_embeddings,
            fuse_transformer_blocks,
        )

        for module in self.modules():
            fuse_transformer_blocks(module)
            fuse_attention_pools(module)
            fuse_patch_embeddings(module)
        tower = self.image_tower()
        fused = fuse_convolutional_tower(tower)
        if fused is not tower:
            self.set_image_tower(fused)
        self.fused = True

    def set_precision(self, policy: Precision) -> None:
        """Weights in the dtype the policy runs (float32 unless it casts them), through the
        fused fast paths on CPU unless the policy is strict float32. Both changes are one-way:
        the stock float32 modules do not come back without reloading the model."""
        import torch

        fast = policy.fast_paths and self.fast_paths and self.device.type == "cpu"
        if policy.dtype == self.dtype and fast == self.fused:
            return
        if self.dtype != torch.float32 or (self.fused and not fast):
            raise RuntimeError(
                f"the weights were cast to {self.dtype} or fused for speed; reload the model "
                "for strict float32"
            )
        if fast:
            self.apply_fast_paths()
        for module in self.modules():
            module.to(policy.dtype)
        self.dtype = policy.dtype

    @property
    def image_tokens(self) -> int | None:
        """Tokens per image of a transformer image tower (None for convolutional ones)."""
        grid = getattr(self.image_tower(), "grid_size", None)
        return None if grid is None else int(grid[0] * grid[1]) + 1

    def pixels_to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        pixels = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last:
            return pixels.contiguous(memory_format=torch.channels_last)
        return pixels


def normalized_batch(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 normalised, as to_tensor then Normalize
    compute it per image: the same elementwise float32 operations (÷255, −mean, ÷std), so the
    same bits. The result is a channels-last view of the pixels' own layout."""
    import torch

    with warnings.catch_warnings():  # read-only stored pixels: .to() copies them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32).div_(255)
    shape = (1, -1, 1, 1)
    return x.sub_(torch.as_tensor(mean).view(shape)).div_(torch.as_tensor(std).view(shape))


def _left_as_is(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def initialization_skipped():
    """Module constructors inside skip their random initialisation (``torch.nn.init``), for a
    model whose every parameter a strict checkpoint load overwrites next: drawing 150M random
    numbers costs 0.5–0.8 s of each CLIP encode job for nothing. transformers' from_pretrained
    does the same. Only around a load that fails unless it fills every parameter."""
    import torch

    names = [n for n in vars(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, _left_as_is)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors or a plain tensor pickle; never arbitrary code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    unreadable = (
        f"checkpoint {path} is truncated or not a checkpoint at all; fetch or save it again "
        "(.safetensors, or a torch.save(state_dict) file)"
    )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise InputError(f"{unreadable}: {exc}") from exc
    try:
        # weights_only: the unpickler builds tensors and containers, and refuses everything
        # else, so a checkpoint cannot run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the first global it refused ("… unsupported GLOBAL posix.system …").
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise InputError(
                f"checkpoint {path} holds more than tensors (it refers to {found[1]}), and "
                "pickled objects could run code; save its state_dict as .safetensors instead"
            ) from exc
        raise InputError(
            f"checkpoint {path} is not a readable torch checkpoint (torch.load with "
            "weights_only refused it); use .safetensors or a torch.save(state_dict) file"
        ) from exc
    except (EOFError, RuntimeError) as exc:  # empty, or a zip archive cut short
        raise InputError(f"{unreadable}: {exc}") from exc
    return state.get("state_dict", state) if isinstance(state, dict) else state


def fetch_hub_file(
    repo_id: str, filenames: list[str], revision: str, retry: RetrySettings, what: str
) -> Path:
    """The first of ``filenames`` that ``repo_id`` holds at ``revision``, through clipbench.hub:
    a broken transfer is retried, and the bytes are checked against the hub's content hash
    before anything loads them."""
    from huggingface_hub import errors, hf_hub_download

    from clipbench.hub import fetch

    def download() -> list[Path]:
        missing: Exception | None = None
        for name in filenames:
            try:
                return [Path(hf_hub_download(repo_id, name, revision=revision))]
            except errors.EntryNotFoundError as exc:  # not in the repo (or not cached offline)
                missing = exc
        raise missing

    return fetch(download, f"{what} from {repo_id}@{revision}", retry, advice=OFFLINE_HINT)[0]
