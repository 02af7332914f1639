"""Our model against outputs of the official BIFIT implementation (seeded weights, see
tests/fixtures/official_model/README.md): equal to within 1e-4 absolute."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import bifit
from bifit.modeling.checkpoint import convert_official_state_dict, official_key_to_bifit
from seeded_weights import official_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REFERENCE = FIXTURES / "official_model" / "reference.pt"
TINY_ROBERTA = FIXTURES / "tiny_roberta"


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE, weights_only=True)


@pytest.fixture(scope="module")
def official_checkpoint(reference, module_tmp) -> Path:
    path = module_tmp / "bifit_seeded.pth"
    torch.save({"model": official_state_dict(reference), "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def model(official_checkpoint):
    return bifit.load_official_checkpoint(official_checkpoint, text_encoder=str(TINY_ROBERTA))


def _compare(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, what
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-4, f"{what}: max abs difference {diff:.3g}"


@pytest.mark.parametrize("case_name", ["b1", "b2_captions", "b2_sizes"])
def test_eval_outputs_equal_the_official_model(model, reference, case_name):
    case = next(c for c in reference["cases"] if c["name"] == case_name)
    videos = case["videos"]
    tokens = model.text_encoder.tokenize(case["captions"], "cpu")
    assert torch.equal(tokens["input_ids"], case["input_ids"])
    with torch.no_grad():
        out = model(list(videos), case["captions"])
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        _compare(out[key], case[key], f"{case_name} {key}")


def test_every_decoder_layer_equals_the_official_aux_outputs(model, reference):
    case = next(c for c in reference["cases"] if c["name"] == "b2_sizes")
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
    model.text_encoder.model.eval()
    try:
        with torch.no_grad():
            out = model(list(case["videos"]), case["captions"])
    finally:
        model.eval()
    assert len(out["aux_outputs"]) == len(case["aux_outputs"]) == 3
    for i, (ours, theirs) in enumerate(zip(out["aux_outputs"], case["aux_outputs"])):
        for key in ("pred_logits", "pred_boxes", "pred_masks"):
            _compare(ours[key], theirs[key], f"aux {i} {key}")


def test_intermediate_features_equal_the_official_ones(model, reference):
    case = next(c for c in reference["cases"] if c["name"] == "b1")
    inter = case["intermediates"]
    with torch.no_grad():
        words, word_mask, _ = model.encode_text(case["captions"])
        _compare(words, inter["text_features"], "resized words")
        visual = model.encode_video(list(case["videos"]))
        for lvl in range(4):
            assert torch.equal(visual.masks[lvl + 1], inter["masks"][lvl])
            _compare(visual.pos[lvl + 1], inter["pos_embeds"][lvl], f"position encoding level {lvl}")


def test_every_official_key_maps_to_exactly_one_of_ours(model, reference):
    ours = set(model.state_dict())
    mapped = {}
    for key in reference["state_dict_shapes"]:
        if key.startswith("transformer.decoder.bbox_embed."):
            continue
        new = official_key_to_bifit(key)
        assert new in ours, f"{key} -> {new} is not a parameter of ours"
        assert new not in mapped.values(), f"two official keys map to {new}"
        mapped[key] = new
    assert set(mapped.values()) == ours


def test_a_checkpoint_with_a_missing_key_is_refused_by_name(model, reference):
    state = official_state_dict(reference)
    del state["controller.layers.2.weight"]
    with pytest.raises(bifit.CheckpointError, match=r"missing: controller\.layers\.2\.weight"):
        convert_official_state_dict(state, model)


def test_a_mis_shaped_or_unexpected_key_is_refused_by_name(model, reference):
    state = official_state_dict(reference)
    state["query_embed.weight"] = torch.zeros(10, 256)
    state["extra_head.weight"] = torch.zeros(3)
    with pytest.raises(bifit.CheckpointError) as info:
        convert_official_state_dict(state, model)
    message = str(info.value)
    assert "query_embed.weight: checkpoint [10, 256] vs model [5, 256]" in message
    assert "unexpected: extra_head.weight" in message


def test_diverging_shared_box_heads_are_refused(model, reference):
    state = official_state_dict(reference)
    state["transformer.decoder.bbox_embed.0.layers.0.bias"] = torch.zeros(256)
    with pytest.raises(bifit.CheckpointError, match="shared module"):
        convert_official_state_dict(state, model)


def test_old_text_position_ids_buffer_is_accepted(model, reference, tmp_path):
    state = official_state_dict(reference)
    state["text_encoder.embeddings.position_ids"] = torch.arange(130)[None]
    assert set(convert_official_state_dict(state, model)) == set(model.state_dict())


def test_truncated_and_foreign_files_are_refused_clearly(official_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(official_checkpoint.read_bytes()[:10000])
    with pytest.raises(bifit.CheckpointError, match="not a readable PyTorch checkpoint"):
        bifit.load_official_checkpoint(truncated, text_encoder=str(TINY_ROBERTA))
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(bifit.CheckpointError):
        bifit.load_official_checkpoint(text, text_encoder=str(TINY_ROBERTA))
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(bifit.CheckpointError, match="no state dict"):
        bifit.load_official_checkpoint(empty, text_encoder=str(TINY_ROBERTA))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        bifit.load_official_checkpoint(tmp_path / "absent.pth", text_encoder=str(TINY_ROBERTA))


def test_pickled_code_is_never_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(bifit.CheckpointError, match="does not load for safety"):
        bifit.load_official_checkpoint(path, text_encoder=str(TINY_ROBERTA))


def test_converted_checkpoint_round_trips_through_safetensors(model, reference, tmp_path):
    case = next(c for c in reference["cases"] if c["name"] == "b1")
    target = bifit.save_pretrained(model, tmp_path / "converted")
    assert {p.name for p in target.iterdir()} == {"config.json", "model.safetensors", "text_encoder"}
    loaded = bifit.load_pretrained(target)
    with torch.no_grad():
        a = model(list(case["videos"]), case["captions"])
        b = loaded(list(case["videos"]), case["captions"])
    for key in a:
        assert torch.equal(a[key], b[key])
    with pytest.raises(FileExistsError):
        bifit.save_pretrained(model, target)
    before = (target / "model.safetensors").read_bytes()
    (tmp_path / "converted" / "model.safetensors").write_bytes(before[:1000])
    with pytest.raises(bifit.CheckpointError, match="not a readable safetensors"):
        bifit.load_pretrained(target)


def test_an_official_training_checkpoint_with_its_argparse_namespace_loads(model, reference, tmp_path):
    # The official main.py saves {"model", "optimizer", "lr_scheduler", "epoch", "args": argparse.Namespace}.
    import argparse

    path = tmp_path / "checkpoint0005.pth"
    args = argparse.Namespace(lr=1e-4, backbone="resnet50", lr_drop=[6, 8], masks=True, output_dir=None)
    torch.save({"model": official_state_dict(reference), "optimizer": {}, "epoch": 5, "args": args}, path)
    loaded = bifit.load_official_checkpoint(path, text_encoder=str(TINY_ROBERTA))
    expected = model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())


def test_random_bytes_are_called_corrupt_in_one_line(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(bifit.CheckpointError) as info:
        bifit.load_official_checkpoint(path, text_encoder=str(TINY_ROBERTA))
    assert "not a readable PyTorch checkpoint" in str(info.value)
    assert "\n" not in str(info.value)


def test_fine_tuning_starts_from_an_official_checkpoint(model, reference, tmp_path):
    """`--init-checkpoint x.pth`: every tensor but the class head comes from the official file; a
    ReferFormer checkpoint (no BVLI, no IFI) leaves those modules as they were."""
    from bifit.modeling.checkpoint import load_init_checkpoint

    fresh = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for value in fresh.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=generator))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    state = official_state_dict(reference)
    bifit_only = ("text_fusion_module.", "poolout_module.", "transformer.decoder.query_encoder_layers.")
    referformer = {k: v for k, v in state.items() if not k.startswith(bifit_only)}
    assert len(referformer) < len(state)
    path = tmp_path / "referformer.pth"
    torch.save({"model": referformer, "epoch": 5}, path)

    report = load_init_checkpoint(fresh, path)
    assert report["unexpected"] == []
    absent = {official_key_to_bifit(k) for k in state if k not in referformer}
    assert set(report["missing"]) == absent | {k for k in before if k.startswith("class_embed.")}
    official = model.state_dict()
    for key, value in fresh.state_dict().items():
        expected = before[key] if key in report["missing"] else official[key]
        assert torch.equal(value, expected), key
