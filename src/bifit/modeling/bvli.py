"""BVLI: bidirectional vision-language interaction before the transformer."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiplicativeCrossAttention", "SentencePool", "BidirectionalVisionLanguageInteraction"]


class MultiplicativeCrossAttention(nn.Module):
    """`x * MHA(q = x, k = memory + pos, v = memory)`: gating without residual or norm (official fusion)."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_padding_mask: torch.Tensor | None = None,
        memory_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [Lx, B, C]; memory, memory_pos: [Lm, B, C]; memory_padding_mask: [B, Lm] -> [Lx, B, C]."""
        key = memory if memory_pos is None else memory + memory_pos
        attended = self.multihead_attn(x, key, memory, key_padding_mask=memory_padding_mask, need_weights=False)[0]
        return x * attended


class SentencePool(nn.Module):
    """Sentence feature = tanh(Linear(first token of the fused words))."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """words: [B, L, C] -> [B, C]."""
        return torch.tanh(self.dense(words[:, 0]))


class BidirectionalVisionLanguageInteraction(nn.Module):
    """Per feature level: words attend to the clip's visual tokens (cumulatively across levels), and
    visual tokens attend to the *initial* words. The sentence feature is pooled from the final words."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.text_from_vision = MultiplicativeCrossAttention(d_model, nhead)
        self.vision_from_text = MultiplicativeCrossAttention(d_model, nhead)
        self.sentence_pool = SentencePool(d_model)

    def fuse_level(
        self,
        vision: torch.Tensor,
        vision_mask: torch.Tensor,
        vision_pos: torch.Tensor,
        words: torch.Tensor,
        initial_words: torch.Tensor,
        word_mask: torch.Tensor,
        word_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One level.

        Args:
            vision, vision_pos: [T*h*w, B, C] tokens of a clip; vision_mask: [B, T*h*w].
            words: [L, B, C] words fused with the previous levels; initial_words: [L, B, C].
            word_mask: [B, L]; word_pos: [L, B, C].
        Returns:
            (fused vision [T*h*w, B, C], updated words [L, B, C]).
        """
        words = self.text_from_vision(words, vision, vision_mask, vision_pos)
        vision = self.vision_from_text(vision, initial_words, word_mask, word_pos)
        return vision, words
