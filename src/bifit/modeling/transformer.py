"""Deformable transformer: multi-scale deformable encoder, and a decoder with iterative box
refinement and IFI (inter-frame interaction) after every layer."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .chunks import chunk_size, in_chunks
from .deformable_attention import MultiScaleDeformableAttention

__all__ = ["DeformableTransformer", "TransformerOutput", "inverse_sigmoid", "MLP"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Inverse of sigmoid with the official clamping (to [0, 1], then away from 0 and 1 by eps)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FeedForward(nn.Module):
    """Post-norm FFN block: norm(x + Linear(dropout(relu(Linear(x)))))."""

    # Rows per chunk when running without autograd: the hidden layer is 8x wider than the model (at
    # stride 4 of a 6-frame clip it alone would take ~0.7 GB); 2048 rows keep it at 16 MB.
    inference_chunk_rows = 2048

    def __init__(self, d_model: int, d_ffn: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout_inner = nn.Dropout(dropout)
        self.dropout_out = nn.Dropout(dropout)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout_out(self.linear2(self.dropout_inner(F.relu(self.linear1(x), inplace=True))))

    def forward(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        if torch.is_grad_enabled():
            return norm(x + self._residual(x))
        rows = x.reshape(-1, x.shape[-1])

        def block(part: slice) -> torch.Tensor:
            chunk = rows[part]
            return norm(chunk + self._residual(chunk))

        return in_chunks(block, rows.shape[0], self.inference_chunk_rows).reshape(x.shape)


class DeformableEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ffn, dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):  # noqa: ANN001
        """src, pos: [N, S, C]; reference_points: [N, S, L, 2]; spatial_shapes: [(h, w)] -> [N, S, C]."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask=padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        return self.ffn(src, self.norm2)


class DeformableDecoderLayer(nn.Module):
    """Self-attention -> norm2, deformable cross-attention -> norm1, FFN -> norm3 (official order and names)."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ffn, dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, padding_mask):  # noqa: ANN001
        """tgt, query_pos: [N, Q, C]; reference_points: [N, Q, L, 2 or 4]; memory: [N, S, C] -> [N, Q, C]."""
        q = (tgt + query_pos).transpose(0, 1)
        attended = self.self_attn(q, q, tgt.transpose(0, 1), need_weights=False)[0].transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(attended))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, padding_mask=padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attended))
        return self.ffn(tgt, self.norm3)


class InterFrameInteraction(nn.Module):
    """IFI: a post-norm transformer encoder layer over all T x Q queries of a clip."""

    def __init__(self, d_model: int, nhead: int, d_ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ffn, dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, queries: torch.Tensor, num_frames: int) -> torch.Tensor:
        """queries: [B*T, Q, C] (batch-major) -> [B*T, Q, C], every query having seen the whole clip."""
        bt, q, c = queries.shape
        # Sequence order (t, q), as the official rearrangement.
        x = queries.reshape(bt // num_frames, num_frames * q, c).transpose(0, 1)
        attended = self.self_attn(x, x, x, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attended))
        x = self.ffn(x, self.norm2)
        return x.transpose(0, 1).reshape(bt, q, c)


@dataclass
class TransformerOutput:
    """What the deformable transformer returns.

    hs: [L_dec, B*T, Q, C] decoder output of every layer (after IFI).
    boxes: [L_dec, B*T, Q, 4] refined boxes (cxcywh in [0, 1]) of every layer, differentiable.
    memory: [B*T, S, C] encoder output over all levels.
    spatial_shapes: [(h, w)] per level.
    """

    hs: torch.Tensor
    boxes: torch.Tensor
    memory: torch.Tensor
    spatial_shapes: list[tuple[int, int]]

    def memory_maps(self, num_levels: int) -> list[torch.Tensor]:
        """The first `num_levels` levels of the memory as maps [B*T, C, h, w]."""
        maps, start = [], 0
        n, _, c = self.memory.shape
        for h, w in self.spatial_shapes[:num_levels]:
            maps.append(self.memory[:, start : start + h * w].transpose(1, 2).reshape(n, c, h, w))
            start += h * w
        return maps


def _valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """mask: [N, h, w] (True = padding) -> [N, 2] fraction of valid columns and rows (x, y)."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


def _encoder_reference_points(spatial_shapes, valid_ratios: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Pixel centres of every level, normalised by the valid size -> [N, S, L, 2]."""
    device = valid_ratios.device
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


class DeformableEncoder(nn.Module):
    def __init__(self, layer: DeformableEncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = _clones(layer, num_layers)


class DeformableDecoder(nn.Module):
    def __init__(self, layer: DeformableDecoderLayer, ifi: InterFrameInteraction, num_layers: int, num_ifi: int) -> None:
        super().__init__()
        self.layers = _clones(layer, num_layers)
        # One IFI stack shared by every decoder layer, as released (`query_enc_layers` = 1).
        self.ifi_layers = _clones(ifi, num_ifi)


class DeformableTransformer(nn.Module):
    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        num_ifi_layers: int = 1,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.encoder = DeformableEncoder(
            DeformableEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points),
            num_encoder_layers,
        )
        self.decoder = DeformableDecoder(
            DeformableDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points),
            InterFrameInteraction(d_model, nhead, dim_feedforward, dropout),
            num_decoder_layers,
            num_ifi_layers,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)
        # Under autograd, keep only each encoder layer's input and run the layer again in the backward
        # (see `BifitModel.set_activation_checkpointing`).
        self.activation_checkpointing = False
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    # Tokens per chunk of frames when the encoder runs without autograd (see `_encode`).
    inference_chunk_tokens = 8192

    def _encode(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        padding_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The encoder layers over `src`, `pos` [N, S, C] (N = B*T frames) -> memory [N, S, C].

        A frame's tokens attend to that frame's maps only, so without autograd the frames run through
        all layers a few at a time, the intermediate tensors of one layer sized by a chunk instead of
        the clip (at 6 x 360 x 640, ~30 MB each instead of ~180 MB). The results are the same.

        With `activation_checkpointing` under autograd, a layer's tensors are not kept for the
        backward but computed again in it from the layer's input (5 x 360 x 640: 26 MB kept per layer
        instead of ~550 MB); the frames then go in chunks too, so that a recomputation holds one
        chunk's tensors.
        """
        n, s, _ = src.shape
        recompute = self.activation_checkpointing and torch.is_grad_enabled()

        def layers(frames: slice) -> torch.Tensor:
            x = src[frames]
            for layer in self.encoder.layers:
                args = (x, pos[frames], reference_points[frames], spatial_shapes, padding_mask[frames])
                x = checkpoint(layer, *args, use_reentrant=False) if recompute else layer(*args)
            return x

        return in_chunks(layers, n, chunk_size(n, self.inference_chunk_tokens, s, recompute))

    def forward(
        self,
        srcs: list[torch.Tensor],
        masks: list[torch.Tensor],
        pos_embeds: list[torch.Tensor],
        tgt: torch.Tensor,
        query_embed: torch.Tensor,
        num_frames: int,
        box_heads: nn.ModuleList,
    ) -> TransformerOutput:
        """
        Args:
            srcs, pos_embeds: per level [B*T, C, h, w]; masks: per level [B*T, h, w] (True = padding).
            tgt: [B*T, Q, C] query content (the sentence feature); query_embed: [Q, C] query position.
            num_frames: T (IFI mixes the queries of the T frames of each video).
            box_heads: one box MLP per decoder layer (iterative refinement).
        """
        spatial_shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)],
            1,
        )
        valid_ratios = torch.stack([_valid_ratio(m) for m in masks], 1)

        enc_refs = _encoder_reference_points(spatial_shapes, valid_ratios)
        memory = self._encode(src_flat, pos_flat, enc_refs, spatial_shapes, mask_flat)

        n = memory.shape[0]
        query_pos = query_embed.unsqueeze(0).expand(n, -1, -1)
        reference = self.reference_points(query_pos).sigmoid()
        output = tgt
        hs, boxes = [], []
        for lid, layer in enumerate(self.decoder.layers):
            if reference.shape[-1] == 4:
                ref_input = reference[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_input = reference[:, :, None] * valid_ratios[:, None]
            output = layer(output, query_pos, ref_input, memory, spatial_shapes, mask_flat)
            for ifi in self.decoder.ifi_layers:
                output = ifi(output, num_frames)
            delta = box_heads[lid](output)
            if reference.shape[-1] == 4:
                box = (delta + inverse_sigmoid(reference)).sigmoid()
            else:
                # Layer 0 starts from 2-d points: only the centre gets the reference offset.
                box = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
            hs.append(output)
            boxes.append(box)
            reference = box.detach()
        return TransformerOutput(torch.stack(hs), torch.stack(boxes), memory, spatial_shapes)
