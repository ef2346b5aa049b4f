"""What the self-contained pages (the report, the summary, the explorer) share, without the
charting libraries: the templates, JSON placed inside <script>, thumbnails as data URIs."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from clipbench.images import decode_image

TEMPLATES = Path(__file__).with_name("templates")


def thumbnail_uri(blob: bytes, row_id: int, size: int) -> str:
    image = decode_image(blob, row_id, at_least=(size, size))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def script_json(value: Any) -> str:
    # JSON placed inside <script>: a caption containing "</script>" must not end the element.
    return json.dumps(value).replace("</", "<\\/")
