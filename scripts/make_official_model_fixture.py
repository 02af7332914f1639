"""Run the official BIFIT model on CPU with seeded weights and save its outputs as a test fixture.

The fixture lets our re-implementation be checked number-for-number against the official code
(LANMNG/BIFIT) without shipping its weights: every floating-point tensor of the official state dict
is filled by `tests/seeded_weights.seeded_tensor(key, shape)`, so a model with the same key names
and shapes gets identical weights.

The official code needs transformers 4.x (it calls `tokenizer.batch_encode_plus`), so run this
script in an environment where transformers 4.x shadows the project's transformers 5, e.g.::

    pip install --target /tmp/tf4 --no-deps "transformers==4.46.*" "tokenizers>=0.20,<0.21" \
        "huggingface_hub<1.0" requests urllib3 idna charset_normalizer certifi
    PYTHONPATH=/tmp/tf4 python scripts/make_official_model_fixture.py \
        --official-root /path/to/BIFIT --output tests/fixtures/official_model

Nothing of the official code is copied: it is imported from `--official-root` at runtime, with
three runtime patches (a pure-PyTorch deformable attention instead of the CUDA extension, a
ResNet-50 without downloaded weights, and a tiny local RoBERTa instead of `roberta-base`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "tests" / "fixtures" / "official_model"
DEFAULT_TOKENIZER_DIR = REPO_ROOT / "tests" / "fixtures" / "tiny_roberta"

# Released configuration (README of LANMNG/BIFIT); every other option stays at opts.py defaults.
RELEASED_FLAGS = ["--with_box_refine", "--binary", "--freeze_text_encoder", "--backbone", "resnet50", "--masks"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_FRAMES = 2

# (name, [(H, W) per video], [caption per video])
CASES: list[tuple[str, list[tuple[int, int]], list[str]]] = [
    ("b1", [(64, 96)], ["the man in the red shirt riding a bike"]),
    ("b2_captions", [(64, 96), (64, 96)], ["a dog", "the small red circle moving to the left of the car"]),
    ("b2_sizes", [(64, 96), (80, 64)], ["a woman walking a brown dog", "the blue car on the right"]),
]

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
TINY_ROBERTA_CONFIG: dict[str, Any] = {
    "architectures": ["RobertaModel"],
    "model_type": "roberta",
    "hidden_size": 768,  # the official FeatureResizer hard-codes 768 input features
    "num_hidden_layers": 1,
    "num_attention_heads": 12,
    "intermediate_size": 256,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 130,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "position_embedding_type": "absolute",
}


def _tokenizer_corpus() -> list[str]:
    """A small fixed English corpus of referring expressions (deterministic)."""
    colours = ["red", "blue", "green", "yellow", "black", "white", "brown", "grey", "orange", "purple", "pink"]
    sizes = ["small", "big", "large", "tiny", "tall", "short", "little", "young", "old"]
    nouns = [
        "man", "woman", "person", "boy", "girl", "child", "dog", "cat", "car", "bike", "horse", "bird",
        "circle", "square", "triangle", "box", "ball", "truck", "bus", "boat", "zebra", "giraffe",
        "elephant", "bear", "duck", "fish", "shirt", "hat", "skateboard", "surfboard", "motorcycle", "train",
    ]
    verbs = [
        "riding", "walking", "running", "moving", "sitting", "standing", "jumping", "holding", "eating",
        "playing", "swimming", "flying", "driving", "wearing", "carrying", "looking", "turning",
    ]
    places = ["left", "right", "front", "back", "middle", "top", "bottom", "center", "side", "corner"]
    nouns += (
        "airplane kite umbrella chair table bench sofa bed lamp window door wall fence tree grass road street "
        "river lake ocean beach sand snow rock mountain hill field park garden building house tower bridge "
        "camera phone bottle cup bowl plate spoon knife fork apple banana orange sandwich pizza cake donut "
        "monkey lion tiger leopard deer rabbit mouse sheep cow goat pig chicken penguin parrot eagle owl "
        "snake lizard turtle frog shark whale dolphin seal octopus spider butterfly bee ant "
        "player rider driver skier surfer dancer singer drummer guitarist soldier police officer doctor "
        "teacher student baby toddler teenager adult lady gentleman crowd group team audience "
        "jacket coat dress skirt trousers jeans shorts shoes boots glove scarf helmet glasses backpack bag "
        "wheel engine window mirror seat handle rope net goal racket bat glove paddle sail flag sign"
    ).split()
    verbs += (
        "climbing crawling dancing singing throwing catching kicking pushing pulling lifting dropping "
        "falling sliding rolling spinning shaking waving pointing touching hugging feeding chasing "
        "following leading crossing entering leaving approaching passing stopping starting parking "
        "skating skiing surfing rowing sailing fishing cooking reading writing drawing painting"
    ).split()
    sizes += "first second third last nearest farthest leftmost rightmost largest smallest dark light".split()
    rng = random.Random(0)
    corpus = []
    for _ in range(4000):
        noun, other = rng.choice(nouns), rng.choice(nouns)
        template = rng.randrange(4)
        if template == 0:
            corpus.append(f"the {rng.choice(sizes)} {rng.choice(colours)} {noun} {rng.choice(verbs)} a {other}")
        elif template == 1:
            corpus.append(f"a {noun} on the {rng.choice(places)} of the {rng.choice(colours)} {other}")
        elif template == 2:
            corpus.append(f"the {noun} in the {rng.choice(colours)} {other} is {rng.choice(verbs)}")
        else:
            corpus.append(f"{noun} {rng.choice(verbs)} to the {rng.choice(places)} next to a {other}")
    return corpus


def build_tiny_roberta(directory: Path, vocab_size: int = 1500) -> None:
    """Write a byte-level BPE RoBERTa tokenizer (no weights) and a 1-layer RobertaConfig to `directory`.

    The files load with both transformers 4.x `RobertaTokenizerFast` and transformers 5 `AutoTokenizer`.
    """
    from tokenizers import ByteLevelBPETokenizer, processors

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    tokenizer.train_from_iterator(
        _tokenizer_corpus(), vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False,
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer.save_model(str(directory))  # vocab.json + merges.txt, for loaders that rebuild from them
    tokenizer_config = {
        "tokenizer_class": "RobertaTokenizer",
        "add_prefix_space": False,
        "trim_offsets": True,
        "errors": "replace",
        "model_max_length": TINY_ROBERTA_CONFIG["max_position_embeddings"] - 2,
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special_map = {k: tokenizer_config[k] for k in
                   ("bos_token", "eos_token", "sep_token", "cls_token", "unk_token", "pad_token", "mask_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    config = dict(TINY_ROBERTA_CONFIG, vocab_size=tokenizer.get_vocab_size())
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _install_import_shims() -> None:
    """Stand-ins for the two compiled/optional modules the official model imports."""
    # The CUDA extension is never called: MSDeformAttnFunction.apply is replaced after import.
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    try:
        importlib.import_module("fvcore.nn.weight_init")
    except ImportError:
        def c2_xavier_fill(module: nn.Module) -> None:
            # Only an initialisation; every weight is overwritten by the seeded state dict.
            nn.init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)

        fvcore = types.ModuleType("fvcore")
        fvcore_nn = types.ModuleType("fvcore.nn")
        weight_init = types.ModuleType("fvcore.nn.weight_init")
        weight_init.c2_xavier_fill = c2_xavier_fill
        fvcore_nn.weight_init = weight_init
        fvcore.nn = fvcore_nn
        sys.modules.update({"fvcore": fvcore, "fvcore.nn": fvcore_nn, "fvcore.nn.weight_init": weight_init})


@contextmanager
def _official_imports(official_root: Path, tokenizer_dir: Path) -> Iterator[dict[str, Any]]:
    """Import the official modules with the runtime patches applied; yields the needed entry points."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise RuntimeError(
            f"transformers {transformers.__version__} found; the official code needs transformers 4.x "
            "(see this script's docstring for how to put it on PYTHONPATH)"
        )
    _install_import_shims()
    sys.path.insert(0, str(official_root))
    try:
        ms_func = importlib.import_module("models.ops.functions.ms_deform_attn_func")
        core = ms_func.ms_deform_attn_core_pytorch

        def pure_pytorch_apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                               im2col_step):
            return core(value, spatial_shapes, sampling_locations, attention_weights)

        ms_func.MSDeformAttnFunction.apply = staticmethod(pure_pytorch_apply)

        backbone_module = importlib.import_module("models.backbone")
        # `pretrained=is_main_process()` would download ImageNet weights; random init suffices.
        backbone_module.is_main_process = lambda: False

        referformer = importlib.import_module("models.referformer")
        tokenizer_cls = referformer.RobertaTokenizerFast
        model_cls = referformer.RobertaModel
        originals = (tokenizer_cls.from_pretrained, model_cls.from_pretrained)
        tokenizer_cls.from_pretrained = classmethod(
            lambda cls, name, *a, **kw: originals[0].__func__(cls, str(tokenizer_dir)))
        model_cls.from_pretrained = classmethod(
            lambda cls, name, *a, **kw: cls(transformers.RobertaConfig.from_pretrained(str(tokenizer_dir))))
        try:
            yield {
                "build": importlib.import_module("models").build_model,
                "get_args_parser": importlib.import_module("opts").get_args_parser,
                "nested_tensor_from_videos_list": importlib.import_module("util.misc").nested_tensor_from_videos_list,
            }
        finally:
            tokenizer_cls.from_pretrained, model_cls.from_pretrained = originals
    finally:
        sys.path.remove(str(official_root))


def _torchvision_without_pretrained_kwarg() -> Callable[[], None]:
    """Newer torchvision rejects `pretrained=`; map it to `weights=None`. Returns the undo function."""
    import torchvision

    original = torchvision.models.resnet50

    def resnet50(*args: Any, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise RuntimeError("the fixture must not download pretrained weights")
        return original(*args, weights=None, **kwargs)

    torchvision.models.resnet50 = resnet50

    def undo() -> None:
        torchvision.models.resnet50 = original

    return undo


def seed_model(model: nn.Module, seed: int) -> dict[str, str]:
    """Overwrite every floating-point state-dict entry with `seeded_tensor(key, shape, seed)`.

    Keys that alias one storage (the box heads `bbox_embed.*`, shared with
    `transformer.decoder.bbox_embed.*`) are filled once, under the shortest of their names.
    Integer buffers are left untouched. Returns {aliased key: key whose seed filled it}.
    """
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        from seeded_weights import seeded_tensor
    finally:
        sys.path.remove(str(REPO_ROOT / "tests"))
    state = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for key, tensor in state.items():
        if tensor.is_floating_point():
            groups.setdefault(tensor.data_ptr(), []).append(key)
    aliases: dict[str, str] = {}
    with torch.no_grad():
        for keys in groups.values():
            owner = min(keys, key=len)
            state[owner].copy_(seeded_tensor(owner, state[owner].shape, seed))
            aliases.update({key: owner for key in keys if key != owner})
    for alias, owner in aliases.items():
        if not torch.equal(state[alias], state[owner]):
            raise RuntimeError(f"{alias} was expected to share its storage with {owner}")
    return aliases


def make_video(num_frames: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A smooth random ImageNet-normalised video [T, 3, H, W] (float32)."""
    coarse = torch.rand(num_frames, 3, max(height // 8, 2), max(width // 8, 2), generator=generator)
    frames = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((frames - mean) / std).contiguous()


class _Recorder:
    """Forward hooks that keep the intermediate tensors the equivalence test compares."""

    def __init__(self, model: nn.Module) -> None:
        self.values: dict[str, Any] = {}
        self._handles = [
            model.resizer.register_forward_hook(self._store("text_features")),
            model.poolout_module.register_forward_hook(self._store("sentence_features")),
            model.transformer.encoder.register_forward_hook(self._store("memory")),
            model.pixel_decoder.register_forward_hook(self._store("mask_features")),
            model.transformer.register_forward_pre_hook(self._transformer_inputs),
            model.transformer.register_forward_hook(self._transformer_outputs),
        ]

    def _store(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.values[name] = output.detach().clone()

        return hook

    def _transformer_inputs(self, module: nn.Module, inputs: tuple) -> None:
        srcs, tgt, masks, pos_embeds, query_embed = inputs
        self.values["srcs"] = [s.detach().clone() for s in srcs]
        self.values["tgt"] = tgt.detach().clone()
        self.values["masks"] = [m.clone() for m in masks]
        self.values["pos_embeds"] = [p.detach().clone() for p in pos_embeds]

    def _transformer_outputs(self, module: nn.Module, inputs: tuple, outputs: tuple) -> None:
        hs, _memory_features, init_reference, inter_references = outputs[:4]
        self.values["hs"] = hs.detach().clone()
        self.values["init_reference"] = init_reference.detach().clone()
        self.values["inter_references"] = inter_references.detach().clone()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _float32(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().float().contiguous() if obj.is_floating_point() else obj.detach().contiguous()
    if isinstance(obj, list):
        return [_float32(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    return obj


def _describe(name: str, out: dict[str, Any]) -> str:
    logits, boxes, masks = out["pred_logits"], out["pred_boxes"], out["pred_masks"]
    return (
        f"{name}: logits {tuple(logits.shape)} range [{logits.min():.3f}, {logits.max():.3f}] std {logits.std():.3f}; "
        f"boxes range [{boxes.min():.3f}, {boxes.max():.3f}] std {boxes.std():.3f}; "
        f"masks {tuple(masks.shape)} range [{masks.min():.2f}, {masks.max():.2f}] std {masks.std():.3f} "
        f"|sigmoid in (0.01, 0.99)| {((masks.sigmoid() > 0.01) & (masks.sigmoid() < 0.99)).float().mean():.3f}; "
        f"extra keys {sorted(set(out) - {'pred_logits', 'pred_boxes', 'pred_masks', 'aux_outputs'})}"
    )


def run(official_root: Path, output: Path, tokenizer_dir: Path, seed: int) -> Path:
    """Build, seed and run the official model on the fixed cases; write `reference.pt` and a README."""
    import transformers

    if not (official_root / "models" / "referformer.py").is_file():
        raise FileNotFoundError(f"{official_root} is not a checkout of LANMNG/BIFIT (no models/referformer.py)")
    if not (tokenizer_dir / "config.json").is_file():
        raise FileNotFoundError(f"no tiny RoBERTa in {tokenizer_dir}; run with --build-tokenizer first")
    commit = subprocess.run(
        ["git", "-C", str(official_root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()

    torch.manual_seed(seed)
    undo_torchvision = _torchvision_without_pretrained_kwarg()
    try:
        with _official_imports(official_root, tokenizer_dir) as official:
            parser = argparse.ArgumentParser(parents=[official["get_args_parser"]()])
            args = parser.parse_args(RELEASED_FLAGS + ["--device", "cpu"])
            model, _criterion, _post = official["build"](args)
            aliases = seed_model(model, seed)
            model.eval()
            state = model.state_dict()

            generator = torch.Generator().manual_seed(seed)
            cases = []
            for name, sizes, captions in CASES:
                videos = [make_video(NUM_FRAMES, h, w, generator) for h, w in sizes]
                tokenized = model.tokenizer(captions, padding="longest", return_tensors="pt")
                targets = [{"size": torch.tensor([h, w])} for h, w in sizes]
                samples = official["nested_tensor_from_videos_list"](videos)
                recorder = _Recorder(model)
                try:
                    with torch.no_grad():
                        out = model(samples, captions, targets)
                finally:
                    recorder.close()
                print(_describe(name, out))
                case = {
                    "name": name,
                    "videos": videos,
                    "captions": captions,
                    "input_ids": tokenized["input_ids"],
                    "attention_mask": tokenized["attention_mask"],
                    "pred_logits": out["pred_logits"],
                    "pred_boxes": out["pred_boxes"],
                    "pred_masks": out["pred_masks"],
                    "reference_points": out["reference_points"],
                    "aux_outputs": [
                        {k: aux[k] for k in ("pred_logits", "pred_boxes", "pred_masks")} for aux in out["aux_outputs"]
                    ],
                }
                if name == "b1":
                    case["intermediates"] = recorder.values
                cases.append(_float32(case))
    finally:
        undo_torchvision()

    for outputs in [cases[0]] + cases[0]["aux_outputs"]:
        for key in ("pred_logits", "pred_boxes", "pred_masks"):
            if not torch.isfinite(outputs[key]).all():
                raise RuntimeError(f"official model produced non-finite {key}")

    reference = {
        "seed": seed,
        "official_commit": commit,
        "transformers_version": transformers.__version__,
        "state_dict_shapes": {k: list(v.shape) for k, v in state.items()},
        "state_dict_dtypes": {k: str(v.dtype) for k, v in state.items()},
        "shared_keys": aliases,
        "cases": cases,
    }
    output.mkdir(parents=True, exist_ok=True)
    path = output / "reference.pt"
    torch.save(reference, path)
    (output / "README.md").write_text(_fixture_readme(commit, transformers.__version__, seed))
    return path


def _fixture_readme(commit: str, transformers_version: str, seed: int) -> str:
    cases = "\n".join(
        f"- `{name}`: B={len(sizes)}, T={NUM_FRAMES}, sizes (H, W) {sizes}, captions {captions}"
        for name, sizes, captions in CASES
    )
    return f"""# Official BIFIT outputs with seeded weights

`reference.pt` holds the outputs of the official BIFIT model (LANMNG/BIFIT at `{commit}`, released
configuration `{' '.join(RELEASED_FLAGS)}`, eval mode, CPU, transformers {transformers_version}) whose
every floating-point state-dict entry was set to `tests/seeded_weights.seeded_tensor(key, shape, seed={seed})`
(shared `bbox_embed.*` / `transformer.decoder.bbox_embed.*` filled under `bbox_embed.*`). `roberta-base`
was replaced by the 1-layer RoBERTa of `tests/fixtures/tiny_roberta` (config + tokenizer, no weights),
the CUDA deformable attention by the official pure-PyTorch `ms_deform_attn_core_pytorch`.

Cases (smooth random ImageNet-normalised videos, padded bottom/right, no size divisibility):
{cases}

Produced with (transformers 4.x shadowing the project's transformers 5):

    pip install --target /tmp/tf4 --no-deps "transformers==4.46.*" "tokenizers>=0.20,<0.21" \\
        "huggingface_hub<1.0" requests urllib3 idna charset_normalizer certifi
    PYTHONPATH=/tmp/tf4 python scripts/make_official_model_fixture.py \\
        --official-root /path/to/BIFIT --output tests/fixtures/official_model

(`--build-tokenizer` additionally rebuilds `tests/fixtures/tiny_roberta`, byte-identically.)
Load with `torch.load(path, weights_only=True)`.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", type=Path, required=True, help="checkout of LANMNG/BIFIT")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="fixture directory to write")
    parser.add_argument("--tokenizer-dir", type=Path, default=DEFAULT_TOKENIZER_DIR,
                        help="tiny RoBERTa directory (tokenizer files + config.json) standing in for roberta-base")
    parser.add_argument("--build-tokenizer", action="store_true",
                        help="(re)build the tiny RoBERTa tokenizer and config into --tokenizer-dir first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach the Hub
    if args.build_tokenizer:
        build_tiny_roberta(args.tokenizer_dir)
    path = run(args.official_root.resolve(), args.output, args.tokenizer_dir.resolve(), args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
