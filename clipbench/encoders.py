"""Image–text encoders behind one interface, loaded from the hub or from local files through
the same library loaders (open_clip, transformers, torchvision)."""

from __future__ import annotations

import contextlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipbench.errors import InputError
from clipbench.precision import Precision

OFFLINE_HINT = (
    "Offline? Set HF_HUB_OFFLINE=1 with a populated Hugging Face cache, or point the model "
    "to local files (`checkpoint`, `model_config`, `text_model_dir`, `image_checkpoint`, "
    "`model_dir`)"
)


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
        """Fused transformer blocks in every tower, folded and fused convolutions in the image
        tower: done in float32, before the weights are cast, so folding rounds once."""
        from clipbench.fused import fuse_convolutions, fuse_transformer_blocks

        for module in self.modules():
            fuse_transformer_blocks(module)
        tower = self.image_tower()
        fused = fuse_convolutions(tower)
        if fused is not tower:
            self.set_image_tower(fused)
        self.fused = True

    def set_precision(self, policy: Precision) -> None:
        """Weights in the dtype the policy runs (float32 unless it casts them), through the
        fused fast paths on CPU unless the policy is strict float32. Both changes are one-way:
        the stock float32 modules do not come back without reloading the model."""
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
        pixels = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last:
            return pixels.contiguous(memory_format=torch.channels_last)
        return pixels


def normalized_batch(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 normalised, as to_tensor then Normalize
    compute it per image: the same elementwise float32 operations (÷255, −mean, ÷std), so the
    same bits. The result is a channels-last view of the pixels' own layout."""
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
    repo_id: str, filenames: list[str], revision: str, retry: dict | None, what: str
) -> Path:
    """The first of ``filenames`` that ``repo_id`` holds at ``revision``, through clipbench.hub:
    a broken transfer is resumed and retried, and the bytes are checked against the hub's
    content hash before anything loads them. ``retry`` (config `download`) None: one attempt."""
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

    retry = retry or {"attempts": 1, "wait_seconds": 0}
    return fetch(download, f"{what} from {repo_id}@{revision}", advice=OFFLINE_HINT, **retry)[0]


# open_clip's names for a model's weights in a hub repo, preferred first (as open_clip does).
OPEN_CLIP_WEIGHTS = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def pinned_open_clip(spec: dict[str, Any], retry: dict | None) -> tuple[str, Any, dict]:
    """The (architecture, pretrained, extra create_model arguments) that load a `revision`-pinned
    hub model: the files fetched at that commit, then loaded as open_clip loads the unpinned
    ones (a pretrained tag's preprocessing applied as its config says)."""
    import open_clip
    from open_clip.transform import merge_preprocess_dict

    arch, tag, revision = spec["arch"], spec.get("pretrained"), spec["revision"]
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

    def __init__(self, spec: dict[str, Any], retry: dict | None = None):
        import open_clip
        from safetensors import SafetensorError

        arch = spec["arch"]
        register_model_config(spec)
        checkpoint = spec.get("checkpoint")
        pretrained = checkpoint or spec.get("pretrained")
        if checkpoint and not Path(checkpoint).is_file():
            raise InputError(f"checkpoint {checkpoint} does not exist")
        extra: dict[str, Any] = {}
        if pretrained and not checkpoint and not arch.startswith(("hf-hub:", "local-dir:")):
            # open_clip only warns when a tag was trained with QuickGELU (OpenAI's weights) and
            # the arch's config says GELU, then builds GELU: embeddings drift from the
            # published model's. Build what the tag was trained with, pinned or not.
            tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
            extra["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        if spec.get("revision"):
            if checkpoint or arch.startswith("local-dir:"):
                raise InputError(
                    f"open_clip {arch!r}: `revision` pins hub files; local weights have none"
                )
            arch, pretrained, pinned = pinned_open_clip(spec, retry)
            extra |= pinned
        # A hub or local-dir architecture comes with its weights; a run must never measure
        # a randomly initialised model because they were missing.
        loads_weights = bool(pretrained) or arch.startswith(("hf-hub:", "local-dir:"))
        try:
            with initialization_skipped() if loads_weights else contextlib.nullcontext():
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


def register_model_config(spec: dict[str, Any]) -> None:
    """Make a JSON `model_config` known to open_clip under its architecture name."""
    import open_clip

    if not spec.get("model_config"):
        return
    config_path = Path(spec["model_config"])
    if not config_path.is_file():
        raise InputError(f"model_config {config_path} does not exist")
    if config_path.stem != spec["arch"]:
        raise InputError(
            f"model_config {config_path} registers architecture {config_path.stem!r}, "
            f"but the model asks for arch {spec['arch']!r}; name the file <arch>.json"
        )
    open_clip.add_model_config(config_path)


def split_geometry(compose) -> tuple[Any, Any, str | None]:
    """open_clip's eval transform split after its leading resize/crop steps, which map a PIL
    image to a PIL image of fixed size; their reprs (sizes, interpolation) form the key."""
    from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
    from torchvision import transforms

    geometric = (transforms.Resize, transforms.CenterCrop, ResizeKeepRatio, CenterCropOrPad)
    steps = list(compose.transforms)
    cut = 0
    while cut < len(steps) and isinstance(steps[cut], geometric):
        cut += 1
    key = "; ".join(repr(t) for t in steps[:cut])
    shareable = cut > 0 and " at 0x" not in key
    return (
        transforms.Compose(steps[:cut]),
        transforms.Compose(steps[cut:]),
        f"open_clip: {key}" if shareable else None,
    )


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


def last_linear(module: torch.nn.Module) -> torch.nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise InputError(f"{type(module).__name__} has no final linear layer")
    return linears[-1]


def seeded_projection(in_dim: int, out_dim: int, seed: int) -> torch.nn.Linear:
    """The seed study's untrained text→image projection, reproducible from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Linear(in_dim, out_dim)


class BertResnetEncoder(Encoder):
    """The seed's baseline: BERT mean-pooled text → fixed random Linear → classifier logits
    (or, with ``projection: ridge``, pooled features for a fitted map)."""

    kind = "bert_resnet"

    def __init__(self, spec: dict[str, Any], retry: dict | None = None):
        # transformers fetches the text model itself (at `text_revision`); torchvision checks
        # its weights against the hash in their file name. `retry` serves open_clip's hub files.
        import torchvision
        from transformers import AutoModel, AutoTokenizer

        local_dir = spec.get("text_model_dir")
        source = local_dir or spec["text_model"]
        if local_dir and not Path(local_dir).is_dir():
            raise InputError(f"text_model_dir {local_dir} does not exist")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                source, revision=spec.get("text_revision"), local_files_only=bool(local_dir)
            )
            self.text_model = AutoModel.from_pretrained(  # float32, whatever it stores
                source,
                revision=spec.get("text_revision"),
                local_files_only=bool(local_dir),
                dtype=torch.float32,
            )
        except OSError as exc:
            raise InputError(f"cannot load text model {source}: {exc}. {OFFLINE_HINT}") from exc
        self.max_length = spec["max_length"]

        arch = spec["image_arch"]
        try:
            if spec.get("image_checkpoint"):
                with initialization_skipped():  # the strict load below fills every parameter
                    self.image_model = torchvision.models.get_model(arch, weights=None)
                try:
                    self.image_model.load_state_dict(load_state_dict(spec["image_checkpoint"]))
                except RuntimeError as exc:
                    raise InputError(
                        f"image_checkpoint {spec['image_checkpoint']} does not match "
                        f"torchvision {arch!r}: {str(exc).splitlines()[0]}; save the state_dict "
                        "of this architecture, or set image_arch to the one it was trained as"
                    ) from exc
            else:
                weights = torchvision_weights(spec)
                with initialization_skipped():  # torchvision loads the weights strictly
                    self.image_model = torchvision.models.get_model(arch, weights=weights)
            self.transform = imagenet_transform(spec)
        except InputError:
            raise
        except (ValueError, KeyError) as exc:
            raise InputError(
                f"unknown torchvision model/weights {arch}/{spec.get('image_weights')}: {exc}"
            ) from exc
        except (OSError, RuntimeError) as exc:
            raise InputError(
                f"cannot fetch torchvision {arch} weights: {exc}. Offline? Put the file in "
                "torch's hub cache ($TORCH_HOME/hub/checkpoints) or give it as image_checkpoint"
            ) from exc

        self.library_preprocess = self.transform
        text_dim = self.text_model.config.hidden_size
        image_dim = last_linear(self.image_model).out_features
        # "random": the seed's untrained projection, part of the text tower. "ridge": the text
        # tower ends at the pooled features; encode fits a cross-fitted map afterwards.
        self.projection = (
            seeded_projection(text_dim, image_dim, spec["projection_seed"])
            if spec.get("projection", "random") == "random"
            else torch.nn.Identity()
        )

    def modules(self):
        return [self.text_model, self.image_model, self.projection]

    def image_tower(self):
        return self.image_model

    def set_image_tower(self, tower):
        self.image_model = tower

    # ImageClassification.forward, split: resize and crop on the PIL image, then to tensor.
    def geometry(self, image):
        return imagenet_geometry(self.transform, image)

    def finish(self, image):
        from torchvision.transforms import functional as F

        tensor = F.convert_image_dtype(F.pil_to_tensor(image), torch.float)
        return F.normalize(tensor, mean=self.transform.mean, std=self.transform.std)

    def finish_batch(self, pixels):
        return normalized_batch(pixels, self.transform.mean, self.transform.std)

    @property
    def geometry_key(self):
        return imagenet_geometry_key(self.transform)

    def encode_images(self, pixels):
        return self.image_model(pixels)

    def encode_texts(self, texts):
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.text_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean over real tokens only: padding must not dilute short captions.
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.projection(pooled)


def imagenet_transform(spec: dict[str, Any]):
    """The torchvision preprocessing of the baseline's image tower: that of the named weights,
    or ImageNet's defaults at `image_size` for a local checkpoint."""
    from torchvision.transforms._presets import ImageClassification

    if spec.get("image_checkpoint"):
        return ImageClassification(crop_size=spec["image_size"])
    return torchvision_weights(spec).transforms()


def torchvision_weights(spec: dict[str, Any]):
    """The named weights of a torchvision classifier, or an error listing what exists."""
    import torchvision

    arch, name = spec["image_arch"], spec["image_weights"]
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError) as exc:
        raise InputError(
            f"unknown torchvision image_arch {arch!r}; choose a classifier from "
            "torchvision.models.list_models(torchvision.models), e.g. resnet50"
        ) from exc
    if name not in enum.__members__:
        raise InputError(
            f"torchvision {arch!r} has no image_weights {name!r}; choose one of "
            f"{sorted(enum.__members__)}, or give local weights as image_checkpoint"
        )
    return enum[name]


def imagenet_geometry(transform, image: Image.Image) -> Image.Image:
    from torchvision.transforms import functional as F

    t = transform
    image = F.resize(image, t.resize_size, interpolation=t.interpolation, antialias=t.antialias)
    return F.center_crop(image, t.crop_size)


def imagenet_geometry_key(transform) -> str:
    t = transform
    return (
        f"torchvision: resize {t.resize_size} {t.interpolation.value} antialias={t.antialias}"
        f", center crop {t.crop_size}"
    )


class Geometry:
    """Only a model's resize/crop, built from its config without loading any weights: what the
    shared `pixels` job needs."""

    def __init__(self, spec: dict[str, Any]):
        kind = spec.get("kind")
        if kind == "open_clip":
            self._geometry, _, self.geometry_key = split_geometry(open_clip_transform(spec))
        elif kind == "bert_resnet":
            transform = imagenet_transform(spec)
            self._geometry = lambda image: imagenet_geometry(transform, image)
            self.geometry_key = imagenet_geometry_key(transform)
        else:
            raise InputError(
                f"model kind {kind!r} has no shareable geometry; choose one of "
                f"{sorted(encoder_classes())}, or leave it to decode its own images"
            )

    def geometry(self, image):
        return self._geometry(image)


def open_clip_transform(spec: dict[str, Any]):
    """open_clip's eval transform for a spec, from its model config and (for a pretrained tag)
    the tag's preprocessing overrides, as `create_model_and_transforms` merges them."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    register_model_config(spec)
    config = open_clip.get_model_config(spec["arch"])
    if config is None:
        raise InputError(f"unknown open_clip architecture {spec['arch']!r}")
    size = config["vision_cfg"].get("image_size", 224)
    preprocess = {"size": size if isinstance(size, (list, tuple)) else (size, size)}
    preprocess = merge_preprocess_dict(preprocess, config.get("preprocess_cfg", {}))
    tag = None if spec.get("checkpoint") else spec.get("pretrained")
    if tag:
        overrides = open_clip.get_pretrained_cfg(spec["arch"], tag)
        preprocess = merge_preprocess_dict(preprocess, overrides)
    return image_transform_v2(PreprocessCfg(**preprocess), is_train=False)


def encoder_classes() -> dict[str, type[Encoder]]:
    """Every model kind by name (the transformers kind's module builds on this one, so it
    joins here, when asked)."""
    from clipbench.transformers_encoder import TransformersEncoder

    return {cls.kind: cls for cls in (OpenClipEncoder, BertResnetEncoder, TransformersEncoder)}


def load_encoder(spec: dict[str, Any], device: torch.device, retry: dict | None = None) -> Encoder:
    """``retry``: config `download` (attempts, wait_seconds) for hub files; None, one attempt."""
    kind, kinds = spec.get("kind"), encoder_classes()
    if kind not in kinds:
        raise InputError(f"unknown model kind {kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind](spec, retry).to(device)
