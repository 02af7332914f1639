"""Cross-modal FPN: fuses encoder memory (8x-32x) and backbone layer1 (4x) with the words, top-down,
into stride-4 mask features."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .chunks import chunk_size, in_chunks
from .transformer import FeedForward

__all__ = ["CrossModalFPN", "CrossModalBlock", "ConvNorm"]


class ConvNorm(nn.Module):
    """Conv (no bias) -> GroupNorm, optionally ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, groups: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(groups, out_ch)
        self.relu = relu
        # Caffe2 "xavier fill" as the official code: uniform with gain 1 over fan-in.
        nn.init.kaiming_uniform_(self.conv.weight, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        # In place: the norm's backward needs its input, not its output.
        return F.relu(x, inplace=True) if self.relu else x


class CrossModalBlock(nn.Module):
    """Self-attention over the clip's tokens with spatial reduction, cross-attention to the words, FFN
    (post-norm; official `VisionLanguageBlock`).

    It runs in two steps, `attend_clip` (the only one that mixes frames) and `finish` (token by token),
    so that `CrossModalFPN` can finish a few frames at a time without autograd."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, sr_ratio: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.sr_ratio = sr_ratio

    # Tokens per chunk of frames for the per-token part of the block without autograd (see CrossModalFPN).
    inference_chunk_tokens = 16384

    def attend_clip(self, x: torch.Tensor, x_mask: torch.Tensor, x_pos: torch.Tensor) -> torch.Tensor:
        """The block's first step, the only one that mixes frames: self-attention over all T x sh x sw
        tokens of a clip at 1/sr_ratio of the resolution. x, x_pos [B, T, C, h, w], x_mask [B, T, h, w]
        -> [B, T, C, sh, sw]."""
        b, t, c, h, w = x.shape
        if self.sr_ratio > 1:
            size = (int(h / self.sr_ratio), int(w / self.sr_ratio))
            # Nearest resizing picks pixels, so resizing x and x_pos apart equals resizing their sum,
            # without a full-resolution sum.
            v = F.interpolate(x.flatten(0, 1), size=size, mode="nearest").unflatten(0, (b, t))
            qk = v + F.interpolate(x_pos.flatten(0, 1), size=size, mode="nearest").unflatten(0, (b, t))
            mask = F.interpolate(x_mask.flatten(0, 1)[None].float(), size=size, mode="nearest")[0].bool()
            mask = mask.unflatten(0, (b, t))
        else:
            qk, v, mask = x + x_pos, x, x_mask
        sh, sw = qk.shape[-2:]
        qk_seq = qk.permute(1, 3, 4, 0, 2).reshape(t * sh * sw, b, c)
        v_seq = v.permute(1, 3, 4, 0, 2).reshape(t * sh * sw, b, c)
        attended = self.self_attn(qk_seq, qk_seq, v_seq, key_padding_mask=mask.reshape(b, -1), need_weights=False)[0]
        return attended.reshape(t, sh, sw, b, c).permute(3, 0, 4, 1, 2)

    def _upsample(self, attended: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[B, t, C, sh, sw] -> [B, t, C, h, w] (bilinear; nothing to do without spatial reduction)."""
        if self.sr_ratio == 1:
            return attended
        b, t = attended.shape[:2]
        return F.interpolate(attended.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False).unflatten(0, (b, t))

    def finish(
        self,
        x: torch.Tensor,
        attended: torch.Tensor,
        x_pos: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        word_pos: torch.Tensor,
    ) -> torch.Tensor:
        """The rest of the block, token by token, for any subset of frames: residual and norm after the
        self-attention, cross-attention to the words, FFN. x, x_pos [B, t, C, h, w] and `attend_clip`'s
        output for the same frames [B, t, C, sh, sw]; words, word_pos [L, B, C], word_mask [B, L]
        -> [B, t, C, h, w]."""
        b, t, c, h, w = x.shape
        attended = self._upsample(attended, h, w)
        seq = lambda z: z.permute(1, 3, 4, 0, 2).reshape(t * h * w, b, c)  # noqa: E731
        tgt = self.norm1(seq(x) + self.dropout1(seq(attended)))
        cross = self.multihead_attn(
            tgt + seq(x_pos), words + word_pos, words, key_padding_mask=word_mask, need_weights=False
        )[0]
        tgt = self.norm2(tgt + self.dropout2(cross))
        tgt = self.ffn(tgt, self.norm3)
        return tgt.reshape(t, h, w, b, c).permute(3, 0, 4, 1, 2)


class CrossModalFPN(nn.Module):
    """Levels are indexed from fine to coarse: 0 = stride 4 (backbone layer1), 1..3 = strides 8..32
    (encoder memory)."""

    def __init__(
        self,
        in_channels: list[int],
        conv_dim: int,
        mask_dim: int,
        dim_feedforward: int,
        nhead: int,
        dropout: float,
        sr_ratios: tuple[int, ...],
        norm_groups: int,
    ) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvNorm(c, conv_dim, 1, norm_groups, relu=False) for c in in_channels)
        self.output_convs = nn.ModuleList(
            ConvNorm(conv_dim, conv_dim, 3, norm_groups, relu=True) for _ in in_channels
        )
        self.blocks = nn.ModuleList(
            CrossModalBlock(conv_dim, nhead, dim_feedforward, dropout, sr) for sr in sr_ratios
        )
        for block in self.blocks:
            for p in block.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)
        # Under autograd, keep only the inputs of each level's per-token half and run it again in the
        # backward (see `BifitModel.set_activation_checkpointing`).
        self.activation_checkpointing = False

    def _finish_level(
        self,
        lvl: int,
        x: torch.Tensor,
        attended: torch.Tensor,
        pos: torch.Tensor,
        above: torch.Tensor | None,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        word_pos: torch.Tensor,
        frames: slice,
    ) -> torch.Tensor:
        """Level `lvl` after its block's self-attention, for `frames` of the clip: the block's per-token
        half, the top-down sum with the coarser level's output `above` [B, T, C, h', w'] (None at the
        coarsest), the output convolution and, at stride 4, the mask-feature convolution.
        x, pos [B, T, C, h, w]; attended [B, T, C, sh, sw] -> [B, t, C or mask_dim, h, w]."""
        b, _, _, h, w = x.shape
        out = self.blocks[lvl].finish(x[:, frames], attended[:, frames], pos[:, frames], words, word_mask, word_pos)
        out = out.flatten(0, 1)
        if above is not None:
            top_down = F.interpolate(above[:, frames].flatten(0, 1), size=(h, w), mode="nearest")
            # In place without autograd: out is the block's fresh output, and one map fewer is alive.
            out = out + top_down if torch.is_grad_enabled() else out.add_(top_down)
            del top_down
        out = self.output_convs[lvl](out)
        if lvl == 0:
            out = self.mask_features(out)
        return out.unflatten(0, (b, -1))

    def forward(
        self,
        features: list[torch.Tensor],
        masks: list[torch.Tensor],
        pos: list[torch.Tensor],
        words: torch.Tensor,
        word_mask: torch.Tensor,
        word_pos: torch.Tensor,
        num_frames: int,
    ) -> torch.Tensor:
        """
        Args:
            features: [layer1 [B*T, C1, H/4, W/4], memory at 8x, 16x, 32x [B*T, C, h, w]].
            masks, pos: the matching padding masks [B*T, h, w] and position encodings [B*T, C, h, w].
            words, word_pos: [L, B, C] (the resized words, not the BVLI-fused ones); word_mask: [B, L].
        Returns:
            mask features [B*T, mask_dim, H/4, W/4].

        Without autograd, everything of a level after its block's self-attention (the block's per-token
        half, the top-down sum, the output convolution and, at stride 4, the mask-feature convolution)
        runs a few frames at a time: at stride 4 of 6 x 360 x 640 each full-resolution map is 15 MB for
        a chunk instead of 88 MB for the clip, and only the 8-channel mask features are kept whole.

        With `activation_checkpointing` under autograd, that part of each level keeps only its inputs
        for the backward and is computed again in it (at stride 4 of 5 x 360 x 640, ~150 MB kept
        instead of ~1.3 GB), in the same frame chunks, so that a recomputation holds one chunk's tensors.
        """
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        y = None
        for lvl in reversed(range(len(features))):
            unflat = lambda z: z.unflatten(0, (-1, num_frames))  # noqa: E731
            block = self.blocks[lvl]
            x = unflat(self.lateral_convs[lvl](features[lvl]))
            mask, pos_lvl = unflat(masks[lvl]), unflat(pos[lvl])
            attended = block.attend_clip(x, mask, pos_lvl)
            b, _, _, h, w = x.shape
            # Bound now, not looked up when called: a recomputation in the backward comes after the loop.
            level = functools.partial(self._finish_level, lvl, x, attended, pos_lvl, y, words, word_mask, word_pos)
            if recompute:
                level = functools.partial(checkpoint, level, use_reentrant=False)
            chunk = chunk_size(num_frames, block.inference_chunk_tokens, b * h * w, recompute)
            y = in_chunks(level, num_frames, chunk, dim=1)
        return y.flatten(0, 1)
