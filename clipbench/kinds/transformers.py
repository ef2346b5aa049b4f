"""The `transformers` model kind: any dual encoder on the Hugging Face hub (or in a local
folder) that exposes ``get_image_features`` and ``get_text_features`` (CLIPModel, SiglipModel,
and the like), with the preprocessing of its own image processor and tokenizer. transformers
fetches hub files itself (its own resume), as for the baseline's BERT.

Weights load from safetensors only and ``trust_remote_code`` stays off, so a model folder can
never run code; a hub model is pinned by ``revision``. Decoded pixels are not shared with other
models (``geometry_key`` None): an image processor resizes through its own code path, and no
other kind is provably the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from clipbench.encoders import OFFLINE_HINT, Encoder
from clipbench.errors import InputError
from clipbench.hub import snapshot_commit, unresolvable_hub
from clipbench.kinds.base import ModelSpec

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from clipbench.settings import RetrySettings

# SigLIP was trained on text padded to its full context (64 tokens) and pools the last
# position, so its embeddings depend on the padding; CLIP pools the end-of-text token.
PAD_TO_MAX_LENGTH = ("siglip", "siglip2")


@dataclass(frozen=True, kw_only=True)
class TransformersSpec(ModelSpec):
    kind: ClassVar[str] = "transformers"
    file_fields: ClassVar[tuple[str, ...]] = ("model_dir",)

    model: str | None = None  # a hub id, e.g. openai/clip-vit-base-patch32
    revision: str | None = None  # its hub commit or tag; None follows main
    model_dir: str | None = None  # a local save_pretrained folder instead
    max_length: int | None = None  # text tokens; None: the text tower's context

    def clip_benchmark_names(self) -> tuple[str, str]:
        return self.model or self.model_dir, self.revision or ""

    def load(self, retry: RetrySettings) -> TransformersEncoder:
        return TransformersEncoder(self)


SPEC = TransformersSpec


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose pooler_output holds the projected features;
    earlier versions a tensor."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TransformersEncoder(Encoder):
    kind = "transformers"
    # The library's modules as they are: clipbench.fused knows open_clip's and torchvision's.
    fast_paths = False

    def __init__(self, spec: TransformersSpec):
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        local = spec.model_dir
        if local and not Path(local).is_dir():
            raise InputError(f"model_dir {local} does not exist")
        source = local or spec.model
        # No network: the cache alone, at once, not the hub's retries of a name that never resolves.
        unreachable = None if local else unresolvable_hub()
        common = {
            "revision": spec.revision,
            "local_files_only": bool(local) or unreachable is not None,
            "trust_remote_code": False,
        }
        try:
            # float32 whatever the checkpoint stores (transformers 5 loads the stored dtype by
            # default): the precision policy decides what runs.
            self.model = AutoModel.from_pretrained(
                source, use_safetensors=True, dtype=torch.float32, **common
            )
            if not all(hasattr(self.model, f) for f in ("get_image_features", "get_text_features")):
                raise InputError(
                    f"transformers model {source} ({type(self.model).__name__}) has no "
                    "get_image_features/get_text_features: not an image–text dual encoder"
                )
            self.image_processor = AutoImageProcessor.from_pretrained(source, **common)
            self.tokenizer = AutoTokenizer.from_pretrained(source, **common)
        except InputError:
            raise
        except (OSError, ValueError) as exc:
            why = f" ({unreachable} does not resolve)" if unreachable else ""
            raise InputError(
                f"cannot load transformers model {source}{why}: {exc}. {OFFLINE_HINT}"
            ) from exc
        config = self.model.config
        if not local:  # the cache snapshot the revision (or main) resolved to when loading
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json", revision=spec.revision)
            self.resolved_revision = snapshot_commit(cached) if isinstance(cached, str) else None
        self.model_type = config.model_type
        self.max_length = spec.max_length or config.text_config.max_position_embeddings
        self.padding = "max_length" if self.model_type in PAD_TO_MAX_LENGTH else "longest"

    def modules(self):
        return [self.model]

    def image_tower(self):
        return self.model.vision_model

    def set_image_tower(self, tower):
        self.model.vision_model = tower

    @property
    def image_tokens(self) -> int | None:
        vision = self.model.config.vision_config
        size, patch = vision.image_size, vision.patch_size
        return None if not patch else (size // patch) ** 2 + 1

    # The processor's whole path runs in `finish`: nothing is shared, so no split is needed.
    def geometry(self, image: Image.Image) -> Image.Image:
        return image

    def finish(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def encode_images(self, pixels):
        return _features(self.model.get_image_features(pixel_values=pixels))

    def encode_texts(self, texts):
        batch = self.tokenizer(
            list(texts),
            padding=self.padding,
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        inputs = {
            k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")
        }
        return _features(self.model.get_text_features(**inputs))
