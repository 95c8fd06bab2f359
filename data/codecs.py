"""Image and low-dim codecs for the episode store, chosen by measurement (see docs/data.md).

Camera images with sensor noise barely compress losslessly (1.1-1.6x measured here), so image
arrays use JPEG through `imagecodecs` (libjpeg-turbo): at quality 90 a noisy 480x640 frame
encodes in ~1.5 ms, decodes in ~1.5 ms and is 10-20x smaller than raw. The codec on disk is the
standard `imagecodecs_jpeg` numcodecs codec, so other readers need only
`imagecodecs.numcodecs.register_codecs()` (zarr format 2), plus, for zarr format 3, the
three-line wrapper class `ImagecodecsJpeg` below registered as `numcodecs.imagecodecs_jpeg`.
`register_codecs()` does both and is idempotent; the store calls it when it opens or creates
one (importing this module registers nothing, so `tether --help` stays fast).
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.core.errors import StoreError

JPEG_ID = "imagecodecs_jpeg"
DEFAULT_JPEG_QUALITY = 90
IMAGE_CODECS = ("jpeg", "zstd", "none")

_registered = False
_register_lock = threading.Lock()


def register_codecs() -> None:
    """Make the JPEG codec known to numcodecs (zarr format 2) and zarr format 3. Idempotent."""
    global _registered
    if _registered:
        return
    with _register_lock:
        if _registered:
            return
        from imagecodecs import numcodecs as icn
        from zarr.registry import register_codec

        icn.register_codec(icn.Jpeg)  # numcodecs registry: id "imagecodecs_jpeg"
        register_codec(f"numcodecs.{JPEG_ID}", _jpeg_v3_class())
        _registered = True


@functools.cache
def _jpeg_v3_class():
    from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec

    class ImagecodecsJpeg(_NumcodecsArrayBytesCodec, codec_name=JPEG_ID):
        """zarr v3 wrapper: chunk array in, JPEG bytes out (one frame per chunk)."""

        def __init__(self, **codec_config) -> None:
            with warnings.catch_warnings():  # "numcodecs codecs are not in the v3 spec": known
                warnings.simplefilter("ignore")
                super().__init__(**codec_config)

    return ImagecodecsJpeg


@dataclass(frozen=True)
class ArrayEncoding:
    """Keyword arguments for `zarr.create_array` for one kind of array and zarr format."""

    kwargs: dict[str, Any]
    description: str


def image_encoding(codec: str, quality: int, zarr_format: int) -> ArrayEncoding:
    """Encoding of `T,H,W,3 uint8` image arrays (one frame per chunk)."""
    if codec not in IMAGE_CODECS:
        raise StoreError(f"Unknown image codec '{codec}'; choose one of {', '.join(IMAGE_CODECS)}.")
    if codec == "jpeg" and not 1 <= int(quality) <= 100:
        raise StoreError(f"JPEG quality must be 1-100, got {quality}.")
    register_codecs()
    if codec == "jpeg":
        from imagecodecs.numcodecs import Jpeg

        if zarr_format == 2:
            return ArrayEncoding(
                {"compressors": Jpeg(level=int(quality)), "filters": None}, f"jpeg q{quality}"
            )
        serializer = _jpeg_v3_class()(level=int(quality))
        return ArrayEncoding({"serializer": serializer, "compressors": None}, f"jpeg q{quality}")
    if codec == "zstd":
        return lowdim_encoding(zarr_format)
    return ArrayEncoding({"compressors": None, "filters": None} if zarr_format == 2 else
                         {"compressors": None}, "raw")


def lowdim_encoding(zarr_format: int) -> ArrayEncoding:
    """Lossless zstd for state, action, timestamps and indices."""
    if zarr_format == 2:
        import numcodecs

        return ArrayEncoding(
            {"compressors": numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE),
             "filters": None},
            "blosc zstd",
        )
    from zarr.codecs import ZstdCodec

    return ArrayEncoding({"compressors": ZstdCodec(level=3)}, "zstd")


def jpeg_decode(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one stored JPEG chunk into an `H,W,3` uint8 array (optionally in place)."""
    import imagecodecs

    return imagecodecs.jpeg8_decode(data, out=out)


def is_jpeg_array(array) -> bool:
    """True when `array` (a zarr array) stores JPEG-encoded frames."""
    meta = array.metadata
    if meta.zarr_format == 2:
        compressor = meta.compressor
        return compressor is not None and compressor.codec_id == JPEG_ID
    return any(getattr(c, "codec_name", "") == f"numcodecs.{JPEG_ID}" for c in meta.codecs)
