"""The BIFIT model: ReferFormer with BVLI before the transformer and IFI inside the decoder."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..config import BifitConfig
from .backbone import ResNetBackbone, downsample_mask
from .bvli import BidirectionalVisionLanguageInteraction
from .mask_head import dynamic_mask_logits
from .pixel_decoder import CrossModalFPN
from .position_encoding import shared_sine_position_2d, sine_position_1d
from .text_encoder import FeatureResizer, TextEncoder
from .transformer import MLP, DeformableTransformer

__all__ = ["BifitModel", "VisualFeatures", "batch_videos"]

VideoInput = torch.Tensor | Sequence[torch.Tensor]


def batch_videos(videos: VideoInput, size_divisibility: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad videos bottom/right to a common canvas, as the official batching does.

    Args:
        videos: [B, T, 3, H, W] or a list of B tensors [T, 3, H_i, W_i].
        size_divisibility: round the canvas up to a multiple of this (the official training uses 32).
    Returns:
        frames [B, T, 3, H, W], padding mask [B, T, H, W] (True on padding), sizes [B, 2] (H_i, W_i).
    """
    if isinstance(videos, torch.Tensor):
        if videos.dim() != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos must have shape [B, T, 3, H, W], got {list(videos.shape)}")
        videos = list(videos)
    if not videos:
        raise ValueError("videos is empty")
    for i, video in enumerate(videos):
        if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[1] != 3:
            shape = list(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"video {i} must be a tensor [T, 3, H, W], got {shape}")
        if video.shape[0] != videos[0].shape[0]:
            raise ValueError(f"all videos need the same number of frames: video 0 has {videos[0].shape[0]}, "
                             f"video {i} has {video.shape[0]}")
        if not video.is_floating_point():
            raise ValueError(f"video {i} must be a float tensor (ImageNet-normalised), got {video.dtype}")
    t = videos[0].shape[0]
    h = max(v.shape[2] for v in videos)
    w = max(v.shape[3] for v in videos)
    if size_divisibility > 1:
        h = math.ceil(h / size_divisibility) * size_divisibility
        w = math.ceil(w / size_divisibility) * size_divisibility
    ref = videos[0]
    frames = ref.new_zeros((len(videos), t, 3, h, w))
    mask = torch.ones((len(videos), t, h, w), dtype=torch.bool, device=ref.device)
    for i, video in enumerate(videos):
        frames[i, :, :, : video.shape[2], : video.shape[3]].copy_(video)
        mask[i, :, : video.shape[2], : video.shape[3]] = False
    sizes = torch.tensor([[v.shape[2], v.shape[3]] for v in videos], device=ref.device)
    return frames, mask, sizes


@dataclass
class VisualFeatures:
    """Everything the model computes from pixels alone; shared by all expressions of a video.

    Frame-major tensors have leading dimension B*T (batch-major, then time).

    layer1: [B*T, C1, H/4, W/4] backbone stage 1 (the FPN's finest input).
    srcs: 4 x [B*T, C, h, w] input projections at strides 8, 16, 32, 64 (before BVLI).
    masks: 5 x [B*T, h, w] padding masks at strides 4, 8, 16, 32, 64.
    pos: 5 x [B*T, C, h, w] 2-D position encodings at the same strides.
    sizes: [B, 2] unpadded (H, W) of every video.
    num_frames: T.
    """

    layer1: torch.Tensor
    srcs: list[torch.Tensor]
    masks: list[torch.Tensor]
    pos: list[torch.Tensor]
    sizes: torch.Tensor
    num_frames: int

    @property
    def batch_size(self) -> int:
        return self.sizes.shape[0]

    def repeat(self, n: int) -> "VisualFeatures":
        """The same features for n copies of every video, copy-major ([video 0, ..., video B-1] n times)."""
        return self.select(torch.arange(self.batch_size, device=self.sizes.device).repeat(n))

    def select(self, video_index: Sequence[int] | torch.Tensor) -> "VisualFeatures":
        """Features of the videos `video_index` [N] (repeats allowed), in that order.

        Gradients of the copies add up in the shared features, so several expressions of one video
        can be trained with one backbone pass. Every video once, in order, returns `self` uncopied.
        """
        index = torch.as_tensor(video_index, device=self.sizes.device).long().reshape(-1)
        b, t = self.batch_size, self.num_frames
        if index.numel() == 0 or (index < 0).any() or (index >= b).any():
            raise ValueError(f"video_index must hold indices in [0, {b}), got {index.tolist()}")
        if index.numel() == b and torch.equal(index, torch.arange(b, device=index.device)):
            return self
        frames = (index[:, None] * t + torch.arange(t, device=index.device)).reshape(-1)

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x.index_select(0, frames.to(x.device))

        return VisualFeatures(
            pick(self.layer1), [pick(s) for s in self.srcs], [pick(m) for m in self.masks],
            [pick(p) for p in self.pos], self.sizes.index_select(0, index), t,
        )


class BifitModel(nn.Module):
    """BIFIT for referring video object segmentation.

    `model(videos, captions)` takes ImageNet-normalised videos ([B, T, 3, H, W] or a list of
    [T, 3, H_i, W_i]) and B captions and returns

    - `pred_logits` [B, T, Q, K],
    - `pred_boxes` [B, T, Q, 4] (cx, cy, w, h in [0, 1] of each unpadded frame),
    - `pred_masks` [B, T, Q, H/4, W/4] (mask logits at stride 4 of the padded canvas),
    - in training mode also `aux_outputs`, the same three for every earlier decoder layer.
    """

    def __init__(self, config: BifitConfig, text_encoder: TextEncoder) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_dim
        self.backbone = ResNetBackbone(config.backbone, config.backbone_norm, config.train_backbone_stem)
        self.text_encoder = text_encoder
        if config.freeze_text_encoder:
            for p in self.text_encoder.parameters():
                p.requires_grad_(False)
        self.resizer = FeatureResizer(text_encoder.hidden_size, d, dropout=0.1)

        chans = config.backbone_channels
        proj = [nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(config.proj_norm_groups, d)) for c in chans[1:]]
        proj.append(nn.Sequential(nn.Conv2d(chans[-1], d, 3, stride=2, padding=1),
                                  nn.GroupNorm(config.proj_norm_groups, d)))
        self.input_proj = nn.ModuleList(proj)
        for p in self.input_proj:
            nn.init.xavier_uniform_(p[0].weight, gain=1)
            nn.init.zeros_(p[0].bias)

        self.bvli = BidirectionalVisionLanguageInteraction(d, config.nheads)
        self.transformer = DeformableTransformer(
            d_model=d,
            nhead=config.nheads,
            num_encoder_layers=config.enc_layers,
            num_decoder_layers=config.dec_layers,
            num_ifi_layers=config.ifi_layers,
            dim_feedforward=config.dim_feedforward,
            dropout=config.dropout,
            num_feature_levels=config.num_feature_levels,
            enc_n_points=config.enc_n_points,
            dec_n_points=config.dec_n_points,
        )
        self.query_embed = nn.Embedding(config.num_queries, d)

        prior_bias = -math.log((1 - 0.01) / 0.01)
        self.class_embed = nn.ModuleList(nn.Linear(d, config.num_classes) for _ in range(config.dec_layers))
        self.bbox_embed = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(config.dec_layers))
        for head in self.class_embed:
            nn.init.constant_(head.bias, prior_bias)
        for i, head in enumerate(self.bbox_embed):
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
            if i == 0:
                nn.init.constant_(head.layers[-1].bias[2:], -2.0)

        self.pixel_decoder = CrossModalFPN(
            in_channels=[chans[0], d, d, d],
            conv_dim=d,
            mask_dim=config.mask_dim,
            dim_feedforward=config.dim_feedforward,
            nhead=config.nheads,
            dropout=config.dropout,
            sr_ratios=config.fpn_sr_ratios,
            norm_groups=config.fpn_norm_groups,
        )
        self.controller = MLP(d, d, config.num_dynamic_params, 3)
        for layer in self.controller.layers:
            nn.init.zeros_(layer.bias)
            nn.init.xavier_uniform_(layer.weight)
        # Reduced precision of eval forwards (None: exact float32); see `bifit.modeling.fast`.
        self.autocast_dtype: torch.dtype | None = None

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Trade training time for memory: with `enabled`, the deformable encoder's layers, the
        FPN's per-token halves and the ResNet's trained stages (the largest keepers of saved
        activations) keep only their inputs for the backward and compute the rest again in it, a few
        frames at a time (the chunks of the inference path). Without dropout, losses and gradients
        are those of the plain model up to rounding. With dropout, a chunk draws its own dropout
        masks, so the random numbers differ from a run without checkpointing (the recomputation
        itself draws the same ones again). Forwards without autograd are not affected."""
        self.backbone.activation_checkpointing = enabled
        self.transformer.activation_checkpointing = enabled
        self.pixel_decoder.activation_checkpointing = enabled

    @property
    def device(self) -> torch.device:
        return self.query_embed.weight.device

    @property
    def _reduced_precision(self) -> bool:
        """Fast inference is on: an eval-mode forward with `autocast_dtype` set."""
        return self.autocast_dtype is not None and not self.training

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to `autocast_dtype` in fast inference; otherwise nothing, so that a caller's own
        autocast (mixed-precision training) applies unchanged."""
        if not self._reduced_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ pixels
    def encode_video(
        self,
        videos: VideoInput,
        size_divisibility: int = 1,
        valid_indices: Sequence[int] | torch.Tensor | None = None,
    ) -> VisualFeatures:
        """Backbone, input projections, masks and position encodings: all that depends on pixels only.

        `valid_indices` (one frame index per video) keeps only that frame of every video after batching,
        as the official A2D/JHMDB training does (the clip then has T = 1).
        """
        with self._autocast():
            return self._encode_video(videos, size_divisibility, valid_indices)

    def _encode_video(
        self, videos: VideoInput, size_divisibility: int, valid_indices: Sequence[int] | torch.Tensor | None
    ) -> VisualFeatures:
        frames, pad_mask, sizes = batch_videos(videos, size_divisibility)
        b, t = frames.shape[:2]
        if valid_indices is not None:
            idx = torch.as_tensor(valid_indices, device=frames.device).long().reshape(-1)
            if idx.numel() != b or (idx < 0).any() or (idx >= t).any():
                raise ValueError(f"valid_indices must hold one frame index in [0, {t}) per video, got {idx.tolist()}")
            rows = torch.arange(b, device=frames.device)
            frames, pad_mask, t = frames[rows, idx][:, None], pad_mask[rows, idx][:, None], 1
        frames = frames.flatten(0, 1)
        pad_mask = pad_mask.flatten(0, 1)

        stages = self.backbone(frames)
        masks = [downsample_mask(pad_mask, s.shape[-2:]) for s in stages]
        d = self.config.hidden_dim
        pos = [shared_sine_position_2d(m, d // 2, s.dtype) for m, s in zip(masks, stages)]
        srcs = [proj(s) for proj, s in zip(self.input_proj[:3], stages[1:])]
        extra = self.input_proj[3](stages[-1])
        extra_mask = downsample_mask(pad_mask, extra.shape[-2:])
        srcs.append(extra)
        masks.append(extra_mask)
        pos.append(shared_sine_position_2d(extra_mask, d // 2, extra.dtype))
        return VisualFeatures(stages[0], srcs, masks, pos, sizes.to(frames.device), t)

    # ------------------------------------------------------------------ text
    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Resized word features [B, L, C], padding mask [B, L] and 1-D position encoding [B, L, C]."""
        words, word_mask = self.text_encoder(list(captions), self.device)
        words = self.resizer(words)
        return words, word_mask, sine_position_1d(word_mask, self.config.hidden_dim).to(words.dtype)

    # ------------------------------------------------------------------ the rest
    def predict_from_features(
        self,
        visual: VisualFeatures,
        captions: Sequence[str],
        caption_videos: Sequence[int] | torch.Tensor | None = None,
    ) -> dict:
        """Everything after the pixels: BVLI, transformer with IFI, heads, FPN and mask head.

        `caption_videos` [N] names the video of `visual` each of the N captions belongs to (default:
        caption i to video i); the outputs have N rows, one per caption.

        A caption's decode depends on its own video and words only. Without autograd in eval mode the
        captions are therefore decoded one at a time, so that the memory of the decode is one
        caption's whatever N is (36 frames x 4 expressions at 360 x 640: a few GB less); the outputs
        are those of the batched decode up to float rounding.
        """
        if caption_videos is None:
            if len(captions) != visual.batch_size:
                raise ValueError(
                    f"got {visual.batch_size} videos but {len(captions)} captions; pass one caption per video"
                )
            caption_videos = range(visual.batch_size)
        if isinstance(caption_videos, torch.Tensor):
            caption_videos = caption_videos.reshape(-1).tolist()
        caption_videos = [int(v) for v in caption_videos]
        if len(caption_videos) != len(captions):
            raise ValueError(f"got {len(captions)} captions but {len(caption_videos)} caption_videos entries")
        with self._autocast():
            if self.training or torch.is_grad_enabled() or len(captions) == 1:
                return self._decode(visual.select(caption_videos), captions)
            parts = [self._decode(visual.select([v]), [c]) for v, c in zip(caption_videos, captions)]
            return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def _decode(self, visual: VisualFeatures, captions: Sequence[str]) -> dict:
        b, t = visual.batch_size, visual.num_frames
        words, word_mask, word_pos = self.encode_text(captions)
        words_seq, word_pos_seq = words.transpose(0, 1), word_pos.transpose(0, 1)

        fused_words = words_seq
        srcs = []
        for src, mask, pos in zip(visual.srcs, visual.masks[1:], visual.pos[1:]):
            _, c, h, w = src.shape
            seq = lambda z: z.unflatten(0, (b, t)).permute(1, 3, 4, 0, 2).reshape(t * h * w, b, c)  # noqa: E731
            vision, fused_words = self.bvli.fuse_level(
                seq(src), mask.reshape(b, t * h * w), seq(pos), fused_words, words_seq, word_mask, word_pos_seq
            )
            srcs.append(vision.reshape(t, h, w, b, c).permute(3, 0, 4, 1, 2).flatten(0, 1))
        sentence = self.bvli.sentence_pool(fused_words.transpose(0, 1))

        q = self.config.num_queries
        tgt = sentence[:, None, None, :].expand(b, t, q, -1).reshape(b * t, q, -1)
        out = self.transformer(
            srcs, visual.masks[1:], visual.pos[1:], tgt, self.query_embed.weight, t, self.bbox_embed
        )
        del srcs  # the fused maps are in the memory now; the FPN's peak need not hold them too
        n_layers = out.hs.shape[0]
        logits = torch.stack([self.class_embed[i](out.hs[i]) for i in range(n_layers)])
        logits = logits.unflatten(1, (b, t))
        boxes = out.boxes.unflatten(1, (b, t))

        mask_features = self.pixel_decoder(
            [visual.layer1] + out.memory_maps(3),
            visual.masks[:4],
            visual.pos[:4],
            words_seq,
            word_mask,
            word_pos_seq,
            t,
        ).unflatten(0, (b, t))
        # Eval needs only the last layer's masks; training supervises every layer.
        mask_layers = range(n_layers) if self.training else [n_layers - 1]
        masks = {i: self._masks(mask_features, out.hs[i].unflatten(0, (b, t)), boxes[i], visual.sizes) for i in mask_layers}

        result = {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "pred_masks": masks[n_layers - 1]}
        if self.training and self.config.aux_loss:
            result["aux_outputs"] = [
                {"pred_logits": logits[i], "pred_boxes": boxes[i], "pred_masks": masks[i]} for i in range(n_layers - 1)
            ]
        return result

    def _masks(self, mask_features: torch.Tensor, hs: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Mask logits [B, T, Q, H/4, W/4] of one decoder layer (hs [B, T, Q, C], boxes [B, T, Q, 4])."""
        cfg = self.config
        reduced = self._reduced_precision
        # float32 even in fast inference: the relative coordinates reach hundreds of pixels.
        full = (lambda x: x.float()) if reduced else (lambda x: x)  # noqa: E731
        with torch.autocast(self.device.type, enabled=False) if reduced else contextlib.nullcontext():
            return dynamic_mask_logits(
                full(mask_features),
                self.controller(full(hs)),
                # The official head reads the detached references, so no gradient flows to the boxes here.
                full(boxes[..., :2].detach()),
                sizes,
                cfg.dynamic_weight_nums,
                cfg.dynamic_bias_nums,
                cfg.dynamic_mask_channels,
                rel_coord=cfg.rel_coord,
            )

    def forward(
        self,
        videos: VideoInput,
        captions: Sequence[str],
        *,
        size_divisibility: int = 1,
        valid_indices: Sequence[int] | torch.Tensor | None = None,
        caption_videos: Sequence[int] | torch.Tensor | None = None,
    ) -> dict:
        """See the class docstring. `size_divisibility=32` reproduces the official training batching.

        `caption_videos` [N] names the video of each of N captions (default: caption i belongs to video
        i); the backbone then runs once per video however many captions share it, and the outputs
        have N rows, one per caption.
        """
        if isinstance(captions, str):
            raise ValueError("captions must be a list of strings, one per video, not a single string")
        visual = self.encode_video(videos, size_divisibility, valid_indices)
        return self.predict_from_features(visual, captions, caption_videos)
