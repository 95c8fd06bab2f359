"""Video (H.264 or AV1) groups of pictures for camera arrays: one frame per chunk file, a
keyframe every `gop` frames.

Why video: camera frames carry sensor noise that intra-only codecs must spend bits on in every
frame; a video codec predicts each frame from the one before and codes the noise away once per
group. On benchmarks/codecs.py's camera-like 480x640 frames, H.264 at crf 23 with a keyframe
every 8 frames is ~4-5 KB per frame at PSNR >= JPEG q90's input fidelity class (docs/data.md,
"Image codecs"), against 55.7 KB for JPEG q90 and 9.5 KB for LeRobot's AV1 videos.

Layout: the store keeps its shape (`T,H,W,3` uint8, one frame per chunk, data/layout.py); each
frame's chunk file holds a 12-byte header and that frame's coded picture (an H.264 access unit
in Annex B form, or an AV1 temporal unit):

    b"tV" | version u8 | flags u8 (bit 0: keyframe) | index u16 (frames since the keyframe)
          | reserved u16 | group id u32

A keyframe (H.264: an IDR picture with its SPS/PPS; AV1: a key frame with its sequence
header) starts every episode and every `gop` frames after
it, so a frame decodes from at most `gop` chunk files of its own episode, an episode copies to
another store as bytes (data/editing.py), and a killed writer's tail is dropped frame by frame
like any other. The group id, random per group, lets a reader check that the chunks it chains
belong together. No B-frames, x264's zero-latency tuning and SVT-AV1's low-delay structure
give one coded picture per frame, at once, in display order.

Codecs (`CODECS`): h264 (libx264, fast: the default for recording) and av1 (SVT-AV1 encoder,
dav1d decoder: ~40% smaller, ~4x slower to encode; for converting stores, not for recording
several cameras on a small computer). Measured in docs/data.md.

Readers: `GopDecoder` (random access: decodes from the keyframe, keeps the decoder so ascending
requests inside one group decode each frame once). zarr alone decodes keyframes only (the
`tether_video` numcodecs codec); read everything else through `EpisodeStore.read_steps` or the
dataset, which use `GopDecoder`. PyAV (`av`, with FFmpeg's libx264, SVT-AV1 and dav1d) is
imported only when a video array is written or read.
"""

from __future__ import annotations

import os
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from tether.core.errors import StoreError

CODEC_ID = "tether_video"
MAGIC = b"tV"
VERSION = 1
HEADER = struct.Struct(">2sBBHHI")
KEYFRAME = 1
MAX_GOP = 250  # random access decodes up to this many frames; beyond, seeking is the cost

# FFmpeg objects made before a fork must never be freed in the child: freeing one there
# deadlocks (a DataLoader worker replacing the reader its parent used). At a fork, the child
# takes them out of every live encoder/decoder (which then open new ones) and keeps them.
_LIVE: weakref.WeakSet = weakref.WeakSet()
_INHERITED: list = []


def _after_fork_in_child() -> None:
    for owner in list(_LIVE):
        _INHERITED.extend(owner._release_inherited())


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True)
class VideoCodec:
    """One codec's FFmpeg names and setting ranges (a row of `CODECS`)."""

    encoder: str
    decoder: str
    max_crf: int
    crf: int  # default
    presets: tuple[str, ...]
    preset: str  # default
    min_size: int


CODECS: dict[str, VideoCodec] = {
    # x264's crf 23 is its own default; ultrafast also decodes fastest (no CABAC, no deblocking)
    "h264": VideoCodec("libx264", "h264", 51, 23,
                       ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                        "slower", "veryslow"), "ultrafast", 2),
    # SVT-AV1 presets 0 (slowest) .. 13; 10 is the fastest that kept its size advantage here
    "av1": VideoCodec("libsvtav1", "libdav1d", 63, 35, tuple(str(i) for i in range(14)), "10", 4),
}


@dataclass(frozen=True)
class VideoSettings:
    """Encoder settings of one video array (kept in its zarr codec config and attributes).

    codec: "h264" or "av1". crf: constant rate factor (0 best; h264 to 51, av1 to 63). gop:
    frames per group of pictures, i.e. at most how many frames a random read decodes. preset:
    the encoder's speed preset (x264 names; SVT-AV1 numbers 0-13). None picks the codec's default.
    """

    codec: str = "h264"
    crf: int | None = None
    gop: int = 8
    preset: str | None = None

    def __post_init__(self) -> None:
        spec = CODECS.get(self.codec)
        if spec is None:
            raise StoreError(f"Unknown video codec {self.codec!r}; choose one of {', '.join(CODECS)}.")
        crf = spec.crf if self.crf is None else int(self.crf)
        preset = spec.preset if self.preset is None else str(self.preset)
        object.__setattr__(self, "crf", crf)
        object.__setattr__(self, "preset", preset)
        object.__setattr__(self, "gop", int(self.gop))
        if not 0 <= crf <= spec.max_crf:
            raise StoreError(f"{self.codec} crf must be 0-{spec.max_crf} (lower is better quality), "
                             f"got {crf}.")
        if not 1 <= self.gop <= MAX_GOP:
            raise StoreError(f"{self.codec} gop must be 1-{MAX_GOP} frames, got {self.gop}.")
        if preset not in spec.presets:
            raise StoreError(f"{self.codec} preset must be one of {', '.join(spec.presets)}, got "
                             f"{preset!r}.")

    def config(self) -> dict[str, Any]:
        return {"codec": self.codec, "crf": self.crf, "gop": self.gop, "preset": self.preset}


def check_frame_shape(codec: str, height: int, width: int) -> None:
    """4:2:0 video needs even sizes; say so before any frame is recorded."""
    least = CODECS[codec].min_size
    if height % 2 or width % 2 or height < least or width < least:
        raise StoreError(
            f"{codec} needs even image sizes of at least {least}x{least} (4:2:0 chroma), got "
            f"{height}x{width}; record this camera with --image-codec jpeg, or crop/resize it."
        )


def pack(payload: bytes, index: int, group: int) -> bytes:
    """One chunk file: header + access unit."""
    return HEADER.pack(MAGIC, VERSION, KEYFRAME if index == 0 else 0, index, 0, group) + payload


def unpack(chunk: bytes) -> tuple[int, int, memoryview]:
    """(index in its group, group id, access unit) of a chunk file; ValueError if it is none."""
    if len(chunk) <= HEADER.size:
        raise ValueError(f"a {len(chunk)}-byte chunk is too short for a video frame")
    magic, version, flags, index, _, group = HEADER.unpack_from(chunk)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not a tether video frame (bad header)")
    if bool(flags & KEYFRAME) != (index == 0):
        raise ValueError(f"header says keyframe={bool(flags & KEYFRAME)} at index {index}")
    return index, group, memoryview(chunk)[HEADER.size:]


class GopEncoder:
    """Encodes one episode's frames of one camera, in order, into chunk files' bytes.

    A keyframe at the first frame and every `gop` frames after it. Keep one per episode and
    camera (the writer does); frames must all have the same shape.
    """

    def __init__(self, settings: VideoSettings, height: int, width: int) -> None:
        check_frame_shape(settings.codec, height, width)
        self.settings = settings
        self._ctx = _open_encoder(settings, height, width)
        self._shape = (height, width, 3)
        self._height, self._width = height, width
        self._n = 0
        self._group = 0
        _LIVE.add(self)

    def encode(self, frames: np.ndarray) -> list[bytes]:
        """Chunk bytes for each of `frames` (N, H, W, 3) uint8, one per frame."""
        av = _av()
        out = []
        for frame in frames:
            if frame.shape != self._shape:
                raise StoreError(f"Video frame shape {frame.shape} differs from {self._shape}.")
            index = self._n % self.settings.gop
            if index == 0:
                self._group = int.from_bytes(os.urandom(4), "big")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self._n
            if index == 0:
                vf.pict_type = av.video.frame.PictureType.I
            if self._ctx is None:  # released at a fork (or closed)
                if index:
                    raise StoreError("A video encoder cannot continue a group across a fork or "
                                     "after close(); start a new episode.")
                self._ctx = _open_encoder(self.settings, self._height, self._width)
            packets = self._ctx.encode(vf)
            if len(packets) != 1 or bool(packets[0].is_keyframe) != (index == 0):
                raise StoreError(
                    f"Internal error: the {self.settings.codec} encoder gave {len(packets)} packets for frame "
                    f"{self._n} (keyframe expected: {index == 0}); frames were not stored."
                )
            out.append(pack(bytes(packets[0]), index, self._group))
            self._n += 1
        return out

    def close(self) -> None:
        """End the stream (every frame's unit was already returned: there is nothing to flush)."""
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.encode(None)  # end of stream: SVT-AV1 complains when closed without it

    def _release_inherited(self) -> list:
        held, self._ctx = [self._ctx], None
        return held


class FrameError(Exception):
    """Reading or decoding the chunk of `step` failed (`missing`: its file does not exist)."""

    def __init__(self, step: int, cause: BaseException) -> None:
        super().__init__(f"frame {step}: {type(cause).__name__}: {cause}")
        self.step = step
        self.cause = cause
        self.missing = isinstance(cause, FileNotFoundError)


class GopDecoder:
    """Random access to one video array's frames through `fetch(step) -> chunk bytes`.

    `frame_into(step, out)` decodes from the group's keyframe up to `step`. The decoder stays
    open between calls, so asking for frames of one group in ascending order (a window t-1, t;
    a sorted batch) decodes each frame once. Errors are FrameError naming the step whose chunk
    failed, which need not be the step asked for.
    """

    def __init__(self, fetch: Callable[[int], bytes], codec: str = "h264") -> None:
        self._fetch = fetch
        self._codec = CODECS[codec].decoder
        self._decoder: Any = None
        self._group: tuple[int, int] | None = None  # (store step of the keyframe, group id)
        self._next = 0  # index of the next frame the open decoder would output
        self._last: Any = None  # the last decoded av.VideoFrame (index self._next - 1)
        self.decoded = 0  # frames decoded (work accounting: tests)
        self.fetched = 0  # chunk files read
        _LIVE.add(self)

    def _release_inherited(self) -> list:
        held = [self._decoder, self._last]
        self._decoder, self._group, self._next, self._last = None, None, 0, None
        return held

    def frame(self, step: int) -> np.ndarray:
        """Frame `step` as a new (H, W, 3) uint8 array."""
        return self._convert(step, self._advance(step))

    def frame_into(self, step: int, out: np.ndarray) -> np.ndarray:
        """Decode frame `step` into `out` (H, W, 3) uint8."""
        rgb = self._convert(step, self._advance(step))
        if rgb.shape != out.shape:
            raise FrameError(step, ValueError(f"decoded shape {rgb.shape}, array shape {out.shape}"))
        out[...] = rgb
        return out

    def _advance(self, step: int):
        """The decoded av.VideoFrame of `step` (decoding forward from the keyframe if needed)."""
        chunk = self._read(step)
        try:
            index, group, _ = unpack(chunk)
        except ValueError as exc:
            raise FrameError(step, exc) from exc
        start = step - index
        if self._group != (start, group) or index < self._next - 1:
            self._restart((start, group))
        for i in range(self._next, index + 1):
            self._decode_one(start + i, chunk if i == index else self._read(start + i), i, group)
        return self._last

    @staticmethod
    def _convert(step: int, frame) -> np.ndarray:
        try:
            return frame.to_ndarray(format="rgb24")
        except Exception as exc:  # noqa: BLE001 - PyAV/FFmpeg raise several types
            raise FrameError(step, exc) from exc

    def read(self, start: int, stop: int, shape: tuple[int, ...]) -> np.ndarray:
        """Frames `start:stop` as one (N, H, W, 3) array (each frame decoded once)."""
        out = np.empty((max(0, stop - start), *shape), np.uint8)
        for i, step in enumerate(range(start, stop)):
            self.frame_into(step, out[i])
        return out

    def _read(self, step: int) -> bytes:
        try:
            chunk = self._fetch(step)
        except Exception as exc:  # noqa: BLE001 - FileNotFoundError or a remote store's error
            raise FrameError(step, exc) from exc
        self.fetched += 1
        return chunk

    def _restart(self, group: tuple[int, int]) -> None:
        self._decoder = _av().CodecContext.create(self._codec, "r")
        self._decoder.thread_count = 1  # DataLoader workers are the parallelism
        self._group, self._next, self._last = group, 0, None

    def _decode_one(self, step: int, chunk: bytes, expected: int, group: int) -> None:
        av = _av()
        try:
            index, chunk_group, unit = unpack(chunk)
            if index != expected or chunk_group != group:
                raise ValueError(
                    f"chunk is frame {index} of group {chunk_group:08x}, expected frame {expected} "
                    f"of group {group:08x} (chunks of different recordings were mixed)"
                )
            frames = self._decoder.decode(av.Packet(bytes(unit)))
            if len(frames) != 1:
                raise ValueError(f"the decoder returned {len(frames)} frames for one access unit")
        except Exception as exc:  # noqa: BLE001 - PyAV/FFmpeg raise several types
            self._group, self._last = None, None  # the decoder state is unknown now
            raise FrameError(step, exc) from exc
        self._last = frames[0]
        self._next = expected + 1
        self.decoded += 1


# ---------------------------------------------------------------------- zarr codec
def numcodecs_class():
    """The numcodecs codec `tether_video`: what zarr runs for a video array's chunks.

    Only keyframes are self-contained, so zarr alone decodes those and raises a clear error for
    the rest; writing through zarr encodes every frame as a keyframe (valid, just larger). The
    store writes groups itself (data/writer.py) and reads them with GopDecoder.
    """
    from numcodecs.abc import Codec

    class TetherVideo(Codec):
        codec_id = CODEC_ID

        def __init__(self, codec: str = "h264", crf: int | None = None, gop: int = 8,
                     preset: str | None = None) -> None:
            self.settings = VideoSettings(codec, crf, gop, preset)
            for key, value in self.settings.config().items():
                setattr(self, key, value)

        def encode(self, buf):
            frames = np.asarray(buf, dtype=np.uint8)
            if frames.ndim != 4 or frames.shape[0] != 1 or frames.shape[-1] != 3:
                raise StoreError(f"tether_video encodes one (1, H, W, 3) frame per chunk, got {frames.shape}.")
            encoder = GopEncoder(self.settings, *frames.shape[1:3])
            try:
                return encoder.encode(frames)[0]
            finally:
                encoder.close()

        def decode(self, buf, out=None):
            chunk = bytes(buf)
            index, _, _ = unpack(chunk)
            if index:
                raise StoreError(
                    f"This chunk is frame {index} of a video group: it decodes only after the "
                    "frames before it. Read video arrays through tether (EpisodeStore.read_steps "
                    "or get_episode), which decodes from the keyframe."
                )
            try:
                frame = GopDecoder(lambda _: chunk, self.settings.codec).frame(0)
            except FrameError as exc:
                raise exc.cause from exc
            if out is not None:
                np.copyto(np.asarray(out).reshape(frame.shape), frame)
                return out
            return frame

        def get_config(self):
            return {"id": CODEC_ID, **self.settings.config()}

    return TetherVideo



def _av():
    """PyAV, or the one-line error naming the extra that installs it."""
    try:
        import av
    except ImportError as exc:
        from tether.core.optional import missing_extra

        raise missing_extra(__name__, "av") from exc
    return av


def _open_encoder(settings: VideoSettings, height: int, width: int):
    av = _av()
    gop = settings.gop
    if settings.codec == "av1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config per encoder otherwise
        options = {"crf": str(settings.crf), "preset": settings.preset,
                   "svtav1-params": f"pred-struct=1:lookahead=0:keyint={gop}:irefresh-type=2"}
    else:
        # keyframes exactly where the encoder is told (no scene cuts), as IDR pictures
        options = {"crf": str(settings.crf), "preset": settings.preset, "tune": "zerolatency",
                   "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:forced-idr=1"}
    ctx = av.CodecContext.create(CODECS[settings.codec].encoder, "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, 30)  # frame counter only: the store keeps real times
    ctx.thread_count = 1  # one access unit per frame, at once (frame threads would delay it)
    ctx.max_b_frames = 0
    ctx.gop_size = gop
    ctx.options = options
    return ctx
