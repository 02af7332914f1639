"""Segment what referring expressions describe in a video.

`Segmenter(checkpoint).segment(video, ["expression 1", "expression 2"])` follows the official
Ref-YouTube-VOS inference:

1. every frame is resized so its shorter side is 360 (PIL bilinear, longer side truncated, as
   `torchvision.transforms.Resize(360)`) and ImageNet-normalised;
2. the query (one of Q per-frame slots) is the argmax over q of the mean over frames of
   sigmoid(logit) (max over classes);
3. that query's stride-4 mask logits are resized bilinearly (align_corners False) straight to the
   original frame size, then sigmoid > 0.5; its box (cx, cy, w, h of the frame) is scaled to
   pixels of the original frame.

Work shared across expressions: frames are decoded and the backbone runs once per clip; the
features are repeated for the E expressions and decoded in one batched call. Results equal
running each expression alone up to float rounding.

Long videos (`clip_length=N`): the video is processed in clips of N frames. IFI (the inter-frame
query interaction) then attends among the frames of one clip only, and BVLI and the cross-modal
FPN see one clip at a time, so results differ from whole-video inference. The referred object is
still chosen once for the whole video: per-query sums of sigmoid scores are accumulated over all
clips and ONE query index is picked from their mean over all frames. This is meaningful because a
query slot q is the same learned embedding (query position and initial reference point) in every
frame and every clip, and training matches one slot to the object for all frames of a clip; the
official Ref-DAVIS script instead picks the query per 24-frame clip (`query_selection="clip"`).
Memory stays flat: frames are decoded clip by clip (twice for video files: once to run the model,
once to hand out results), and the stride-4 mask logits of all queries (needed until the query is
known) go to a temporary directory, not to RAM.
"""

from __future__ import annotations

import importlib.resources
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.targets import normalize_frames
from ..data.transforms import EVAL_SHORT_SIZE, resized_hw
from ..data.video import (
    VIDEO_EXTENSIONS,
    list_frame_files,
    read_frames,
    read_image,
    read_video_file,
)
from ..modeling.bifit import BifitModel
from ..modeling.checkpoint import CheckpointError, load_model, read_pretrained_config
from ..modeling.fast import prepare_fast_inference
from ..modeling.text_encoder import ExpressionError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

__all__ = [
    "ExpressionResult",
    "FrameResult",
    "SegmentationResult",
    "Segmenter",
    "VideoSegmentation",
    "check_expressions",
    "checkpoint_short_side",
    "default_checkpoint",
]

VideoInput = str | os.PathLike[str] | np.ndarray | torch.Tensor
QuerySelection = Literal["video", "clip"]


def default_checkpoint() -> Path:
    """Directory of the demo model shipped with the package (`bifit/assets/demo_model`).

    Raises:
        FileNotFoundError: the bundled model is not installed.
    """
    path = Path(str(importlib.resources.files("bifit"))) / "assets" / "demo_model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled demo model is not installed (expected {path}/config.json); "
            "pass --checkpoint with a bifit checkpoint directory or an official .pth file"
        )
    return path


def checkpoint_short_side(checkpoint: str | os.PathLike[str]) -> int:
    """The shorter side frames should be resized to for `checkpoint`: the training frames' for a model
    trained on synthetic clips (its config records them under `demo`), else the official 360."""
    path = Path(checkpoint)
    if path.is_dir():
        demo = read_pretrained_config(path).get("demo")
        if isinstance(demo, dict) and "frame_size" in demo:
            return int(min(demo["frame_size"]))
    return EVAL_SHORT_SIZE


def check_expressions(expressions: str | Sequence[str]) -> list[str]:
    """The expressions as a list, refusing an empty list, non-strings and blank expressions.

    Raises:
        ExpressionError: naming the first bad expression (counted from 1).
    """
    if isinstance(expressions, str):
        expressions = [expressions]
    expressions = list(expressions)
    if not expressions:
        raise ExpressionError("no expression given; pass at least one referring expression")
    for i, text in enumerate(expressions, 1):
        if not isinstance(text, str):
            raise ExpressionError(f"expression {i} is a {type(text).__name__}, expected a string")
        if not text.strip():
            raise ExpressionError(f"expression {i} is empty; describe the object to segment, e.g. 'the red car'")
    return expressions


def _check_checkpoint_kind(path: Path) -> None:
    """Refuse files that are no checkpoint at all before trying to unpickle them."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        return  # load_pretrained names what a directory lacks
    if path.suffix == ".safetensors" or path.name == "config.json":
        raise CheckpointError(f"{path} is one file of a bifit checkpoint; pass the directory that holds it")
    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # legacy torch.save files start with a pickle protocol marker
    if not (pickled or zipfile.is_zipfile(path)):
        raise CheckpointError(
            f"{path} is not a checkpoint: expected a bifit checkpoint directory (config.json + model.safetensors) "
            "or an official BIFIT .pth file"
        )


# ---------------------------------------------------------------------------------------- frames
class _FrameSource:
    """Frames of one video, readable clip by clip as many times as needed.

    `total` is the number of frames kept (after the stride) where it is known before decoding,
    else None (video files read as a stream).
    """

    fps: float | None = None
    total: int | None = None

    def clips(self, length: int | None) -> Iterator[tuple[np.ndarray, list[str]]]:
        """Yields (uint8 [t, H, W, 3], t frame names); one clip of everything when length is None."""
        raise NotImplementedError


class _ArraySource(_FrameSource):
    def __init__(self, frames: np.ndarray, names: list[str], fps: float | None) -> None:
        self.frames, self.names, self.fps, self.total = frames, names, fps, len(names)

    def clips(self, length: int | None) -> Iterator[tuple[np.ndarray, list[str]]]:
        step = length or len(self.names)
        for start in range(0, len(self.names), step):
            yield self.frames[start : start + step], self.names[start : start + step]


class _FolderSource(_FrameSource):
    """Frame files loaded one clip at a time."""

    def __init__(self, files: list[Path]) -> None:
        self.files, self.total = files, len(files)

    def clips(self, length: int | None) -> Iterator[tuple[np.ndarray, list[str]]]:
        step = length or len(self.files)
        for start in range(0, len(self.files), step):
            chunk = self.files[start : start + step]
            yield np.stack([read_image(p).frames[0] for p in chunk]), [p.stem for p in chunk]


class _VideoFileSource(_FrameSource):
    """A video file decoded with PyAV as a stream, keeping every `stride`-th frame."""

    def __init__(self, path: Path, stride: int) -> None:
        import av

        self.path, self.stride = path, stride
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError(f"{path} has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else None
                self.total = -(-stream.frames // stride) if stream.frames > 0 else None
        except av.error.FFmpegError as exc:
            raise ValueError(f"cannot decode video {path}: {exc}") from None

    def clips(self, length: int | None) -> Iterator[tuple[np.ndarray, list[str]]]:
        import av

        frames: list[np.ndarray] = []
        names: list[str] = []
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for i, frame in enumerate(container.decode(stream)):
                    if i % self.stride:
                        continue
                    frames.append(frame.to_ndarray(format="rgb24"))
                    names.append(f"{i:05d}")
                    if length is not None and len(frames) == length:
                        yield np.stack(frames), names
                        frames, names = [], []
        except av.error.FFmpegError as exc:
            raise ValueError(f"cannot decode video {self.path}: {exc}") from None
        if frames:
            yield np.stack(frames), names


def _as_uint8_video(video: np.ndarray | torch.Tensor) -> np.ndarray:
    array = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.ndim == 3:
        array = array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"a video array must be uint8 [T, H, W, 3] (RGB), got {array.dtype} {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("the video has no frames")
    return array


def _open_frames(video: VideoInput, stride: int, stream: bool) -> _FrameSource:
    """A frame source for a path (video file, frame folder, image) or a uint8 array, with the stride applied."""
    if isinstance(video, (np.ndarray, torch.Tensor)):
        frames = _as_uint8_video(video)[::stride]
        return _ArraySource(frames, [f"{i:05d}" for i in range(0, stride * len(frames), stride)], None)
    path = Path(video)
    if stream and path.is_dir():
        return _FolderSource(list_frame_files(path)[::stride])
    if stream and path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        return _VideoFileSource(path, stride)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        decoded = read_video_file(path)
    else:
        decoded = read_frames(path)
    return _ArraySource(decoded.frames[::stride], decoded.names[::stride], decoded.fps)


# ---------------------------------------------------------------------------------------- results
@dataclass
class ExpressionResult:
    """What one expression refers to in every processed frame.

    Attributes:
        expression: the referring expression.
        masks: bool [T, H, W] at the original frame size.
        scores: float32 [T], sigmoid of the chosen query's logit in each frame.
        boxes: float32 [T, 4], (x1, y1, x2, y2) in pixels of the original frame.
        queries: int64 [T], the query slot used in each frame (one value for the whole video unless
            `query_selection="clip"`).
    """

    expression: str
    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    queries: np.ndarray

    @property
    def query(self) -> int:
        """The query slot of the first frame (the only one with `query_selection="video"`)."""
        return int(self.queries[0])


@dataclass
class SegmentationResult:
    """All expressions of one video. Indexing and iterating give the `ExpressionResult`s.

    Attributes:
        expressions: one result per expression, in the order given.
        frame_names: T names (file stems for folders, `00000`, ... = frame index for video files).
        fps: frames per second of the processed frames (stride applied), None for folders/images.
    """

    expressions: list[ExpressionResult]
    frame_names: list[str]
    fps: float | None

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int) -> ExpressionResult:
        return self.expressions[index]

    def __iter__(self) -> Iterator[ExpressionResult]:
        return iter(self.expressions)


@dataclass
class FrameResult:
    """All expressions in one frame, as `VideoSegmentation` hands them out.

    Attributes:
        index: position among the processed frames.
        name: the frame's name.
        frame: uint8 [H, W, 3], the original RGB frame.
        masks: bool [E, H, W]; scores float32 [E]; boxes float32 [E, 4] (x1, y1, x2, y2 pixels);
        queries: int64 [E], the query slot used for each expression.
    """

    index: int
    name: str
    frame: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    queries: np.ndarray


class _LogitStore:
    """Per-clip arrays kept in memory, or spilled to a temporary directory to keep memory flat."""

    def __init__(self, spill: bool) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="bifit-logits-") if spill else None
        self._memory: list[np.ndarray] = []
        self._count = 0

    def append(self, array: np.ndarray) -> None:
        if self._tmp is None:
            self._memory.append(array)
        else:
            np.save(os.path.join(self._tmp.name, f"{self._count}.npy"), array)
        self._count += 1

    def __getitem__(self, i: int) -> np.ndarray:
        if self._tmp is None:
            return self._memory[i]
        return np.load(os.path.join(self._tmp.name, f"{i}.npy"))

    def close(self) -> None:
        self._memory = []
        if self._tmp is not None:
            self._tmp.cleanup()


class VideoSegmentation:
    """The model's pass over a video is done; iterate to get a `FrameResult` per frame.

    Only small per-frame data (logits and boxes of every query) are kept in memory; frames and
    masks are produced one at a time while iterating, so a caller that writes them out as they come
    keeps memory flat. Iterate once; `close()` (or leaving a `with` block) deletes temporary files.

    Attributes:
        expressions: the E expressions.
        num_frames: T, the number of processed frames.
        frame_size: (H, W) of the original frames.
        fps: frames per second of the processed frames, None when unknown.
        queries: int64 [E, T], the query slot chosen for every expression and frame.
        query_scores: float32 [E, Q], mean over all frames of each query's score (what picks it).
    """

    def __init__(
        self,
        source: _FrameSource,
        clip_length: int | None,
        expressions: list[str],
        frame_size: tuple[int, int],
        logits: np.ndarray,
        boxes: np.ndarray,
        mask_logits: _LogitStore,
        queries: np.ndarray,
        query_scores: np.ndarray,
        threshold: float,
        fps: float | None,
    ) -> None:
        self._source, self._clip_length = source, clip_length
        self.expressions = expressions
        self.frame_size = frame_size
        self._logits, self._boxes, self._mask_logits = logits, boxes, mask_logits
        self.queries, self.query_scores = queries, query_scores
        self.threshold = threshold
        self.fps = fps
        self.num_frames = logits.shape[1]

    def __iter__(self) -> Iterator[FrameResult]:
        h, w = self.frame_size
        e_idx = np.arange(len(self.expressions))
        scale = np.array([w, h, w, h], dtype=np.float32)
        t = 0
        try:
            for clip_idx, (frames, names) in enumerate(self._source.clips(self._clip_length)):
                clip_masks = self._mask_logits[clip_idx]  # [E, t, Q, h/4, w/4]
                for j in range(len(names)):
                    if t >= self.num_frames:
                        raise RuntimeError(f"the video yielded more frames on its second read than the {self.num_frames} segmented")
                    q = self.queries[:, t]
                    chosen = torch.from_numpy(np.ascontiguousarray(clip_masks[e_idx, j, q]))[None]
                    up = F.interpolate(chosen, size=(h, w), mode="bilinear", align_corners=False)[0]
                    scores = 1.0 / (1.0 + np.exp(-self._logits[e_idx, t, q].astype(np.float64)))
                    yield FrameResult(
                        index=t,
                        name=names[j],
                        frame=frames[j],
                        masks=(up.sigmoid() > self.threshold).numpy(),
                        scores=scores.max(-1).astype(np.float32),
                        boxes=_cxcywh_to_xyxy(self._boxes[e_idx, t, q]) * scale,
                        queries=q.copy(),
                    )
                    t += 1
        finally:
            self.close()
        if t != self.num_frames:
            raise RuntimeError(f"the video yielded {t} frames on its second read, {self.num_frames} the first time")

    def collect(self) -> SegmentationResult:
        """Everything in memory: bool masks [T, H, W] per expression (memory grows with T)."""
        e, t = len(self.expressions), self.num_frames
        h, w = self.frame_size
        masks = np.zeros((e, t, h, w), dtype=bool)
        scores = np.zeros((e, t), dtype=np.float32)
        boxes = np.zeros((e, t, 4), dtype=np.float32)
        names: list[str] = []
        for frame in self:
            masks[:, frame.index], scores[:, frame.index], boxes[:, frame.index] = frame.masks, frame.scores, frame.boxes
            names.append(frame.name)
        results = [
            ExpressionResult(text, masks[i], scores[i], boxes[i], self.queries[i].copy())
            for i, text in enumerate(self.expressions)
        ]
        return SegmentationResult(results, names, self.fps)

    def close(self) -> None:
        self._mask_logits.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = np.moveaxis(boxes.astype(np.float32), -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


# ---------------------------------------------------------------------------------------- segmenter
class Segmenter:
    """Referring video object segmentation of videos, frame folders, images or uint8 arrays.

    Args:
        checkpoint_or_model: a `BifitModel`, a bifit checkpoint directory or an official `.pth` file.
        text_encoder: for an official `.pth`: Hugging Face id or local directory of its text
            encoder's tokenizer and config (default `roberta-base`); ignored otherwise.
        device: where to run; defaults to the given model's device, else CUDA when available, else CPU.
        clip_length: process the video in clips of this many frames (bounded memory); None runs the
            whole video as one clip, as the official Ref-YouTube-VOS inference does.
        frame_stride: segment every k-th frame only.
        short_side: frames are resized so that their shorter side has this length (official 360);
            None keeps the original size.
        threshold: mask probability threshold (official 0.5).
        query_selection: "video" picks one query slot from the mean score over all frames (the
            official rule for one clip, extended to all clips); "clip" picks one per clip, as the
            official Ref-DAVIS script does.
        fast: fast inference (`bifit.modeling.fast.prepare_fast_inference`): bfloat16 matrix
            products where the hardware has them; slightly different outputs, see the README.
    """

    def __init__(
        self,
        checkpoint_or_model: BifitModel | str | os.PathLike[str],
        text_encoder: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        clip_length: int | None = None,
        frame_stride: int = 1,
        short_side: int | None = EVAL_SHORT_SIZE,
        threshold: float = 0.5,
        query_selection: QuerySelection = "video",
        fast: bool = False,
    ) -> None:
        if clip_length is not None and clip_length < 1:
            raise ValueError(f"clip_length must be a positive number of frames, got {clip_length}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        if query_selection not in ("video", "clip"):
            raise ValueError(f"query_selection must be 'video' or 'clip', got {query_selection!r}")
        if isinstance(checkpoint_or_model, BifitModel):
            model = checkpoint_or_model if device is None else checkpoint_or_model.to(device)
        else:
            path = Path(checkpoint_or_model)
            _check_checkpoint_kind(path)
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model = load_model(path, text_encoder=str(text_encoder or "roberta-base"), device=device)
        self.model = prepare_fast_inference(model) if fast else model.eval()
        self.clip_length = clip_length
        self.frame_stride = frame_stride
        self.short_side = short_side
        self.threshold = threshold
        self.query_selection = query_selection

    @property
    def device(self) -> torch.device:
        return self.model.device

    def check_expressions(self, expressions: str | Sequence[str]) -> list[str]:
        """`check_expressions`, plus each expression must fit the text encoder's maximum length."""
        expressions = check_expressions(expressions)
        encoder = self.model.text_encoder
        limit = encoder.max_length
        for i, text in enumerate(expressions, 1):
            n = len(encoder.tokenizer(text)["input_ids"])
            if n > limit:
                shown = text if len(text) <= 60 else text[:57] + "..."
                raise ExpressionError(
                    f"expression {i} ({shown!r}) is {n} tokens long; the text encoder accepts at most {limit}"
                )
        return expressions

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [t, H, W, 3] -> float32 [t, 3, h, w] on the model's device: resized (shorter side
        `short_side`, PIL bilinear) and ImageNet-normalised."""
        height, width = frames.shape[1:3]
        if self.short_side is not None:
            out_h, out_w = resized_hw(height, width, self.short_side)
            if (out_h, out_w) != (height, width):
                frames = np.stack(
                    [np.asarray(Image.fromarray(f).resize((out_w, out_h), Image.Resampling.BILINEAR)) for f in frames]
                )
        return normalize_frames(frames).to(self.device)

    def stream(self, video: VideoInput, expressions: str | Sequence[str], progress: bool = False) -> VideoSegmentation:
        """Run the model over the video; iterate the returned object for per-frame results.

        Args:
            video: a video file (mp4, avi, webm, mov, ...), a folder of frames, an image, or uint8
                frames [T, H, W, 3] (RGB).
            expressions: one or more referring expressions.
            progress: show a progress bar.
        Raises:
            FileNotFoundError: the video does not exist.
            ValueError: unreadable video, no frames, frames of different sizes; `ExpressionError`
                for an empty or too long expression.
        """
        from tqdm.auto import tqdm

        expressions = self.check_expressions(expressions)
        source = _open_frames(video, self.frame_stride, stream=self.clip_length is not None)
        store = _LogitStore(spill=self.clip_length is not None)
        logits, boxes, sums = [], [], None
        clip_queries: list[np.ndarray] = []
        frame_size: tuple[int, int] | None = None
        bar = tqdm(total=source.total, unit="frame", desc="segmenting", disable=not progress)
        try:
            for frames, _ in source.clips(self.clip_length):
                if frame_size is None:
                    frame_size = frames.shape[1:3]
                elif frames.shape[1:3] != frame_size:
                    raise ValueError(f"frames change size within the video: {frame_size} then {frames.shape[1:3]}")
                out = self._forward(frames, expressions)
                probs = out["pred_logits"].sigmoid()  # [E, t, Q, K]
                clip_sum = probs.sum(1)
                sums = clip_sum if sums is None else sums + clip_sum
                clip_queries.append(clip_sum.max(-1).values.argmax(-1).numpy())  # [E]
                logits.append(out["pred_logits"].numpy())
                boxes.append(out["pred_boxes"].numpy())
                store.append(out["pred_masks"].numpy())
                bar.update(len(frames))
        except BaseException:
            store.close()
            raise
        finally:
            bar.close()
        if frame_size is None:
            store.close()
            raise ValueError(f"video {video} contains no frames")
        all_logits = np.concatenate(logits, axis=1)  # [E, T, Q, K]
        num_frames = all_logits.shape[1]
        query_scores = (sums / num_frames).max(-1).values  # [E, Q]
        if self.query_selection == "video":
            queries = np.repeat(query_scores.argmax(-1).numpy()[:, None], num_frames, axis=1)
        else:
            queries = np.concatenate(
                [np.repeat(q[:, None], lg.shape[1], axis=1) for q, lg in zip(clip_queries, logits)], axis=1
            )
        fps = source.fps / self.frame_stride if source.fps else None
        return VideoSegmentation(
            source, self.clip_length, expressions, frame_size, all_logits, np.concatenate(boxes, axis=1), store,
            queries.astype(np.int64), query_scores.numpy().astype(np.float32), self.threshold, fps,
        )

    def segment(self, video: VideoInput, expressions: str | Sequence[str], progress: bool = False) -> SegmentationResult:
        """Masks, scores and boxes of every expression in every frame; see `stream` for the arguments."""
        with self.stream(video, expressions, progress=progress) as result:
            return result.collect()

    def _forward(self, frames: np.ndarray, expressions: list[str]) -> dict[str, torch.Tensor]:
        """One clip, all expressions: the backbone once, then one batched decode.

        Returns CPU tensors: pred_logits [E, t, Q, K], pred_boxes [E, t, Q, 4], pred_masks
        [E, t, Q, h/4, w/4] (B = 1 video, so the padded canvas is the resized frame itself).
        """
        with torch.inference_mode():
            out = self.model(self.preprocess(frames)[None], expressions, caption_videos=[0] * len(expressions))
        return {k: out[k].float().cpu() for k in ("pred_logits", "pred_boxes", "pred_masks")}
