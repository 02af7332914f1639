"""The BIFIT model on the tiny preset: contract, batching, the efficient mask head, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bifit
from bifit.modeling.bifit import batch_videos
from bifit.modeling.mask_head import dynamic_mask_logits


@pytest.fixture(scope="module")
def model(tiny_bert):
    torch.manual_seed(0)
    return bifit.build_model("tiny", text_encoder=str(tiny_bert)).eval()


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0


def test_eval_outputs_have_the_documented_shapes(model):
    videos = torch.randn(2, 3, 3, 64, 96)
    with torch.no_grad():
        out = model(videos, ["the red circle", "a dog"])
    q = model.config.num_queries
    assert set(out) == {"pred_logits", "pred_boxes", "pred_masks"}
    assert out["pred_logits"].shape == (2, 3, q, 1)
    assert out["pred_boxes"].shape == (2, 3, q, 4)
    assert out["pred_masks"].shape == (2, 3, q, 16, 24)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()


def test_list_of_videos_of_different_sizes_is_padded_to_a_common_canvas(model):
    videos = [torch.randn(2, 3, 64, 96), torch.randn(2, 3, 80, 64)]
    with torch.no_grad():
        out = model(videos, ["the red circle", "a dog"])
    assert out["pred_masks"].shape[-2:] == (20, 24)
    frames, mask, sizes = batch_videos(videos)
    assert frames.shape == (2, 2, 3, 80, 96)
    assert sizes.tolist() == [[64, 96], [80, 64]]
    assert mask[0, :, 64:].all() and not mask[0, :, :64, :96].any()
    assert mask[1, :, :, 64:].all() and not mask[1, :, :80, :64].any()
    assert torch.equal(frames[1, :, :, :80, :64], videos[1])


def test_batching_does_not_change_each_videos_result(model):
    torch.manual_seed(1)
    videos = torch.randn(2, 2, 3, 64, 64)
    captions = ["the small red circle moving left", "a dog"]
    with torch.no_grad():
        both = model(videos, captions)
        for i in range(2):
            single = model(videos[i : i + 1], captions[i : i + 1])
            for key in both:
                torch.testing.assert_close(both[key][i], single[key][0], atol=2e-5, rtol=1e-4)


def test_the_model_cannot_see_frame_order(model):
    # BIFIT, as released, has no temporal position: the backbone, BVLI and the encoder work per frame,
    # and IFI and the cross-modal FPN attend over a clip's frames with position encodings that carry no
    # frame index. Shuffling the frames shuffles the outputs and changes nothing else, so no model of
    # this architecture can tell "moving left" from "moving right" (the README's demo section).
    torch.manual_seed(2)
    videos = torch.randn(1, 4, 3, 64, 64)
    captions = ["the circle moving left"]
    with torch.no_grad():
        out = model(videos, captions)
        for order in ([3, 2, 1, 0], [2, 0, 3, 1]):
            shuffled = model(videos[:, order], captions)
            for key in out:
                torch.testing.assert_close(shuffled[key], out[key][:, order], atol=2e-5, rtol=1e-4)


def test_training_mode_returns_aux_outputs_and_eval_masks_equal_the_last_layer(model):
    model_copy = bifit.build_model("tiny", text_encoder=model.text_encoder.source)
    model_copy.load_state_dict(model.state_dict())
    _no_dropout(model_copy)
    videos = torch.randn(1, 2, 3, 64, 64)
    model_copy.train()
    train_out = model_copy(videos, ["the red circle"])
    assert len(train_out["aux_outputs"]) == model_copy.config.dec_layers - 1
    for aux in train_out["aux_outputs"]:
        assert aux["pred_masks"].shape == train_out["pred_masks"].shape
    model_copy.eval()
    with torch.no_grad():
        eval_out = model_copy(videos, ["the red circle"])
    for key in eval_out:
        torch.testing.assert_close(eval_out[key], train_out[key].detach(), atol=1e-5, rtol=1e-5)
    loss = train_out["pred_masks"].sum() + sum(a["pred_masks"].sum() for a in train_out["aux_outputs"])
    loss.backward()
    grads = [p.grad for n, p in model_copy.named_parameters() if n.startswith("controller") and p.requires_grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def _grouped_conv_reference(mask_features, params, refs, sizes, cfg):
    """The official formulation: per-query copies of the features + a grouped 1x1 conv."""
    b, t, c, h, w = mask_features.shape
    q = params.shape[2]
    ys, xs = torch.meshgrid(torch.arange(h) * 4.0 + 2, torch.arange(w) * 4.0 + 2, indexing="ij")
    scale = torch.stack([sizes[:, 1], sizes[:, 0]], -1).float()[:, None, None]
    ref = refs * scale
    rel = torch.stack([ref[..., 0, None, None] - xs, ref[..., 1, None, None] - ys], 3)  # [b,t,q,2,h,w]
    feats = torch.cat([mask_features[:, :, None].expand(b, t, q, c, h, w), rel], 3).reshape(1, -1, h, w)
    flat = params.reshape(b * t * q, -1)
    n = flat.shape[0]
    chunks = torch.split(flat, cfg.dynamic_weight_nums + cfg.dynamic_bias_nums, 1)
    layers = len(cfg.dynamic_weight_nums)
    x = feats
    for i in range(layers):
        out_c = cfg.dynamic_mask_channels if i < layers - 1 else 1
        x = F.conv2d(x, chunks[i].reshape(n * out_c, -1, 1, 1), chunks[layers + i].reshape(-1), groups=n)
        if i < layers - 1:
            x = F.relu(x)
    return x.reshape(b, t, q, h, w)


def test_dynamic_mask_head_equals_the_grouped_convolution_over_copied_features():
    cfg = bifit.get_preset("bifit_r50")
    torch.manual_seed(0)
    b, t, q, h, w = 2, 3, 5, 6, 7
    feats = torch.randn(b, t, cfg.mask_dim, h, w)
    params = torch.randn(b, t, q, cfg.num_dynamic_params) * 0.1
    refs = torch.rand(b, t, q, 2)
    sizes = torch.tensor([[24, 28], [20, 25]])
    ours = dynamic_mask_logits(
        feats, params, refs, sizes, cfg.dynamic_weight_nums, cfg.dynamic_bias_nums, cfg.dynamic_mask_channels
    )
    ref = _grouped_conv_reference(feats, params, refs, sizes, cfg)
    assert cfg.num_dynamic_params == 2153
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "videos, captions, message",
    [
        (torch.randn(1, 2, 3, 32, 32), ["a", "b"], "captions"),
        (torch.randn(2, 3, 32, 32), ["a"], r"\[B, T, 3, H, W\]"),
        ([torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)], ["a", "b"], "same number of frames"),
        (torch.randn(1, 2, 3, 32, 32), ["   "], "empty"),
        (torch.randn(1, 2, 3, 32, 32), "a dog", "list of strings"),
        (torch.randn(1, 2, 3, 32, 32).to(torch.uint8), ["a dog"], "float"),
    ],
)
def test_bad_input_gets_one_clear_error(model, videos, captions, message):
    with pytest.raises(ValueError, match=message):
        model(videos, captions)


def test_over_long_expression_is_refused_with_its_length(model):
    with pytest.raises(bifit.ExpressionError, match="tokens long"):
        model(torch.randn(1, 1, 3, 32, 32), ["the red circle " * 40])


def test_a2d_valid_indices_keep_one_frame_per_video(model):
    videos = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        out = model(videos, ["a", "b"], valid_indices=[2, 0])
        single = model(videos[:1, 2:3], ["a"])
    assert out["pred_masks"].shape[1] == 1
    torch.testing.assert_close(out["pred_masks"][0], single["pred_masks"][0], atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="valid_indices"):
        model(videos, ["a", "b"], valid_indices=[3, 0])


def test_chunked_inference_ffn_equals_the_whole_ffn():
    from bifit.modeling.transformer import FeedForward

    torch.manual_seed(0)
    ffn = FeedForward(16, 64, dropout=0.0)
    norm = torch.nn.LayerNorm(16)
    x = torch.randn(50, 3, 16)
    whole = ffn(x, norm)
    ffn.inference_chunk_rows = 7
    with torch.no_grad():
        chunked = ffn(x, norm)
    torch.testing.assert_close(chunked, whole.detach(), atol=1e-6, rtol=1e-6)


def test_captions_sharing_a_video_equal_separate_copies_in_outputs_and_gradients(tiny_bert):
    torch.manual_seed(3)
    # float64: the two ways sum the same gradients in another order, which float32 rounding would blur.
    model = bifit.build_model("tiny", text_encoder=str(tiny_bert)).train().double()
    _no_dropout(model)
    videos = torch.randn(2, 2, 3, 64, 64, dtype=torch.float64)
    captions = ["the red circle", "the big square", "a dog"]
    caption_videos = [0, 0, 1]

    shared = model(videos, captions, caption_videos=caption_videos)
    loss = sum(shared[k].square().mean() for k in ("pred_logits", "pred_boxes", "pred_masks"))
    loss.backward()
    shared_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    copies = model(videos[caption_videos], captions)
    loss_copies = sum(copies[k].square().mean() for k in ("pred_logits", "pred_boxes", "pred_masks"))
    loss_copies.backward()
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(shared[key], copies[key], rtol=1e-5, atol=1e-5)
    for i, (a, b) in enumerate(zip(shared["aux_outputs"], copies["aux_outputs"])):
        torch.testing.assert_close(a["pred_masks"], b["pred_masks"], rtol=1e-5, atol=1e-5, msg=f"layer {i}")
    assert any(n.startswith("backbone.") for n in shared_grads)
    for name, param in model.named_parameters():
        if name in shared_grads:
            error = (shared_grads[name] - param.grad).norm() / param.grad.norm().clamp_min(1e-30)
            assert error < 1e-9, (name, float(error))


def test_caption_videos_must_name_existing_videos_one_per_caption(model):
    videos = torch.randn(2, 1, 3, 32, 32)
    with pytest.raises(ValueError, match="caption_videos"):
        model(videos, ["a", "b", "c"], caption_videos=[0, 1])
    with pytest.raises(ValueError, match=r"video_index must hold indices in \[0, 2\)"):
        model(videos, ["a", "b"], caption_videos=[0, 2])


def test_selecting_every_video_once_in_order_copies_nothing(model):
    visual = model.encode_video(torch.randn(2, 1, 3, 32, 32))
    assert visual.select([0, 1]) is visual and visual.repeat(1) is visual
    swapped = visual.select([1, 0])
    assert swapped is not visual and torch.equal(swapped.layer1[0], visual.layer1[1])


def test_the_model_counts_expressions_from_one_as_every_other_route(model):
    """The text encoder's own check is `check_expressions`: same wording and numbering as the predictors'."""
    with pytest.raises(bifit.ExpressionError, match=r"^expression 2 \('the red circle the red circle .*'\) is \d+ tokens long"):
        model(torch.randn(2, 1, 3, 32, 32), ["a dog", "the red circle " * 40])
    with pytest.raises(bifit.ExpressionError, match="^expression 2 is empty"):
        model(torch.randn(2, 1, 3, 32, 32), ["a dog", " "])


def test_frame_chunks_of_the_encoder_and_the_fpn_equal_the_whole_clip(model, monkeypatch):
    """Without autograd the deformable encoder and the FPN's per-token work and convolutions run a few
    frames at a time; the outputs are those of the whole clip at once (up to the rounding of matrix
    products of another height), and with autograd nothing is chunked."""
    from bifit.modeling.pixel_decoder import CrossModalBlock
    from bifit.modeling.transformer import DeformableTransformer

    torch.manual_seed(5)
    videos = torch.randn(1, 5, 3, 64, 96)
    with torch.no_grad():
        whole = model(videos, ["the red circle"])
    encoder_frames, token_frames = [], []
    hook = model.transformer.encoder.layers[0].register_forward_pre_hook(
        lambda module, args: encoder_frames.append(args[0].shape[0])
    )
    real_finish = CrossModalBlock.finish

    def spy(self, x, *args):
        token_frames.append(x.shape[1])
        return real_finish(self, x, *args)

    monkeypatch.setattr(CrossModalBlock, "finish", spy)
    mask_feature_frames = []
    model.pixel_decoder.mask_features.register_forward_pre_hook(
        lambda module, args: mask_feature_frames.append(args[0].shape[0])
    )
    # One frame's tokens (16x24 at stride 4, 8x12 + 4x6 + 2x3 + 1x2 in the encoder) per chunk, or two.
    for frames in (1, 2):
        monkeypatch.setattr(DeformableTransformer, "inference_chunk_tokens", frames * (8 * 12 + 4 * 6 + 2 * 3 + 1 * 2))
        monkeypatch.setattr(CrossModalBlock, "inference_chunk_tokens", frames * 16 * 24)
        with torch.no_grad():
            chunked = model(videos, ["the red circle"])
        for key in whole:
            torch.testing.assert_close(chunked[key], whole[key], atol=1e-5, rtol=1e-5)
        expected = [frames] * (5 // frames) + ([5 % frames] if 5 % frames else [])
        # The stride-4 level comes last (the FPN runs coarse to fine); coarser levels fit more frames per chunk.
        assert encoder_frames == expected and token_frames[-len(expected):] == expected
        assert mask_feature_frames == expected
        encoder_frames.clear()
        token_frames.clear()
        mask_feature_frames.clear()
    out = model(videos, ["the red circle"])  # autograd on: the whole clip in one piece
    hook.remove()
    assert encoder_frames == [5] and set(token_frames) == {5} and mask_feature_frames == [5]
    torch.testing.assert_close(out["pred_masks"].detach(), whole["pred_masks"], atol=1e-5, rtol=1e-5)


def test_frames_of_one_size_share_one_position_encoding():
    from bifit.modeling.position_encoding import shared_sine_position_2d, sine_position_2d

    mask = torch.zeros(4, 6, 9, dtype=torch.bool)
    shared = shared_sine_position_2d(mask, 8, torch.float32)
    assert shared.shape == (4, 16, 6, 9) and shared.stride(0) == 0  # one encoding, viewed four times
    assert torch.equal(shared, sine_position_2d(mask, 8))
    mask[2, :, 7:] = True  # one frame padded differently: each gets its own
    own = shared_sine_position_2d(mask, 8, torch.float32)
    assert own.stride(0) != 0 and torch.equal(own, sine_position_2d(mask, 8))


def test_without_autograd_captions_are_decoded_one_at_a_time_with_the_batched_results(model, monkeypatch):
    torch.manual_seed(3)
    videos = torch.randn(2, 3, 3, 64, 96)
    captions = ["the red circle", "a dog", "the big blue square at the top"]
    batched = model(videos, captions, caption_videos=[0, 1, 0])  # autograd on: one batched decode
    decoded = []
    real_decode = type(model)._decode

    def spy(self, visual, caps):
        decoded.append((visual.batch_size, list(caps)))
        return real_decode(self, visual, caps)

    monkeypatch.setattr(type(model), "_decode", spy)
    with torch.no_grad():
        alone = model(videos, captions, caption_videos=torch.tensor([0, 1, 0]))
    assert decoded == [(1, [c]) for c in captions]
    assert alone.keys() == batched.keys()
    for key in alone:
        torch.testing.assert_close(alone[key], batched[key].detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="got 3 captions but 2 caption_videos entries"):
        model(videos, captions, caption_videos=[0, 1])
    with pytest.raises(ValueError, match="got 2 videos but 3 captions"):
        model(videos, captions)
