"""The `bert_resnet` model kind, the seed study's baseline: BERT mean-pooled text through a
fixed random Linear onto a torchvision classifier's logits, or (``projection: ridge``) pooled
text features mapped onto the image embeddings by a cross-fitted ridge regression."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from clipbench.encoders import (
    OFFLINE_HINT,
    Encoder,
    Geometry,
    initialization_skipped,
    load_state_dict,
    normalized_batch,
)
from clipbench.errors import InputError
from clipbench.hub import unresolvable_hub
from clipbench.kinds.base import ModelSpec, slug
from clipbench.schema import frozen

if TYPE_CHECKING:
    import torch

    from clipbench.settings import RetrySettings


@dataclass(frozen=True)
class RidgeSpec:
    """`ridge`: the fitted text→image map of ``projection: ridge`` (clipbench.ridge)."""

    folds: int  # cross-fitting folds: each caption is mapped by a fit without its image
    inner_folds: int  # folds choosing alpha inside each fit
    alphas: tuple[float, ...]  # multiples of the mean squared singular value of the features
    seed: int


@dataclass(frozen=True, kw_only=True)
class BertResnetSpec(ModelSpec):
    kind: ClassVar[str] = "bert_resnet"
    file_fields: ClassVar[tuple[str, ...]] = ("text_model_dir", "image_checkpoint")
    geometry_fields: ClassVar[tuple[str, ...]] = ("image_arch", "image_weights", "image_size")
    weights_fields: ClassVar[tuple[str, ...]] = ("image_checkpoint",)

    text_model: str  # hub id of a BERT
    text_revision: str | None  # its hub commit or tag; None follows main
    max_length: int  # text tokens
    image_arch: str  # a torchvision classifier
    image_weights: str  # its torchvision weights
    image_size: int  # the crop for local weights
    projection: str  # random | ridge
    projection_seed: int  # seed of the untrained projection
    ridge: RidgeSpec
    text_model_dir: str | None = None  # a local BERT folder instead of text_model
    image_checkpoint: str | None = None  # local image weights instead of image_weights

    @classmethod
    def from_entry(cls, entry):
        ridge = RidgeSpec(**{key: frozen(value) for key, value in entry["ridge"].items()})
        return super().from_entry({**entry, "ridge": ridge})

    def view(self) -> str | None:
        if self.image_checkpoint:  # ImageClassification(crop_size=image_size) defaults
            return slug(f"imagenet-crop{self.image_size}")
        return slug(f"torchvision-{self.image_arch}-{self.image_weights}")

    def clip_benchmark_names(self) -> tuple[str, str]:
        text = self.text_model_dir or self.text_model
        return f"{text}+{self.image_arch}", self.image_checkpoint or self.image_weights

    def load(self, retry: RetrySettings) -> BertResnetEncoder:
        # transformers and torchvision fetch their own files (their own resume and checks).
        return BertResnetEncoder(self)

    def geometry(self) -> Geometry:
        transform = imagenet_transform(self)
        return Geometry(imagenet_steps(transform), geometry_key(transform))

    @property
    def fitted_head(self) -> RidgeSpec | None:
        return self.ridge if self.projection == "ridge" else None


SPEC = BertResnetSpec


def last_linear(module: torch.nn.Module) -> torch.nn.Linear:
    import torch

    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise InputError(f"{type(module).__name__} has no final linear layer")
    return linears[-1]


def seeded_projection(in_dim: int, out_dim: int, seed: int) -> torch.nn.Linear:
    """The seed study's untrained text→image projection, reproducible from ``seed``."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Linear(in_dim, out_dim)


class BertResnetEncoder(Encoder):
    """The seed's baseline: BERT mean-pooled text → fixed random Linear → classifier logits
    (or, with ``projection: ridge``, pooled features for a fitted map)."""

    kind = "bert_resnet"

    def __init__(self, spec: BertResnetSpec):
        # transformers fetches the text model itself (at `text_revision`); torchvision checks
        # its weights against the hash in their file name.
        import torch
        import torchvision
        from transformers import AutoModel, AutoTokenizer

        local_dir = spec.text_model_dir
        source = local_dir or spec.text_model
        if local_dir and not Path(local_dir).is_dir():
            raise InputError(f"text_model_dir {local_dir} does not exist")
        # No network: the cache alone, at once, not the hub's retries of a name that never resolves.
        unreachable = None if local_dir else unresolvable_hub()
        cached = bool(local_dir) or unreachable is not None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                source, revision=spec.text_revision, local_files_only=cached
            )
            self.text_model = AutoModel.from_pretrained(  # float32, whatever it stores
                source, revision=spec.text_revision, local_files_only=cached, dtype=torch.float32
            )
        except OSError as exc:
            why = f" ({unreachable} does not resolve)" if unreachable else ""
            raise InputError(
                f"cannot load text model {source}{why}: {exc}. {OFFLINE_HINT}"
            ) from exc
        self.max_length = spec.max_length

        arch, checkpoint = spec.image_arch, spec.image_checkpoint
        try:
            if checkpoint:
                with initialization_skipped():  # the strict load below fills every parameter
                    self.image_model = torchvision.models.get_model(arch, weights=None)
                try:
                    self.image_model.load_state_dict(load_state_dict(checkpoint))
                except RuntimeError as exc:
                    raise InputError(
                        f"image_checkpoint {checkpoint} does not match torchvision {arch!r}: "
                        f"{str(exc).splitlines()[0]}; save the state_dict of this "
                        "architecture, or set image_arch to the one it was trained as"
                    ) from exc
            else:
                weights = torchvision_weights(spec)
                with initialization_skipped():  # torchvision loads the weights strictly
                    self.image_model = torchvision.models.get_model(arch, weights=weights)
            self.transform = imagenet_transform(spec)
            self._steps = imagenet_steps(self.transform)
        except InputError:
            raise
        except (ValueError, KeyError) as exc:
            raise InputError(
                f"unknown torchvision model/weights {arch}/{spec.image_weights}: {exc}"
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
            seeded_projection(text_dim, image_dim, spec.projection_seed)
            if spec.fitted_head is None
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
        return self._steps(image)

    def finish(self, image):
        import torch
        from torchvision.transforms import functional as F

        tensor = F.convert_image_dtype(F.pil_to_tensor(image), torch.float)
        return F.normalize(tensor, mean=self.transform.mean, std=self.transform.std)

    def finish_batch(self, pixels):
        return normalized_batch(pixels, self.transform.mean, self.transform.std)

    @property
    def geometry_key(self):
        return geometry_key(self.transform)

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


def imagenet_transform(spec: BertResnetSpec):
    """The torchvision preprocessing of the baseline's image tower: that of the named weights,
    or ImageNet's defaults at `image_size` for a local checkpoint."""
    from torchvision.transforms._presets import ImageClassification

    if spec.image_checkpoint:
        return ImageClassification(crop_size=spec.image_size)
    return torchvision_weights(spec).transforms()


def torchvision_weights(spec: BertResnetSpec):
    """The named weights of a torchvision classifier, or an error listing what exists."""
    import torchvision

    arch, name = spec.image_arch, spec.image_weights
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


def imagenet_steps(transform):
    """``ImageClassification``'s resize and crop on a PIL image (Pillow always antialiases),
    as steps that :mod:`clipbench.resample` runs and can describe."""
    from torchvision import transforms

    from clipbench.resample import GeometricSteps

    t = transform
    resize = transforms.Resize(t.resize_size, interpolation=t.interpolation)
    return GeometricSteps([resize, transforms.CenterCrop(t.crop_size)])


def geometry_key(transform) -> str:
    t = transform
    return (
        f"torchvision: resize {t.resize_size} {t.interpolation.value} antialias={t.antialias}"
        f", center crop {t.crop_size}"
    )
