"""Offline demo inputs: a small dataset in the exact Hugging Face Image parquet layout and tiny
random checkpoints that load through the same loaders as real weights (random weights: the
demo shows the pipeline, not model quality)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipbench.arrow_io import atomic_dir, atomic_path

COLORS = {
    "red": (220, 40, 40),
    "yellow": (240, 210, 40),
    "blue": (40, 90, 220),
    "green": (40, 170, 70),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (15, 15, 15), "grey": (150, 150, 150)}
SHAPES = ("circle", "square", "triangle", "star")
# Every storage mode the decoder must handle, cycled over the rows: (PIL mode, format).
STORAGE = (
    ("RGB", "JPEG"),
    ("RGBA", "PNG"),
    ("P", "PNG"),
    ("L", "PNG"),
    ("LA", "PNG"),
    ("CMYK", "JPEG"),
    ("I;16", "PNG"),
    ("RGB", "PNG"),
    ("1", "PNG"),
)
CAPTION_WORDS = ("a", "an", "on", "background", "coloured", *COLORS, *BACKGROUNDS, *SHAPES)


def draw_shape(shape: str, color, background, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w * 0.2, h * 0.2, w * 0.8, h * 0.8)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(w / 2, h * 0.15), (w * 0.85, h * 0.85), (w * 0.15, h * 0.85)], fill=color)
    else:
        cx, cy, r = w / 2, h / 2, min(w, h) * 0.4
        angles = np.linspace(-np.pi / 2, 3 * np.pi / 2, 11)[:-1]
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon(
            [(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii, strict=True)],
            fill=color,
        )
    return image


def encode_as(image: Image.Image, mode: str, fmt: str) -> bytes:
    if mode == "RGBA" or mode == "LA":
        alpha = Image.new("L", image.size, 255)
        alpha.paste(0, (0, 0, image.width // 6, image.height))  # a transparent strip
        image = image.convert("RGBA" if mode == "RGBA" else "LA")
        image.putalpha(alpha)
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.info["transparency"] = 0
    elif mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        image = Image.fromarray(gray)  # uint16 → mode I;16
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"transparency": 0} if mode == "P" else {}))
    return buffer.getvalue()


def caption_variants(color: str, shape: str, bg: str) -> list[str]:
    return [
        f"a {color} {shape} on a {bg} background",
        f"{color} {shape}",
        f"a {shape} coloured {color}",
    ]


def demo_rows(rows: int, seed: int, multi: bool = False) -> tuple[list[bytes], list]:
    """Encoded images and captions: one caption each, or (``multi``) a list of 1–3 each."""
    rng = np.random.default_rng(seed)
    blobs, captions = [], []
    for i in range(rows):
        color = list(COLORS)[rng.integers(len(COLORS))]
        bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = (int(rng.integers(48, 200)), int(rng.integers(48, 200)))
        mode, fmt = STORAGE[i % len(STORAGE)]
        image = draw_shape(shape, COLORS[color], BACKGROUNDS[bg], size)
        blobs.append(encode_as(image, mode, fmt))
        variants = caption_variants(color, shape, bg)
        captions.append(variants[: 1 + i % 3] if multi else variants[0])
    return blobs, captions


def write_demo_parquet(path: str, rows: int, seed: int, multi: bool = False) -> None:
    """Write through the `datasets` library so the layout is exactly the hub's Image feature
    (and, for ``multi``, a list-of-strings caption column)."""
    import datasets

    blobs, captions = demo_rows(rows, seed, multi)
    text = datasets.List(datasets.Value("string")) if multi else datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "text": text})
    data = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs], "text": captions},
        features=features,
    )
    with atomic_path(path) as tmp:
        data.to_parquet(str(tmp))


def save_safetensors(module: torch.nn.Module, path: str) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp))


def write_open_clip_checkpoint(model_config: str, path: str, seed: int) -> None:
    """Random weights for an open_clip architecture given as a JSON model config."""
    import open_clip

    open_clip.add_model_config(model_config)
    torch.manual_seed(seed)
    save_safetensors(open_clip.create_model(Path(model_config).stem), path)


def write_torchvision_checkpoint(arch: str, path: str, seed: int) -> None:
    import torchvision

    torch.manual_seed(seed)
    save_safetensors(torchvision.models.get_model(arch, weights=None), path)


def write_bert(out_dir: str, seed: int, hidden: int = 32, layers: int = 2) -> None:
    """A tiny BERT with a word-level vocabulary covering the demo captions."""
    with atomic_dir(out_dir) as out:
        _write_bert(out, seed, hidden, layers)


def _write_bert(out: Path, seed: int, hidden: int, layers: int) -> None:
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(CAPTION_WORDS))]
    vocab_path = out / "vocab.txt"
    vocab_path.write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores `vocab_file=`; `vocab=` is the argument that reads the file.
    tokenizer = BertTokenizer(vocab=str(vocab_path), do_lower_case=True)
    if tokenizer.vocab_size != len(vocab):
        raise RuntimeError(f"tokenizer kept {tokenizer.vocab_size} of {len(vocab)} tokens")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "demo.json").write_text(json.dumps({"seed": seed, "random_weights": True}))


def write_hf_dual_encoder(out_dir: str, model_type: str, seed: int, image_size: int = 32) -> None:
    """A tiny random transformers CLIPModel or SiglipModel with its image processor and a
    tokenizer covering the demo captions, written with save_pretrained (safetensors)."""
    with atomic_dir(out_dir) as out:
        _write_hf_dual_encoder(out, model_type, seed, image_size)


def _write_hf_dual_encoder(out: Path, model_type: str, seed: int, image_size: int) -> None:
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted(set(CAPTION_WORDS))
    tower = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    vision = {**tower, "image_size": image_size, "patch_size": 8}
    torch.manual_seed(seed)
    if model_type == "clip":
        specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
        vocab = {w: i for i, w in enumerate([*specials, *words])}
        template = "<|startoftext|> $A <|endoftext|>"  # CLIP pools the end-of-text token
        text = {**tower, "vocab_size": len(vocab), "max_position_embeddings": 77}
        text |= {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
        model = tf.CLIPModel(
            tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        )
        processor = tf.CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
        pad, extra = "<|endoftext|>", {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
        extra["unk_token"] = "<unk>"
    elif model_type == "siglip":
        vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *words])}
        template = "$A </s>"
        text = {**tower, "vocab_size": len(vocab), "max_position_embeddings": 16}
        text |= {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None}
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
        processor = tf.SiglipImageProcessor(size={"height": image_size, "width": image_size})
        pad, extra = "<pad>", {"eos_token": "</s>", "unk_token": "<unk>"}
    else:
        raise ValueError(f"model_type {model_type!r}: clip or siglip")
    # A word-level fast tokenizer: the real BPE/sentencepiece vocabularies are not to be had
    # offline, and the encoder only needs ids of the demo's words.
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    ends = [(t, vocab[t]) for t in template.split() if t != "$A"]
    backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=ends)
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        model_max_length=text["max_position_embeddings"],
        **extra,
    )
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "demo.json").write_text(json.dumps({"seed": seed, "random_weights": True}))
