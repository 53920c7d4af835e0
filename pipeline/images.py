"""Images inside pairs: validated with Pillow, content-addressed, stored once per workspace.

Sources name an image in many ways (a data URL, a path relative to the source file, a `datasets`
Image() value as {bytes, path} or a PIL image, raw bytes, an http(s) URL). `ImageResolver` turns
each into a `LoadedImage` (sha256 of the encoded bytes, width, height, format) or raises
`ImageError` naming the field, so the row is quarantined instead of entering the pool with an
image nobody can open. http(s) URLs stay references (sha256 null) unless fetching is allowed.

Bytes live at `images/<sha[:2]>/<sha>.<ext>` (written atomically, skipped when present) and the
`images` table (keyed by sha256) records width, height, format, size and the first source file.
Readers: `read_image_bytes(ws, sha256)`, `open_image(ws, sha256)`, `data_url(ws, sha256)`,
`image_table(ws)`, `image_pair_ids(ws)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.store import Workspace
from schemas.config.sources import ImagesConfig

IMAGES = "images"
IMAGES_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("path", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("format", pa.string()),
        ("bytes", pa.int64()),
        ("source", pa.string()),
        ("source_file", pa.string()),
    ],
    metadata={"synpref.schema": "images", "synpref.version": "1"},
)
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff",
              "MPO": "jpg"}
_REMOTE = ("http://", "https://")


class ImageError(ValueError):
    """An image that cannot be used: the row field that named it, and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """A validated image: its encoded bytes and what Pillow read from them."""

    sha256: str
    data: bytes
    width: int
    height: int
    format: str
    source_file: str = ""

    @property
    def relpath(self) -> str:
        return image_relpath(self.sha256, self.format)

    def ref(self, uri: str) -> dict[str, Any]:
        """The pool's image reference (schemas.pair.IMAGE_REF_TYPE) for this image."""
        return {"uri": uri, "sha256": self.sha256, "width": self.width, "height": self.height,
                "format": self.format}


def image_relpath(sha256: str, fmt: str | None) -> str:
    """Where the bytes of an image live in the workspace."""
    ext = EXTENSIONS.get((fmt or "").upper(), (fmt or "bin").lower())
    return f"{IMAGES}/{sha256[:2]}/{sha256}.{ext}"


def validate_bytes(data: bytes, limits: ImagesConfig, field: str = "") -> LoadedImage:
    """Open, verify and fully decode `data`; ImageError if it is empty, too big, truncated or corrupt."""
    if not data:
        raise ImageError(field, "empty image")
    if len(data) > limits.max_bytes:
        raise ImageError(field, f"oversized image: {len(data)} bytes, the limit is {limits.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format or "", im.size
            if width * height > limits.max_pixels:
                raise ImageError(field, f"oversized image: {width}x{height} pixels, the limit is "
                                 f"{limits.max_pixels}")
            im.verify()  # structure and checksums (PNG CRCs)
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes every pixel: a truncated JPEG fails here
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(field, f"oversized image: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(field, "not a readable image: not an image format Pillow knows") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, zlib.error, ...
        raise ImageError(field, f"not a readable image: {exc}") from exc
    return LoadedImage(hashlib.sha256(data).hexdigest(), data, width, height, fmt.upper())


def pil_bytes(image: Image.Image) -> bytes:
    """A PIL image (as `datasets` decodes one) as encoded bytes, in its own format where known."""
    buf = io.BytesIO()
    fmt = (image.format or "PNG").upper()
    if fmt in ("JPEG", "MPO"):
        image.save(buf, format="JPEG", quality="keep" if image.format else 95)
    elif fmt in EXTENSIONS:
        image.save(buf, format=fmt)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def decode_data_url(url: str, field: str) -> bytes:
    """`data:image/png;base64,...` -> bytes."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise ImageError(field, "malformed data URL: no comma")
    if not header.endswith(";base64"):
        return urllib.parse.unquote_to_bytes(payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(field, f"malformed data URL: {exc}") from exc


@dataclass
class ImageResolver:
    """Resolves the images of one source file's rows; relative paths resolve against `base_dir`."""

    limits: ImagesConfig
    base_dir: str | None = None
    source_file: str = ""

    def load(self, value: Any, field: str) -> tuple[str, LoadedImage | None]:
        """(uri to record, the image) for any accepted value; image None for an unfetched URL."""
        if isinstance(value, Image.Image):
            return self._inline(self._validate(pil_bytes(value), field))
        if isinstance(value, bytes | bytearray | memoryview):
            return self._inline(self._validate(bytes(value), field))
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data:
                img = self._validate(bytes(data), field)
                return (path if isinstance(path, str) and path else img.relpath), img
            if isinstance(path, str) and path:
                return self.load(path, field)
            url = value.get("url")
            if isinstance(url, str):
                return self.load(url, field)
            raise ImageError(field, "image value has neither bytes nor a path")
        if not isinstance(value, str) or not value.strip():
            raise ImageError(field, f"expected an image, got {type(value).__name__}")
        value = value.strip()
        if value.startswith("data:"):
            return self._inline(self._validate(decode_data_url(value, field), field))
        if value.startswith(_REMOTE):
            return value, (self._validate(self._fetch(value, field), field) if self.limits.allow_fetch
                           else None)
        return value, self._validate(self._read_file(value, field), field)

    def resolve(self, conversation: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[LoadedImage]]:
        """The conversation with every image reference pinned, and the images to store."""
        out, loaded = [], []
        for i, m in enumerate(conversation):
            images = m.get("images") or []
            if not images:
                out.append(m)
                continue
            refs = []
            for k, ref in enumerate(images):
                field = ref.get("field") or f"conversation[{i}].images[{k}]"
                value = ref["data"] if ref.get("data") is not None else ref.get("uri")
                uri, img = self.load(value, field)
                if img is None:
                    refs.append({"uri": uri, "sha256": ref.get("sha256"), "width": None, "height": None,
                                 "format": None})
                    continue
                given = ref.get("sha256")
                if given and given != img.sha256:
                    raise ImageError(field, f"sha256 {given} does not match the image ({img.sha256})")
                refs.append(img.ref(uri))
                loaded.append(img)
            out.append({**m, "images": refs})
        return out, loaded

    def _validate(self, data: bytes, field: str) -> LoadedImage:
        return replace(validate_bytes(data, self.limits, field), source_file=self.source_file)

    @staticmethod
    def _inline(img: LoadedImage) -> tuple[str, LoadedImage]:
        return img.relpath, img

    def _read_file(self, value: str, field: str) -> bytes:
        path = value.removeprefix("file://")
        full = Path(path) if os.path.isabs(path) or self.base_dir is None else Path(self.base_dir) / path
        try:
            size = full.stat().st_size
        except FileNotFoundError as exc:
            raise ImageError(field, f"image file not found: {full}") from exc
        except OSError as exc:
            raise ImageError(field, f"cannot read image file {full}: {exc.strerror or exc}") from exc
        if size > self.limits.max_bytes:
            raise ImageError(field, f"oversized image: {size} bytes, the limit is {self.limits.max_bytes}")
        try:
            return full.read_bytes()
        except OSError as exc:
            raise ImageError(field, f"cannot read image file {full}: {exc.strerror or exc}") from exc

    def _fetch(self, url: str, field: str) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.limits.fetch_timeout_s) as resp:
                data = resp.read(self.limits.max_bytes + 1)
        except OSError as exc:
            raise ImageError(field, f"cannot fetch {url}: {exc}") from exc
        if len(data) > self.limits.max_bytes:
            raise ImageError(field, f"oversized image: over the {self.limits.max_bytes} byte limit")
        return data


# -- the workspace store ----------------------------------------------------------------------


def store_images(ws: Workspace, images: Iterable[LoadedImage], *, source: str = "") -> int:
    """Write each image's bytes once and record it in the `images` table; returns how many were new."""
    unique: dict[str, LoadedImage] = {}
    for img in images:
        unique.setdefault(img.sha256, img)
    known = set(ws.keys(IMAGES, "sha256").to_pylist()) if unique else set()
    rows: dict[str, list[Any]] = {name: [] for name in IMAGES_SCHEMA.names}
    for sha, img in unique.items():
        if not ws.exists(img.relpath):
            ws.write_bytes(img.relpath, img.data)
        if sha in known:
            continue
        for name, value in (("sha256", sha), ("path", img.relpath), ("width", img.width),
                            ("height", img.height), ("format", img.format), ("bytes", len(img.data)),
                            ("source", source), ("source_file", img.source_file)):
            rows[name].append(value)
    table = pa.Table.from_pydict(rows, schema=IMAGES_SCHEMA)
    return ws.append(IMAGES, table, unique_key="sha256", schema=IMAGES_SCHEMA)


def image_pair_ids(ws: Workspace) -> set[str]:
    """Pool pairs whose conversation carries an image (empty, without a pool scan, when the
    workspace stores no images)."""
    if not ws.has_table(IMAGES) or not ws.row_count(IMAGES) or not ws.has_table("pool"):
        return set()
    import polars as pl

    counts = ws.scan("pool").select("pair_id", n=pl.col("conversation").list.eval(
        pl.element().struct.field("images").list.len()).list.sum()).filter(pl.col("n") > 0).collect()
    return set(counts["pair_id"].to_list())


def image_table(ws: Workspace) -> pa.Table:
    """The `images` table (empty when the workspace has no images)."""
    return ws.read(IMAGES, schema=IMAGES_SCHEMA)


def image_path(ws: Workspace, sha256: str, fmt: str | None = None) -> str:
    """The workspace-relative path of a stored image (the format is looked up when not given)."""
    if fmt is None:
        table = image_table(ws)
        hits = table.filter(pc.equal(table["sha256"], sha256))
        if not hits.num_rows:
            raise KeyError(f"image {sha256} is not in the workspace")
        return str(hits["path"][0].as_py())
    return image_relpath(sha256, fmt)


def read_image_bytes(ws: Workspace, sha256: str, fmt: str | None = None) -> bytes:
    """The stored bytes of an image (pass the ImageRef's format to skip the table lookup)."""
    path = image_path(ws, sha256, fmt)
    data = ws.read_bytes(path)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path}: stored bytes do not match their sha256")
    return data


MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "GIF": "image/gif",
              "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff"}


def data_url(ws: Workspace, sha256: str, fmt: str | None = None) -> str:
    """A stored image as a `data:` URL: what OpenAI-style image_url parts and Argilla's ImageField take."""
    data = read_image_bytes(ws, sha256, fmt)
    if fmt is None:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    mime = MIME_TYPES.get((fmt or "").upper(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def open_image(ws: Workspace, sha256: str, fmt: str | None = None) -> Image.Image:
    """A stored image as a decoded PIL image (for judges, annotation views, perceptual hashes)."""
    im = Image.open(io.BytesIO(read_image_bytes(ws, sha256, fmt)))
    im.load()
    return im
