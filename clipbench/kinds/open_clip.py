"""The `open_clip` model kind: an open_clip architecture with a pretrained tag, local weights
(`checkpoint`, and a JSON `model_config` for a custom architecture), an `hf-hub:` repo or a
`local-dir:` folder, loaded through open_clip's own ``create_model_and_transforms``."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from clipbench.encoders import (
    OFFLINE_HINT,
    Encoder,
    Geometry,
    fetch_hub_file,
    initialization_skipped,
    load_state_dict,
    normalized_batch,
)
from clipbench.errors import InputError
from clipbench.hub import cache_only, unresolvable_hub
from clipbench.kinds.base import ModelSpec, slug

if TYPE_CHECKING:
    import torch

    from clipbench.settings import RetrySettings

# open_clip's names for a model's weights in a hub repo, preferred first (as open_clip does).
OPEN_CLIP_WEIGHTS = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
SHORTEST, BICUBIC = "shortest", "bicubic"  # open_clip's defaults (PreprocessCfg)


@dataclass(frozen=True, kw_only=True)
class OpenClipSpec(ModelSpec):
    kind: ClassVar[str] = "open_clip"
    file_fields: ClassVar[tuple[str, ...]] = ("checkpoint", "model_config")
    geometry_fields: ClassVar[tuple[str, ...]] = ("arch", "model_config", "pretrained")
    weights_fields: ClassVar[tuple[str, ...]] = ("checkpoint",)

    arch: str  # an open_clip architecture, hf-hub:org/repo or local-dir:folder
    pretrained: str | None = None  # an open_clip pretrained tag, e.g. openai
    revision: str | None = None  # the hub commit pinning a hosted tag's or hf-hub: weights
    checkpoint: str | None = None  # local weights instead of a tag
    model_config: str | None = None  # <arch>.json defining a custom architecture

    def local_files(self) -> list[str]:
        folder = (
            self.arch.removeprefix("local-dir:") if self.arch.startswith("local-dir:") else None
        )
        return super().local_files() + ([folder] if folder else [])

    def view(self) -> str | None:
        if ":" in self.arch:  # hf-hub:/local-dir: configs are not readable before the job
            return None
        config = self._config_file()
        if config is None:
            return None
        size = config.get("vision_cfg", {}).get("image_size")
        if isinstance(size, list):
            size = "x".join(map(str, size))
        pre = config.get("preprocess_cfg", {})
        mode, interpolation = pre.get("resize_mode", SHORTEST), pre.get("interpolation", BICUBIC)
        return slug(f"open_clip-{size}px-{interpolation}-{mode}")

    def _config_file(self) -> dict[str, Any] | None:
        """The architecture's JSON config, read without importing open_clip."""
        if self.model_config:
            path = Path(self.model_config)
        else:
            found = importlib.util.find_spec("open_clip")  # locates the package, no import
            if found is None or not found.submodule_search_locations:
                return None
            path = Path(found.submodule_search_locations[0]) / "model_configs" / f"{self.arch}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def clip_benchmark_names(self) -> tuple[str, str]:
        return self.arch, self.checkpoint or self.pretrained or ""

    def load(self, retry: RetrySettings) -> OpenClipEncoder:
        return OpenClipEncoder(self, retry)

    def geometry(self) -> Geometry:
        resize_crop, _, key = split_geometry(open_clip_transform(self))
        return Geometry(resize_crop, key)


SPEC = OpenClipSpec


# What in an architecture's config makes open_clip use transformers: a Hugging Face text tower
# or tokenizer.
HF_TEXT_KEYS = ("hf_model_name", "hf_tokenizer_name")


def import_open_clip(spec: OpenClipSpec):
    """open_clip, imported without transformers when ``spec``'s architecture never uses it.

    open_clip imports transformers eagerly, for its Hugging Face text towers: 0.55 s of its
    1.8 s import (2-vCPU Xeon), paid again by every encode and pixels job. With
    ``sys.modules["transformers"] = None`` that import fails, and open_clip leaves out its HF
    parts, as on an install without transformers. Should a later architecture in the same
    process need them, the module holding them is imported again with transformers."""
    config = spec._config_file() if ":" not in spec.arch else None
    needs_hf = config is None or any(key in config.get("text_cfg", {}) for key in HF_TEXT_KEYS)
    if "open_clip" in sys.modules:
        import open_clip.hf_model

        if needs_hf and open_clip.hf_model.transformers is None:
            importlib.reload(open_clip.hf_model)
        return sys.modules["open_clip"]
    if needs_hf or "transformers" in sys.modules:
        import open_clip

        return open_clip
    sys.modules["transformers"] = None  # type: ignore[assignment]
    try:
        import open_clip
    finally:
        del sys.modules["transformers"]
    return open_clip


def pinned_open_clip(spec: OpenClipSpec, retry: RetrySettings) -> tuple[str, Any, dict]:
    """The (architecture, pretrained, extra create_model arguments) that load a `revision`-pinned
    hub model: the files fetched at that commit, then loaded as open_clip loads the unpinned
    ones (a pretrained tag's preprocessing applied as its config says)."""
    import open_clip
    from open_clip.transform import merge_preprocess_dict

    arch, tag, revision = spec.arch, spec.pretrained, spec.revision
    if arch.startswith("hf-hub:"):
        repo_id = arch.removeprefix("hf-hub:")
        config = fetch_hub_file(repo_id, ["open_clip_config.json"], revision, retry, "config")
        fetch_hub_file(repo_id, OPEN_CLIP_WEIGHTS, revision, retry, "weights")
        return f"local-dir:{config.parent}", None, {}
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if not cfg.get("hf_hub"):
        raise InputError(
            f"`revision` pins hub files, and open_clip {arch!r}/{tag} has none: drop `revision`, "
            "or give `pretrained` a tag hosted on the hub (open_clip.list_pretrained()), an "
            "`hf-hub:` arch, or local weights as `checkpoint`"
        )
    repo_id, filename = _split_hub_entry(cfg["hf_hub"])
    weights = fetch_hub_file(
        repo_id, [filename] if filename else OPEN_CLIP_WEIGHTS, revision, retry, "weights"
    )
    # The preprocessing keys a tag's config may override, as create_model_and_transforms takes
    # them for weights given as a file.
    preprocess = merge_preprocess_dict({}, cfg)
    extra = {
        f"image_{key}": preprocess[key]
        for key in ("mean", "std", "interpolation", "resize_mode")
        if key in preprocess
    }
    return arch, str(weights), extra


def _split_hub_entry(entry: str) -> tuple[str, str | None]:
    """open_clip's `hf_hub` entries: 'org/repo/' (default file names) or 'org/repo/file'."""
    org, repo, *rest = entry.split("/")
    return f"{org}/{repo}", "/".join(rest) or None


class OpenClipEncoder(Encoder):
    kind = "open_clip"

    def __init__(self, spec: OpenClipSpec, retry: RetrySettings):
        from safetensors import SafetensorError

        open_clip = import_open_clip(spec)

        arch, checkpoint = spec.arch, spec.checkpoint
        register_model_config(spec)
        pretrained = checkpoint or spec.pretrained
        if checkpoint and not Path(checkpoint).is_file():
            raise InputError(f"checkpoint {checkpoint} does not exist")
        extra: dict[str, Any] = {}
        if pretrained and not checkpoint and not arch.startswith(("hf-hub:", "local-dir:")):
            # open_clip only warns when a tag was trained with QuickGELU (OpenAI's weights) and
            # the arch's config says GELU, then builds GELU: embeddings drift from the
            # published model's. Build what the tag was trained with, pinned or not.
            tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
            extra["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        if spec.revision:
            if checkpoint or arch.startswith("local-dir:"):
                raise InputError(
                    f"open_clip {arch!r}: `revision` pins hub files; local weights have none"
                )
            arch, pretrained, pinned = pinned_open_clip(spec, retry)
            extra |= pinned
        # A hub or local-dir architecture comes with its weights; a run must never measure
        # a randomly initialised model because they were missing.
        loads_weights = bool(pretrained) or arch.startswith(("hf-hub:", "local-dir:"))
        # No network: open_clip's own hub fetch (an unpinned tag) reads the cache alone, at once.
        offline = cache_only() if unresolvable_hub() else contextlib.nullcontext()
        try:
            with offline, initialization_skipped() if loads_weights else contextlib.nullcontext():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=pretrained, require_pretrained=loads_weights, **extra
                )
        except (pickle.UnpicklingError, EOFError, ValueError, SafetensorError) as exc:
            if not checkpoint:
                raise
            # Not a checkpoint torch reads with weights_only: our loader says why in the user's
            # terms (a pickle holding objects, or no checkpoint at all), never "weights_only=False".
            load_state_dict(checkpoint)
            raise InputError(f"checkpoint {checkpoint} cannot be loaded: {exc}") from exc
        except RuntimeError as exc:
            text = str(exc)
            mismatch = "size mismatch" in text or "state_dict" in text
            if checkpoint and not mismatch:
                load_state_dict(checkpoint)  # names an unreadable file as such
            if checkpoint and mismatch:
                raise InputError(
                    f"checkpoint {checkpoint} does not match architecture {arch!r}: "
                    f"{text.splitlines()[0]}; save the weights of this architecture, or set "
                    "`arch` (and `model_config`) to the one they were trained as"
                ) from exc
            if "not found in built-ins" in text:
                raise InputError(
                    f"unknown open_clip architecture {arch!r}; see open_clip.list_models(), "
                    "or give a JSON `model_config`"
                ) from exc
            raise InputError(
                f"cannot load open_clip {arch!r}/{pretrained}: {text}. {OFFLINE_HINT}"
            ) from exc
        self.model = model
        self.library_preprocess = preprocess
        self._geometry, self._finish, self.geometry_key = split_geometry(preprocess)
        self.tokenizer = open_clip.get_tokenizer(arch)

    def modules(self):
        return [self.model]

    def image_tower(self):
        return self.model.visual

    def set_image_tower(self, tower):
        self.model.visual = tower

    def geometry(self, image):
        return self._geometry(image)

    def finish(self, image):
        return self._finish(image)

    def finish_batch(self, pixels):
        from open_clip.transform import MaybeConvertMode, MaybeToTensor
        from torchvision import transforms

        steps = self._finish.transforms
        kinds = [type(t) for t in steps]
        if kinds != [MaybeConvertMode, MaybeToTensor, transforms.Normalize] or (
            steps[0].mode != "RGB"
        ):
            return None
        return normalized_batch(pixels, steps[2].mean, steps[2].std)

    def encode_images(self, pixels):
        return self.model.encode_image(pixels)

    def encode_texts(self, texts):
        tokens = self.tokenizer(texts).to(self.device)
        if truncatable(self.model):
            return encode_text_truncated(self.model, tokens)
        return self.model.encode_text(tokens)


def register_model_config(spec: OpenClipSpec) -> None:
    """Make a JSON `model_config` known to open_clip under its architecture name."""
    import open_clip

    if not spec.model_config:
        return
    config_path = Path(spec.model_config)
    if not config_path.is_file():
        raise InputError(f"model_config {config_path} does not exist")
    if config_path.stem != spec.arch:
        raise InputError(
            f"model_config {config_path} registers architecture {config_path.stem!r}, "
            f"but the model asks for arch {spec.arch!r}; name the file <arch>.json"
        )
    open_clip.add_model_config(config_path)


def split_geometry(compose) -> tuple[Any, Any, str | None]:
    """open_clip's eval transform split after its leading resize/crop steps, which map a PIL
    image to a PIL image of fixed size; their reprs (sizes, interpolation) form the key."""
    from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
    from torchvision import transforms

    from clipbench.resample import GeometricSteps

    geometric = (transforms.Resize, transforms.CenterCrop, ResizeKeepRatio, CenterCropOrPad)
    steps = list(compose.transforms)
    cut = 0
    while cut < len(steps) and isinstance(steps[cut], geometric):
        cut += 1
    key = "; ".join(repr(t) for t in steps[:cut])
    shareable = cut > 0 and " at 0x" not in key
    return (
        GeometricSteps(steps[:cut]),
        transforms.Compose(steps[cut:]),
        f"open_clip: {key}" if shareable else None,
    )


def open_clip_transform(spec: OpenClipSpec):
    """open_clip's eval transform for a spec, from its model config and (for a pretrained tag)
    the tag's preprocessing overrides, as `create_model_and_transforms` merges them."""
    open_clip = import_open_clip(spec)
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    register_model_config(spec)
    config = open_clip.get_model_config(spec.arch)
    if config is None:
        raise InputError(f"unknown open_clip architecture {spec.arch!r}")
    size = config["vision_cfg"].get("image_size", 224)
    preprocess = {"size": size if isinstance(size, (list, tuple)) else (size, size)}
    preprocess = merge_preprocess_dict(preprocess, config.get("preprocess_cfg", {}))
    tag = None if spec.checkpoint else spec.pretrained
    if tag:
        overrides = open_clip.get_pretrained_cfg(spec.arch, tag)
        preprocess = merge_preprocess_dict(preprocess, overrides)
    return image_transform_v2(PreprocessCfg(**preprocess), is_train=False)


def truncatable(model: torch.nn.Module) -> bool:
    """open_clip's CLIP text tower with a causal mask, pooled at the end-of-text token: the
    pooled output cannot depend on positions after that token."""
    import open_clip

    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) == "argmax"
    )


def encode_text_truncated(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` computed only up to the batch's longest caption, not the padded
    context (77 tokens for CLIP): the same result, a fraction of the work for short captions."""
    import torch
    from open_clip.transformer import text_global_pool

    eot = tokens.argmax(dim=-1)  # the end-of-text token has the highest id
    length = int(eot.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type)
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection
