"""Images decoded once per dataset: each image decoded, resized and cropped by one model's
`Encoder.geometry`, kept as uint8 pixels for every model whose geometry is the same.

Decoding a 1280² JPEG and resizing it costs about as much as a ViT-B/32 forward pass on a
CPU; the three CLIP models share one geometry (224², bicubic, centre crop) and the two
ResNet baselines another, so the dataset is decoded twice instead of once per model. The
stored pixels are exactly the PIL image `geometry` returned, so `finish` on them gives the
same tensor, bit for bit, as the model's own preprocessing of the decoded image.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from clipbench.arrow_io import atomic_writer, read_metadata, read_table
from clipbench.batching import prepared_batches
from clipbench.encoders import Encoder
from clipbench.errors import InputError
from clipbench.images import decode_image
from clipbench.logs import Progress, phase

ROWS_PER_BATCH = 64


def geometric_pixels(encoder: Encoder, blob: bytes, row_id: int) -> np.ndarray:
    """(H, W, 3) uint8: the decoded image after the encoder's resize and crop."""
    image = encoder.geometry(decode_image(blob, row_id))
    if image.mode != "RGB":
        raise ValueError(f"geometry returned mode {image.mode}, expected RGB")
    return np.asarray(image)


def first_image_agrees(encoder: Encoder, stored: StoredPixels, blob: bytes, row_id: int) -> bool:
    """Whether the first stored image, finished, is the model's library's own preprocessing
    of the decoded bytes, bit for bit: one image (~20 ms) checks all the pixels job did (its
    described steps, the resize kernel) against the library, as each encode job starts."""
    reference = getattr(encoder, "library_preprocess", None)
    if reference is None:
        return True
    import torch

    return torch.equal(encoder.finish(stored.image(0)), reference(decode_image(blob, row_id)))


def write_pixels(
    encoder: Encoder,
    dataset_path: str,
    out_path: str,
    workers: int,
    progress: Progress | None = None,
) -> None:
    """Every image of the dataset through ``encoder.geometry``, streamed in record batches;
    ``workers`` threads decode (PIL releases the GIL while decoding and resizing) while this
    one compresses and writes."""
    if encoder.geometry_key is None:
        raise InputError(f"{type(encoder).__name__}'s preprocessing cannot be shared")
    images = read_table(dataset_path)
    ids = images["id"].to_numpy()
    items = list(zip(images["image"].to_pylist(), ids.tolist(), strict=True))
    if not items:
        raise InputError(f"{dataset_path} has no images")

    def prepare(chunk: Sequence) -> np.ndarray:
        return np.stack([geometric_pixels(encoder, blob, i) for blob, i in chunk])

    batches = prepared_batches(items, ROWS_PER_BATCH, prepare, workers)
    n, batch = next(batches)
    shape = list(batch.shape[1:])
    size = int(np.prod(shape))
    schema = pa.schema([("id", pa.int64()), ("pixels", pa.list_(pa.uint8(), size))])
    metadata = {
        "geometry": encoder.geometry_key,
        "shape": shape,
        "dataset": read_metadata(dataset_path).get("dataset"),
    }
    done = 0
    # zstd: a decoded 224² copy is ~150 kB raw; compressed per batch, read back batch by batch.
    with (
        atomic_writer(out_path, schema, metadata, compression="zstd") as writer,
        phase(progress, "images", len(items)) as advance,
    ):
        while True:
            if list(batch.shape[1:]) != shape:
                raise ValueError(f"geometry gave {batch.shape[1:]} after {shape}")
            pixels = pa.array(batch.reshape(-1), pa.uint8())
            writer.write_batch(
                pa.record_batch(
                    [
                        pa.array(ids[done : done + n], pa.int64()),
                        pa.FixedSizeListArray.from_arrays(pixels, size),
                    ],
                    schema=schema,
                )
            )
            done += n
            advance(n)
            try:
                n, batch = next(batches)
            except StopIteration:
                break


class StoredPixels:
    """Pixels written by :func:`write_pixels`, read one record batch at a time (the file is
    compressed), so memory stays a couple of batches whatever the dataset size."""

    def __init__(self, path: str):
        self.reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        meta = read_metadata(path)
        self.geometry_key: str = meta["geometry"]
        self.shape = meta["shape"]
        batches = range(self.reader.num_record_batches)
        ids = [self.reader.get_batch(i).column("id").to_numpy() for i in batches]
        self.ids = np.concatenate(ids)
        self.starts = np.cumsum([0, *map(len, ids)])
        self._lock = threading.Lock()
        self._cached: tuple[int, np.ndarray] | None = None

    def usable_by(self, encoder: Encoder, ids: Sequence[int]) -> bool:
        """Only when the encoder's geometry is exactly the one that made these pixels."""
        return self.geometry_key == encoder.geometry_key and np.array_equal(self.ids, ids)

    def _batch(self, index: int) -> np.ndarray:
        with self._lock:  # decode threads ask for rows in order: keep the latest batch
            if self._cached is None or self._cached[0] != index:
                column = self.reader.get_batch(index).column("pixels")
                self._cached = (index, column.flatten().to_numpy().reshape(-1, *self.shape))
            return self._cached[1]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (exclusive) as one (n, H, W, 3) uint8 array."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop - 1, side="right")) - 1
        parts = [
            self._batch(i)[max(start, self.starts[i]) - self.starts[i] : stop - self.starts[i]]
            for i in range(first, last + 1)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def image(self, row: int) -> Image.Image:
        return Image.fromarray(self.rows(row, row + 1)[0], "RGB")
