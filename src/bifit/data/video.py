"""Reading videos, frame folders and images into uint8 frames, and caching decoded videos.

All readers return a :class:`VideoFrames` whose ``frames`` are uint8 [T, H, W, 3] RGB. Video
files (mp4, avi, webm, mov, mkv, ...) are decoded with PyAV, every frame in presentation order,
as ``torchvision.io.read_video`` (the official A2D loader) does. :func:`open_frame_source` reads
the same inputs clip by clip instead (:class:`FrameSource`), for inference over long videos.

:class:`VideoFrameCache` keeps decoded videos so training does not decode a clip at every step:

- an in-memory LRU of the last ``max_videos_in_memory`` decoded videos (per process, so per
  DataLoader worker);
- optionally a disk cache: one ``<video id>.npy`` (uint8 [T, H, W, 3], lossless) per video under
  ``cache_dir``, written atomically on first use and memory-mapped afterwards, so later reads
  (also from other workers and later runs) touch only the frames they need. It costs
  T·H·W·3 bytes per video (~55 MB for a typical 320p A2D clip).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from bifit.data.names import safe_name

if TYPE_CHECKING:
    import av

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".gif"})


@dataclass(frozen=True)
class VideoFrames:
    """Decoded frames of one video.

    Attributes:
        frames: uint8 [T, H, W, 3], RGB.
        fps: frames per second of a video file; ``None`` for folders and images.
        names: one name per frame (file stem for folders/images, ``00000``, ``00001``, ... for
            video files), used to name per-frame outputs.
    """

    frames: np.ndarray
    fps: float | None
    names: list[str]

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@contextmanager
def _video_stream(path: Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and first video stream of a file opened with PyAV; any decoding error while it is
    open becomes one ValueError naming the file."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            yield container, container.streams.video[0]
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode video {path}: {exc}") from None


def _fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _decode_rgb(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[np.ndarray]:
    """Every frame of `stream`, in presentation order, as uint8 [H, W, 3] RGB."""
    stream.thread_type = "AUTO"
    for frame in container.decode(stream):
        yield frame.to_ndarray(format="rgb24")


def read_video_file(path: str | os.PathLike[str]) -> VideoFrames:
    """Decode every frame of a video file with PyAV.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded or holds no video frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    with _video_stream(path) as (container, stream):
        fps = _fps(stream)
        frames = list(_decode_rgb(container, stream))
    if not frames:
        raise ValueError(f"video {path} contains no frames")
    return VideoFrames(
        frames=np.stack(frames),
        fps=fps,
        names=[f"{i:05d}" for i in range(len(frames))],
    )


#: Modes of 16-bit single-channel images (16-bit PNG / TIFF greyscale). 16-bit RGB(A) files open as 8-bit
#: RGB(A) already (PIL keeps the high byte); 16-bit greyscale would saturate in `convert("RGB")`.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


@contextmanager
def open_image(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """`PIL.Image.open` that fails with one ValueError naming the file: unreadable, truncated or corrupt
    files, and images above PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS` pixels, about
    89 million by default; PIL only warns below twice that, bifit refuses from the limit on)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(
            f"cannot read image {path}: {exc} Refused; PIL.Image.MAX_IMAGE_PIXELS sets the limit"
        ) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    with image:
        try:
            yield image
        except OSError as exc:  # decoding happens lazily, on first access to the pixels
            raise ValueError(f"cannot read image {path}: {exc}") from None


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """An image file as a loaded 8-bit RGB PIL image: the one way bifit reads a frame.

    16-bit greyscale pixels are scaled to 8 bits (value >> 8, what OpenCV's 8-bit conversion and PIL do
    for 16-bit RGB) instead of saturating; 32-bit integer or float images, whose range is unknown, are
    refused.

    Raises:
        ValueError: naming the file (see `open_image`).
    """
    with open_image(path) as img:
        # Pillow < 10 opens 16-bit greyscale PNGs as mode "I"; PNG holds at most 16 bits per sample.
        if img.mode in _SIXTEEN_BIT_MODES or (img.mode == "I" and img.format == "PNG"):
            high = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
            return Image.fromarray(np.repeat(high[..., None], 3, axis=2), "RGB")
        if img.mode in ("I", "F"):
            kind = "integers" if img.mode == "I" else "floats"
            raise ValueError(
                f"cannot read image {path}: its pixels are 32-bit {kind} (mode {img.mode}) of unknown range; "
                "save the frames as 8- or 16-bit images"
            )
        return img.convert("RGB")


def _load_rgb(path: Path) -> np.ndarray:
    return np.asarray(open_rgb(path))


def read_image(path: str | os.PathLike[str]) -> VideoFrames:
    """Read one image as a 1-frame video (uint8 [1, H, W, 3])."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return VideoFrames(frames=_load_rgb(path)[None], fps=None, names=[path.stem])


def list_frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder``, sorted by file name.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no images, or two images whose names differ only in extension (or case).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"frame folder {folder} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    # Frames are named by their stem (masks/<stem>.png): 0001.jpg and 0001.png would write one mask.
    by_stem: dict[str, Path] = {}
    for path in files:
        other = by_stem.setdefault(path.stem.casefold(), path)
        if other is not path:
            raise ValueError(
                f"frame folder {folder} holds {other.name} and {path.name}: frames are named by file name "
                "without extension, so each name may occur once; keep one of them"
            )
    return files


def read_frame_folder(folder: str | os.PathLike[str]) -> VideoFrames:
    """Read a folder of frame images (sorted by file name) as a video.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no images, an unreadable image, or frames of different sizes.
    """
    files = list_frame_files(folder)
    frames = [_load_rgb(p) for p in files]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise ValueError(f"frames in {folder} have different sizes: {sorted(shapes)}")
    return VideoFrames(frames=np.stack(frames), fps=None, names=[p.stem for p in files])


def read_frames(source: str | os.PathLike[str]) -> VideoFrames:
    """Read a video file, a folder of frames or a single image, chosen by what ``source`` is."""
    path = Path(source)
    if path.is_dir():
        return read_frame_folder(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return read_image(path)
    if suffix in VIDEO_EXTENSIONS:
        return read_video_file(path)
    raise ValueError(
        f"unsupported input {path}: expected a folder of frames, an image "
        f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or a video ({', '.join(sorted(VIDEO_EXTENSIONS))})"
    )


class FrameSource:
    """Frames of one video, readable clip by clip as many times as needed (to run a model over a long
    video, then hand out its results frame by frame, without holding every frame in memory).

    Attributes:
        fps: frames per second of a video file (before any stride), None for folders and images.
        total: the number of frames kept (after the stride) where it is known before decoding, else
            None (video files read as a stream).
    """

    fps: float | None = None
    total: int | None = None

    def clips(self, length: int | None) -> Iterator[tuple[np.ndarray, list[str]]]:
        """Yields (uint8 [t, H, W, 3], t frame names); one clip of everything when length is None."""
        raise NotImplementedError


class ArraySource(FrameSource):
    """Frames already in memory: uint8 [T, H, W, 3] and their T names."""

    def __init__(self, frames: np.ndarray, names: list[str], fps: float | None) -> None:
        self.frames, self.names, self.fps, self.total = frames, names, fps, len(names)

    def clips(self, length: int | None) -> Iterator[tuple[np.ndarray, list[str]]]:
        step = length or len(self.names)
        for start in range(0, len(self.names), step):
            yield self.frames[start : start + step], self.names[start : start + step]


class FolderSource(FrameSource):
    """Frame files loaded one clip at a time."""

    def __init__(self, files: list[Path]) -> None:
        self.files, self.total = files, len(files)

    def clips(self, length: int | None) -> Iterator[tuple[np.ndarray, list[str]]]:
        step = length or len(self.files)
        for start in range(0, len(self.files), step):
            chunk = self.files[start : start + step]
            yield np.stack([read_image(p).frames[0] for p in chunk]), [p.stem for p in chunk]


class VideoFileSource(FrameSource):
    """A video file decoded with PyAV as a stream, keeping every `stride`-th frame."""

    def __init__(self, path: Path, stride: int) -> None:
        self.path, self.stride = path, stride
        with _video_stream(path) as (_, stream):
            self.fps = _fps(stream)
            self.total = -(-stream.frames // stride) if stream.frames > 0 else None

    def clips(self, length: int | None) -> Iterator[tuple[np.ndarray, list[str]]]:
        frames: list[np.ndarray] = []
        names: list[str] = []
        with _video_stream(self.path) as (container, stream):
            for i, frame in enumerate(_decode_rgb(container, stream)):
                if i % self.stride:
                    continue
                frames.append(frame)
                names.append(f"{i:05d}")
                if length is not None and len(frames) == length:
                    yield np.stack(frames), names
                    frames, names = [], []
        if frames:
            yield np.stack(frames), names


def open_frame_source(source: str | os.PathLike[str], stride: int = 1, stream: bool = False) -> FrameSource:
    """The frames of a video file, a folder of frames or an image, keeping every `stride`-th frame.

    With `stream`, folders and video files are read clip by clip as the frames are asked for (memory
    stays flat); otherwise everything is decoded at once (:func:`read_frames`).
    """
    path = Path(source)
    if stream and path.is_dir():
        return FolderSource(list_frame_files(path)[::stride])
    if stream and path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoFileSource(path, stride)
    decoded = read_frames(path)
    return ArraySource(decoded.frames[::stride], decoded.names[::stride], decoded.fps)


class VideoFrameCache:
    """Decoded-video cache: in-memory LRU in front of an optional on-disk ``.npy`` store.

    Args:
        cache_dir: where to keep ``<key>.npy`` files; ``None`` keeps only the in-memory LRU.
        max_videos_in_memory: how many decoded videos the LRU holds (0 disables it).
        decode: function decoding a video path to uint8 [T, H, W, 3]; defaults to PyAV.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        max_videos_in_memory: int = 4,
        decode: Callable[[Path], np.ndarray] | None = None,
    ) -> None:
        if max_videos_in_memory < 0:
            raise ValueError(f"max_videos_in_memory must be >= 0, got {max_videos_in_memory}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_videos_in_memory = max_videos_in_memory
        self._decode = decode or (lambda p: read_video_file(p).frames)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()

    def _disk_path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{safe_name(key, 'frame cache key')}.npy"

    def get(self, key: str, video_path: str | os.PathLike[str]) -> np.ndarray:
        """uint8 [T, H, W, 3] frames of ``video_path``, cached under ``key``.

        From the disk cache the array is a read-only memory map; index it to read frames.
        """
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        disk_path = self._disk_path(key)
        if disk_path is not None and disk_path.is_file():
            frames = np.load(disk_path, mmap_mode="r")
        else:
            frames = self._decode(Path(video_path))
            if disk_path is not None:
                self._write_atomic(disk_path, frames)
        if self.max_videos_in_memory > 0:
            self._memory[key] = frames
            while len(self._memory) > self.max_videos_in_memory:
                self._memory.popitem(last=False)
        return frames

    @staticmethod
    def _write_atomic(path: Path, frames: np.ndarray) -> None:
        # Several DataLoader workers may decode the same video at once: write to a private temp
        # file and rename, so readers never see a partial file.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(frames))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
