"""Image and low-dim codecs for the episode store, chosen by measurement (docs/data.md, "Image
codecs"; benchmarks/codecs.py).

Camera images with sensor noise barely compress losslessly (1.1-1.6x measured here), so image
arrays use a lossy codec, one frame per chunk:

- `h264` (the default for new stores): H.264 groups of pictures, a keyframe every `gop` frames
  of an episode (data/video.py). A video codec codes the noise away once per group instead of
  in every frame: ~12x smaller than JPEG q90 at higher PSNR on camera-like 480x640 frames, and
  smaller than LeRobot's AV1 videos at equal PSNR, while the training loader stays well above
  LeRobot's (random access decodes at most one group).
- `av1`: the same with SVT-AV1 / dav1d: smaller again, but ~4x slower to encode (converting
  stores, not recording several cameras on a small computer).
- `jpeg` (what stores before this default hold): libjpeg-turbo through imagecodecs, ~1 ms per
  frame each way; `avif`, `jxl`: per-frame AV1 / JPEG XL through imagecodecs.
- `zstd`, `none`: lossless / raw.

A codec is chosen by a spec string, `name[:option=value,...]`, e.g. `h264`, `h264:crf=20,gop=16`,
`jpeg` (quality from `image_quality`, 90), `jpeg:quality=80`, `avif:quality=60`. The store keeps
the spec in its root attributes (`image_codec`; JPEG's quality in `image_quality`, as before) and
each camera array's codec and settings in the array's attributes (`tether_image_codec`), which
`tether inspect` shows. Per-frame codecs are standard imagecodecs numcodecs codecs
(`imagecodecs.numcodecs.register_codecs()` lets other readers decode them; zarr format 3 also
needs the thin wrapper class `_v3_class` below). `register_codecs()` registers them all and is
idempotent; the store calls it when it opens or creates one (importing this module registers
nothing, so `tether --help` stays fast).
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tether.core.errors import StoreError

JPEG_ID = "imagecodecs_jpeg"
DEFAULT_JPEG_QUALITY = 90
IMAGE_CODECS = ("h264", "av1", "jpeg", "avif", "jxl", "zstd", "none")
DEFAULT_IMAGE_CODEC = "h264"
VIDEO_CODECS = ("h264", "av1")
CODEC_ATTR = "tether_image_codec"  # per camera array: {"name": ..., settings}


@dataclass(frozen=True)
class FrameCodec:
    """A per-frame image codec from imagecodecs: how to build it, its options and its decoder."""

    codec_id: str
    # name -> (type, default, allowed): allowed is (min, max) for numbers, a set for strings
    options: dict[str, tuple[type, Any, Any]]
    build: Callable[[dict[str, Any]], dict[str, Any]]  # options -> numcodecs config
    decode: str  # imagecodecs function name; called with (data, out=..., **decode_kwargs)
    decode_kwargs: tuple[tuple[str, Any], ...] = ()


FRAME_CODECS: dict[str, FrameCodec] = {
    # chroma 420 (libjpeg's default, what every store before chroma= holds) or 444
    "jpeg": FrameCodec(JPEG_ID, {"quality": (int, DEFAULT_JPEG_QUALITY, (1, 100)),
                                 "chroma": (str, "420", {"420", "444"})},
                       lambda o: {"level": o["quality"],
                                  **({"subsampling": "444"} if o["chroma"] == "444" else {})},
                       "jpeg8_decode"),
    # 4:2:0 as the video codecs; one thread per frame (DataLoader workers are the parallelism)
    "avif": FrameCodec("imagecodecs_avif", {"quality": (int, 60, (0, 100)),
                                            "speed": (int, 8, (0, 10))},
                       lambda o: {"level": o["quality"], "speed": o["speed"], "pixelformat": "420",
                                  "numthreads": 1},
                       "avif_decode", (("numthreads", 1),)),
    "jxl": FrameCodec("imagecodecs_jpegxl",
                      {"distance": (float, 2.0, (0.1, 25.0)), "effort": (int, 3, (1, 9))},
                      lambda o: {"distance": o["distance"], "effort": o["effort"], "lossless": False,
                                 "numthreads": 1},
                      "jpegxl_decode", (("numthreads", 1),)),
}
_VIDEO_OPTIONS = {"crf": int, "gop": int, "preset": str}

_registered = False
_register_lock = threading.Lock()


def register_codecs() -> None:
    """Make the image codecs known to numcodecs (zarr format 2) and zarr format 3. Idempotent."""
    global _registered
    if _registered:
        return
    with _register_lock:
        if _registered:
            return
        from imagecodecs import numcodecs as icn
        from numcodecs import register_codec as register_numcodec
        from zarr.registry import register_codec

        from tether.data import video

        for cls in (icn.Jpeg, icn.Avif, icn.Jpegxl):  # numcodecs ids "imagecodecs_<name>"
            icn.register_codec(cls)
            register_codec(f"numcodecs.{cls.codec_id}", _v3_class(cls.codec_id))
        register_numcodec(video.numcodecs_class())  # id "tether_video"
        register_codec(f"numcodecs.{video.CODEC_ID}", _v3_class(video.CODEC_ID))
        _registered = True


def _jpeg_v3_class():
    return _v3_class(JPEG_ID)


@functools.cache
def _v3_class(codec_id: str):
    from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec

    class FrameCodecV3(_NumcodecsArrayBytesCodec, codec_name=codec_id):
        """zarr v3 wrapper: chunk array in, one encoded frame out (one frame per chunk)."""

        def __init__(self, **codec_config) -> None:
            with warnings.catch_warnings():  # "numcodecs codecs are not in the v3 spec": known
                warnings.simplefilter("ignore")
                super().__init__(**codec_config)

    FrameCodecV3.__name__ = FrameCodecV3.__qualname__ = "".join(
        p.capitalize() for p in codec_id.split("_"))
    return FrameCodecV3


# ---------------------------------------------------------------------- choosing a codec
def default_image_codec(zarr_format: int = 3) -> str:
    """The codec of new stores: h264; JPEG for zarr format 2, which exists for outside readers
    (diffusion_policy's zarr 2) that have imagecodecs but not tether's video codec."""
    return "jpeg" if zarr_format == 2 else DEFAULT_IMAGE_CODEC


@dataclass(frozen=True)
class ImageCodec:
    """A parsed image codec spec: its name and settings (see the module docstring)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def spec(self) -> str:
        """Canonical spec string (what the store's `image_codec` attribute holds; JPEG keeps
        its quality in `image_quality`, as stores always did, and says chroma only if 444)."""
        options = self.options
        if self.name == "jpeg":
            options = tuple((k, v) for k, v in options if k == "chroma" and v != "420")
        if not options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in options)

    @property
    def is_video(self) -> bool:
        return self.name in VIDEO_CODECS

    def config(self) -> dict[str, Any]:
        """`{"name": ..., **settings}`: a camera array's `tether_image_codec` attribute."""
        return {"name": self.name, **self.settings}

    def label(self) -> str:
        return describe(self.config())


def parse_image_codec(spec: str | ImageCodec | None, quality: int | None = None) -> ImageCodec:
    """`h264`, `h264:crf=20,gop=16`, `av1`, `jpeg` (+ `quality`), `jpeg:quality=80`,
    `avif:quality=60,speed=8`, `jxl:distance=2,effort=3`, `zstd`, `none`. None: the default."""
    if isinstance(spec, ImageCodec):
        return spec
    text = (spec or DEFAULT_IMAGE_CODEC).strip()
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    if name not in IMAGE_CODECS:
        raise StoreError(f"Unknown image codec '{name}'; choose one of {', '.join(IMAGE_CODECS)} "
                         "(options as name:key=value,..., e.g. h264:crf=20,gop=16).")
    given: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise StoreError(f"Image codec option '{item}' in '{text}' needs key=value.")
        given[key.strip()] = value.strip()
    if name in VIDEO_CODECS:
        from tether.data.video import VideoSettings

        values = _typed(text, name, given, _VIDEO_OPTIONS)
        settings = VideoSettings(name, values.get("crf"), values.get("gop", 8), values.get("preset"))
        config = settings.config()
        config.pop("codec")
        return ImageCodec(name, tuple(config.items()))
    table = FRAME_CODECS.get(name)
    if table is None:  # zstd, none
        _typed(text, name, given, {})
        return ImageCodec(name)
    values = _typed(text, name, given, {k: t for k, (t, *_) in table.options.items()})
    out = []
    for key, (kind, default, allowed) in table.options.items():
        value = values.get(key, quality if key == "quality" and name == "jpeg" and quality is not None
                           else default)
        value = kind(value)
        if isinstance(allowed, tuple) and not allowed[0] <= value <= allowed[1]:
            raise StoreError(f"{name} {key} must be {allowed[0]:g}-{allowed[1]:g}, got {value}.")
        if isinstance(allowed, set) and value not in allowed:
            raise StoreError(f"{name} {key} must be one of {', '.join(sorted(allowed))}, got {value}.")
        out.append((key, value))
    return ImageCodec(name, tuple(out))


def _typed(text: str, name: str, given: dict[str, str], known: dict[str, type]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise StoreError(f"Unknown option(s) {', '.join(unknown)} in image codec '{text}'; "
                         f"{name} takes {', '.join(known) or 'no options'}.")
    try:
        return {k: known[k](v) for k, v in given.items()}
    except ValueError as exc:
        raise StoreError(f"Bad option in image codec '{text}': {exc}.") from exc


def describe(config: dict[str, Any]) -> str:
    """`h264 crf23 gop8`, `jpeg q90`, `zstd`: a camera array's codec in a few characters."""
    name = config.get("name", "?")
    if name in VIDEO_CODECS:
        return f"{name} crf{config.get('crf')} gop{config.get('gop')}"
    if name == "jpeg":
        return f"jpeg q{config.get('quality')}" + (" 4:4:4" if config.get("chroma") == "444" else "")
    if name == "avif":
        return f"avif q{config.get('quality')}"
    if name == "jxl":
        return f"jxl d{config.get('distance')}"
    return str(name)


# ---------------------------------------------------------------------- zarr encodings
@dataclass(frozen=True)
class ArrayEncoding:
    """Keyword arguments for `zarr.create_array` for one kind of array and zarr format."""

    kwargs: dict[str, Any]
    description: str


def image_encoding(codec: str | ImageCodec | None, quality: int | None, zarr_format: int) -> ArrayEncoding:
    """Encoding of `T,H,W,3 uint8` image arrays (one frame per chunk); `codec` is a spec."""
    spec = parse_image_codec(codec, quality)
    register_codecs()
    config: dict[str, Any] | None = None
    if spec.is_video:
        from tether.data.video import CODEC_ID

        codec_id, config = CODEC_ID, {"codec": spec.name, **spec.settings}
    elif spec.name in FRAME_CODECS:
        table = FRAME_CODECS[spec.name]
        codec_id, config = table.codec_id, table.build(spec.settings)
    if config is not None:
        if zarr_format == 2:
            from numcodecs import get_codec

            return ArrayEncoding({"compressors": get_codec({"id": codec_id, **config}),
                                  "filters": None}, spec.label())
        return ArrayEncoding({"serializer": _v3_class(codec_id)(**config), "compressors": None},
                             spec.label())
    if spec.name == "zstd":
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


# ---------------------------------------------------------------------- reading
def jpeg_decode(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one stored JPEG chunk into an `H,W,3` uint8 array (optionally in place)."""
    import imagecodecs

    return imagecodecs.jpeg8_decode(data, out=out)


def frame_decoder(array) -> Callable[..., np.ndarray] | None:
    """`decode(chunk_bytes, out=...)` for arrays of self-contained per-frame chunks (JPEG,
    AVIF, JPEG XL), so readers can skip zarr's per-call overhead; None for other arrays."""
    codec_id, _ = _frame_codec(array)
    for table in FRAME_CODECS.values():
        if table.codec_id == codec_id:
            import imagecodecs

            return functools.partial(getattr(imagecodecs, table.decode), **dict(table.decode_kwargs))
    return None


def is_jpeg_array(array) -> bool:
    """True when `array` (a zarr array) stores JPEG-encoded frames."""
    return _frame_codec(array)[0] == JPEG_ID


def is_video_array(array) -> bool:
    """True when `array` stores video groups (read with data/video.GopDecoder, not zarr)."""
    from tether.data.video import CODEC_ID

    return _frame_codec(array)[0] == CODEC_ID


def video_settings(array):
    """The encoder settings (data/video.VideoSettings) a video array was created with."""
    from tether.data.video import VideoSettings

    config = _frame_codec(array)[1]
    return VideoSettings(str(config.get("codec", "h264")), config.get("crf"),
                         int(config.get("gop", 8)), config.get("preset"))


def codec_info(array) -> dict[str, Any]:
    """`{"name": ..., settings}` of the frames `array` holds: from its `tether_image_codec`
    attribute, or, for arrays written before that existed, from its zarr codecs."""
    recorded = array.attrs.get(CODEC_ATTR)
    if isinstance(recorded, dict) and recorded.get("name"):
        return dict(recorded)
    codec_id, config = _frame_codec(array)
    if codec_id == JPEG_ID:
        return {"name": "jpeg", "quality": config.get("level"),
                "chroma": "444" if config.get("subsampling") in ("444", (1, 1)) else "420"}
    from tether.data.video import CODEC_ID

    if codec_id == CODEC_ID:
        return {"name": config.get("codec", "h264"),
                **{k: v for k, v in config.items() if k not in ("id", "codec")}}
    for name, table in FRAME_CODECS.items():
        if table.codec_id == codec_id:
            return {"name": name, **{k: v for k, v in config.items() if k != "id" and v is not None}}
    meta = array.metadata
    compressed = meta.compressor is not None if meta.zarr_format == 2 else len(meta.codecs) > 1
    return {"name": "zstd" if compressed else "none"}


def same_frame_encoding(a, b) -> bool:
    """Frames of `a` can be copied into `b` as bytes: same lossy codec, settings and shape."""
    if tuple(a.shape[1:]) != tuple(b.shape[1:]):
        return False
    id_a, config_a = _frame_codec(a)
    id_b, config_b = _frame_codec(b)
    if id_a is None or id_a != id_b:
        return False
    if id_a == JPEG_ID:  # zarr 2 and 3 spell the config differently; the bytes are the same
        return all(config_a.get(k) == config_b.get(k) for k in ("level", "subsampling"))
    return {k: v for k, v in config_a.items() if k != "id"} == \
        {k: v for k, v in config_b.items() if k != "id"}


def _frame_codec(array) -> tuple[str | None, dict[str, Any]]:
    """(numcodecs id, config) of the codec that turns `array`'s chunks into frames, if any."""
    meta = array.metadata
    if meta.zarr_format == 2:
        compressor = meta.compressor
        if compressor is None:
            return None, {}
        return compressor.codec_id, dict(compressor.get_config())
    for codec in meta.codecs:
        name = getattr(codec, "codec_name", "")
        if name.startswith("numcodecs."):
            return name.removeprefix("numcodecs."), dict(getattr(codec, "codec_config", {}) or {})
    return None, {}
