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
model decodes the E expressions on those shared features, one at a time without autograd (at most
`expressions_per_pass` per call). Results equal running each expression alone up to float
rounding. Resizing, normalisation, the clip pass, query selection and postprocessing are those of
the clip core (`bifit.inference.core`); this module reads the video, runs the clips and collects
the results (`bifit.inference.results`).

Long videos (`clip_length=N`): the video is processed in clips of N frames. IFI (the inter-frame
query interaction) then attends among the frames of one clip only, and BVLI and the cross-modal
FPN see one clip at a time, so results differ from whole-video inference. The referred object is
still chosen once for the whole video (`bifit.inference.core.QueryVote`): per-query sums of
sigmoid scores are accumulated over all clips and ONE query index is picked from their mean over
all frames; the official Ref-DAVIS script instead picks the query per 24-frame clip (`query_selection="clip"`).
Memory stays flat: frames are decoded clip by clip (twice for video files: once to run the model,
once to hand out results), and the stride-4 mask logits of all queries (needed until the query is
known) go to a temporary directory, not to RAM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.frame_sizes import EVAL_SHORT_SIZE, MAX_LONG_SIDE, FrameSizeError, model_input_hw
from ..data.video import ArraySource, FrameSource, open_frame_source
from ..devices import resolve_device
from ..modeling.bifit import BifitModel
from ..modeling.checkpoint import check_checkpoint_kind, load_model
from ..modeling.fast import prepare_fast_inference
from ..modeling.text_encoder import check_expressions
from .core import QuerySelection, QueryVote, check_count, preprocess_frames, segment_clip, select_queries
from .results import LogitStore, SegmentationResult, VideoSegmentation

__all__ = ["Segmenter", "check_expressions"]

VideoInput = str | os.PathLike[str] | np.ndarray | torch.Tensor




def _as_uint8_video(video: np.ndarray | torch.Tensor) -> np.ndarray:
    array = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.ndim == 3:
        array = array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"a video array must be uint8 [T, H, W, 3] (RGB), got {array.dtype} {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("the video has no frames")
    return array


def _describe(video: VideoInput) -> str:
    """How messages name a video: its path, or the shape of an array."""
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return f"video array of shape {tuple(video.shape)}"
    return str(video)


def _open_frames(video: VideoInput, stride: int, stream: bool) -> FrameSource:
    """A frame source for a path (video file, frame folder, image) or a uint8 array, with the stride applied."""
    if isinstance(video, (np.ndarray, torch.Tensor)):
        frames = _as_uint8_video(video)[::stride]
        return ArraySource(frames, [f"{i:05d}" for i in range(0, stride * len(frames), stride)], None)
    return open_frame_source(video, stride, stream)


# ---------------------------------------------------------------------------------------- segmenter
class Segmenter:
    """Referring video object segmentation of videos, frame folders, images or uint8 arrays.

    Args:
        checkpoint_or_model: a `BifitModel`, a bifit checkpoint directory or an official `.pth` file.
        text_encoder: for an official `.pth`: Hugging Face id or local directory of its text
            encoder's tokenizer and config (default `roberta-base`); ignored otherwise.
        device: where to run (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`; see `bifit.devices`); None keeps a
            given model's device and means `auto` for a checkpoint.
        clip_length: process the video in clips of this many frames (bounded memory); None runs the
            whole video as one clip, as the official Ref-YouTube-VOS inference does.
        frame_stride: segment every k-th frame only.
        short_side: frames are resized so that their shorter side has this length (official 360);
            None keeps the original size.
        max_long_side: refuse frames whose model input (after resizing) has a longer side above this
            many pixels (`FrameSizeError`, before the model runs); None: no limit. Frames of normal
            aspect ratios are far below the default (4096); it stops a 4000x2 image from becoming a
            720000x360 input.
        threshold: mask probability threshold (official 0.5).
        query_selection: "video" picks one query slot from the mean score over all frames (the
            official rule for one clip, extended to all clips); "clip" picks one per clip, as the
            official Ref-DAVIS script does.
        expressions_per_pass: hand at most this many expressions to one decode call on a clip's shared
            backbone features (the model decodes them one at a time; this bounds how many expressions'
            all-query outputs are held at once); None: all in one call.
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
        max_long_side: int | None = MAX_LONG_SIDE,
        expressions_per_pass: int | None = None,
        fast: bool = False,
    ) -> None:
        check_count(clip_length, "clip_length")
        check_count(expressions_per_pass, "expressions_per_pass")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
        if max_long_side is not None and max_long_side < 1:
            raise ValueError(f"max_long_side must be a positive number of pixels, got {max_long_side}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        if query_selection not in ("video", "clip"):
            raise ValueError(f"query_selection must be 'video' or 'clip', got {query_selection!r}")
        if isinstance(checkpoint_or_model, BifitModel):
            model = checkpoint_or_model if device is None else checkpoint_or_model.to(resolve_device(device))
        else:
            # Resolved before anything is read, so that a bad device fails at once.
            resolved = resolve_device(device)
            path = Path(checkpoint_or_model)
            check_checkpoint_kind(path)
            model = load_model(path, text_encoder=str(text_encoder or "roberta-base"), device=resolved)
        self.model = prepare_fast_inference(model) if fast else model.eval()
        # What is read and how it is resized:
        self.frame_stride, self.short_side, self.max_long_side = frame_stride, short_side, max_long_side
        # How the model runs over it, and how its outputs become results:
        self.clip_length, self.expressions_per_pass = clip_length, expressions_per_pass
        self.query_selection, self.threshold = query_selection, threshold

    @property
    def device(self) -> torch.device:
        return self.model.device

    def check_expressions(self, expressions: str | Sequence[str]) -> list[str]:
        """`check_expressions` with the model's text encoder: each expression must also fit its maximum length."""
        return check_expressions(expressions, self.model.text_encoder)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [t, H, W, 3] -> float32 [t, 3, h, w] on the model's device: resized (shorter side
        `short_side`, PIL bilinear) and ImageNet-normalised (`bifit.inference.core.preprocess_frames`).

        Raises:
            FrameSizeError: the resized frames' longer side exceeds `max_long_side`.
        """
        return preprocess_frames(frames, self.short_side, self.max_long_side).to(self.device)

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
                for an empty or too long expression; `FrameSizeError` for frames whose model input
                would exceed `max_long_side`.
        """
        expressions = self.check_expressions(expressions)
        source = _open_frames(video, self.frame_stride, stream=self.clip_length is not None)
        store = LogitStore(spill=self.clip_length is not None)
        vote = QueryVote()
        logits, boxes, clip_queries = [], [], []
        frame_size: tuple[int, int] | None = None
        bar = tqdm(total=source.total, unit="frame", desc="segmenting", disable=not progress)
        try:
            for frames, _ in source.clips(self.clip_length):
                if frame_size is None:
                    frame_size = frames.shape[1:3]
                    try:
                        model_input_hw(*frame_size, self.short_side, self.max_long_side)
                    except FrameSizeError as exc:
                        raise FrameSizeError(f"{_describe(video)}: {exc}") from None
                elif frames.shape[1:3] != frame_size:
                    raise ValueError(f"frames change size within the video: {frame_size} then {frames.shape[1:3]}")
                out = self._forward(frames, expressions)
                vote.add(out["pred_logits"])
                clip_queries.append(select_queries(out["pred_logits"]).numpy())  # [E]
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
        if self.query_selection == "video":
            queries = np.repeat(vote.select().numpy()[:, None], num_frames, axis=1)
        else:
            queries = np.concatenate(
                [np.repeat(q[:, None], lg.shape[1], axis=1) for q, lg in zip(clip_queries, logits)], axis=1
            )
        return VideoSegmentation(
            source=source,
            clip_length=self.clip_length,
            expressions=expressions,
            frame_size=frame_size,
            logits=all_logits,
            boxes=np.concatenate(boxes, axis=1),
            mask_logits=store,
            queries=queries.astype(np.int64),
            query_scores=vote.scores().numpy().astype(np.float32),
            threshold=self.threshold,
            fps=source.fps / self.frame_stride if source.fps else None,
        )

    def segment(self, video: VideoInput, expressions: str | Sequence[str], progress: bool = False) -> SegmentationResult:
        """Masks, scores and boxes of every expression in every frame; see `stream` for the arguments."""
        with self.stream(video, expressions, progress=progress) as result:
            return result.collect()

    def _forward(self, frames: np.ndarray, expressions: list[str]) -> dict[str, torch.Tensor]:
        """One clip, all expressions, through the clip core: the backbone once, then batched decoding.

        Returns CPU float32 tensors of every query: pred_logits [E, t, Q, K], pred_boxes [E, t, Q, 4],
        pred_masks [E, t, Q, h/4, w/4].
        """
        pred = segment_clip(self.model, self.preprocess(frames), expressions, self.expressions_per_pass,
                            keep_all_queries=True)
        return {"pred_logits": pred.logits.float().cpu(), "pred_boxes": pred.boxes.float().cpu(),
                "pred_masks": pred.all_mask_logits.float().cpu()}
