"""Video arrays inside the episode store: writing an episode's groups, reading frames back.

data/video.py knows the codec (groups of pictures, chunk header, encoder and decoder); this
module knows the store: where a frame's chunk file is, how it reaches the disk, and which
StoreError names a frame that fails. The writer (data/writer.py) keeps one `EpisodeVideo` per
episode; readers (`EpisodeStore.read_steps`, the dataset) use `VideoFrames`.

Crash safety is the store's (data/writer.py): chunk files of the uncommitted tail are written
through the array's own zarr store (whole, by temp file + rename, exactly as zarr writes any
chunk) and reach the disk with the file system sync before the commit point; a killed writer's
frames are dropped by truncation like any others.
Each group starts at a keyframe inside its own episode, so truncating or copying whole episodes
never separates a frame from the frames it is predicted from.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tether.core.errors import StoreError
from tether.data.codecs import is_video_array, video_settings
from tether.data.video import FrameError, GopDecoder, GopEncoder

if TYPE_CHECKING:
    from tether.data.store import EpisodeStore


class EpisodeVideo:
    """The video encoders of one episode being written (one per video array).

    The first frame each encoder sees is a keyframe, so a new EpisodeVideo starts new groups.
    """

    def __init__(self, store_path: Path) -> None:
        self._path = Path(store_path)
        self._encoders: dict[str, GopEncoder] = {}
        self._is_video: dict[str, bool] = {}

    def owns(self, key: str, array: Any) -> bool:
        """Whether `key`'s array holds video (its frames must go through `write`)."""
        if key not in self._is_video:
            self._is_video[key] = is_video_array(array)
        return self._is_video[key]

    def write(self, key: str, array: Any, start: int, frames: np.ndarray) -> None:
        """Encode `frames` as steps `start...` of `key` (the array is already resized)."""
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = GopEncoder(video_settings(array), *frames.shape[1:3])
            self._encoders[key] = encoder
        chunks = encoder.encode(frames)
        _write_chunks(array, {start + i: chunk for i, chunk in enumerate(chunks)})

    def close(self) -> None:
        for encoder in self._encoders.values():
            encoder.close()
        self._encoders.clear()


class VideoFrames:
    """Random access to the frames of one video array of an open store.

    Ascending requests inside one group decode each frame once (see GopDecoder); failures are
    StoreErrors naming the episode, key and frame whose chunk is missing or damaged.
    """

    def __init__(self, store: EpisodeStore, key: str) -> None:
        self._store = store
        self._key = key
        array = store.array(key)
        self._shape = tuple(int(d) for d in array.shape[1:])
        self.decoder = GopDecoder(lambda step: store.chunk_path(key, step).read_bytes(),
                                  video_settings(array).codec)

    def frame_into(self, step: int, out: np.ndarray) -> np.ndarray:
        try:
            return self.decoder.frame_into(step, out)
        except FrameError as exc:
            raise self._error(exc) from exc.cause

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames `start:stop` as (N, H, W, 3) uint8."""
        try:
            return self.decoder.read(start, stop, self._shape)
        except FrameError as exc:
            raise self._error(exc) from exc.cause

    def _error(self, exc: FrameError) -> StoreError:
        store, key, step = self._store, self._key, exc.step
        if exc.missing:
            found = store.missing_frame_error(key, step)
            if found is not None:
                return found
        return store.decode_error(key, step, exc.cause)


class VideoArray:
    """What `EpisodeStore.array(key)` returns for a video array: the zarr array, except that
    reading frames (`array[i]`, `array[a:b]`, `np.asarray(array)`) decodes them from their
    groups, which zarr alone cannot. Everything else (shape, chunks, attrs, metadata) is the
    zarr array's."""

    def __init__(self, store: EpisodeStore, key: str, array: Any) -> None:
        self._store, self._key, self.zarr_array = store, key, array
        self._frames: VideoFrames | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.zarr_array, name)

    def __len__(self) -> int:
        return int(self.zarr_array.shape[0])

    def __getitem__(self, selection: Any) -> np.ndarray:
        first, rest = (selection[0], selection[1:]) if isinstance(selection, tuple) else (selection, ())
        n = len(self)
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            frames = self._read(start, max(start, stop))[::step] if step > 0 else \
                self._read(0, n)[first]
        elif isinstance(first, (int, np.integer)):
            index = int(first) + n if int(first) < 0 else int(first)
            if not 0 <= index < n:
                raise IndexError(f"frame {first} is out of range for {n} frames")
            frames = self._read(index, index + 1)[0]
        else:
            frames = self._read(0, n)[first]
        return frames[(slice(None), *rest)] if frames.ndim == 4 else frames[tuple(rest)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self._read(0, len(self))
        return frames if dtype is None else frames.astype(dtype)

    def __repr__(self) -> str:
        return f"VideoArray({self._key!r}, shape={tuple(self.zarr_array.shape)})"

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._frames is None:
            self._frames = VideoFrames(self._store, self._key)
        return self._frames.read(start, stop)


def _write_chunks(array: Any, chunks: dict[int, bytes]) -> None:
    """Store encoded frames as the chunks of steps `chunks` through the array's zarr store, as
    zarr stores any chunk (whole or not at all; the commit's file system sync makes them
    durable). An OSError (a full disk) propagates for the writer to undo the episode."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store, prefix = array.store_path.store, array.store_path.path
    rest = (0,) * (len(array.shape) - 1)
    buffer = default_buffer_prototype().buffer

    async def put_all() -> None:
        await asyncio.gather(*(
            store.set(f"{prefix}/{array.metadata.encode_chunk_key((step, *rest))}",
                      buffer.from_bytes(payload))
            for step, payload in chunks.items()))

    sync(put_all())
