"""radclip.core.models.regions and losses.GlobalLocalLoss (LRCLR): attention rollout, region selection,
region and text token states in the joint space, the cross-modal transformer's masking, λ = 0 = the
baseline loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radclip.core.losses import ClipLoss, GlobalLocalLoss
from radclip.core.models.clip import new_clip
from radclip.core.models.regions import (
    CrossModalTransformer,
    TextTokenCache,
    attention_rollout,
    encode_regions,
    rollout_heatmap,
    select_regions,
    text_token_states,
    use_eager_vision_attention,
)

CAPTIONS = ["Brain MRI with Glioma", "Normal Chest CT", "Chest X-ray with Cardiomegaly and Pleural Effusion"]
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "patch_size": 8}
TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 32}


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    clip, tokenizer, _ = new_clip(image_size=32, vocabulary_texts=CAPTIONS, vision=VISION, text=TEXT,
                                  projection_dim=16, vocab_size=600)
    return clip.eval(), tokenizer


def test_rollout_is_the_per_head_product_of_the_layers_first_layer_innermost():
    # Two layers, one head, two tokens: hand-computed A2 @ A1.
    a1 = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])
    a2 = torch.tensor([[[[1.0, 0.0], [0.25, 0.75]]]])
    expected = torch.tensor([[[[0.5, 0.5], [0.125, 0.875]]]])
    assert torch.allclose(attention_rollout([a1, a2]), expected)
    # Random row-stochastic matrices, three layers, two heads: per head, numpy's chained product.
    rng = np.random.default_rng(0)
    layers = [rng.dirichlet(np.ones(5), size=(2, 3, 5)) for _ in range(3)]
    rollout = attention_rollout([torch.tensor(a) for a in layers]).numpy()
    for b in range(2):
        for h in range(3):
            np.testing.assert_allclose(rollout[b, h], layers[2][b, h] @ layers[1][b, h] @ layers[0][b, h], atol=1e-12)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-12)  # still row-stochastic
    with pytest.raises(ValueError, match="at least one layer"):
        attention_rollout([])


def test_regions_are_the_most_attended_patch_of_the_cls_row_never_the_cls_itself():
    rollout = torch.zeros(1, 2, 4, 4)
    rollout[0, 0, 0] = torch.tensor([0.9, 0.02, 0.05, 0.03])  # CLS attends mostly to itself: excluded
    rollout[0, 1, 0] = torch.tensor([0.1, 0.6, 0.1, 0.2])
    indices, scores = select_regions(rollout)
    assert indices.tolist() == [[1, 0]]  # patch indices: token index - 1
    assert torch.allclose(scores, torch.tensor([[0.05, 0.6]]))
    heatmap = rollout_heatmap(rollout)
    assert torch.allclose(heatmap.sum(-1), torch.ones(1)) and heatmap.shape == (1, 3)


def test_encode_regions_picks_one_patch_per_head_in_the_joint_space(tiny_clip):
    clip, _ = tiny_clip
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with pytest.raises(ValueError, match="use_eager_vision_attention"):
            encode_regions(clip, pixels)
        sdpa = clip.get_image_features(pixel_values=pixels)
        use_eager_vision_attention(clip)
        out = encode_regions(clip, pixels)
    heads, patches = VISION["num_attention_heads"], (32 // VISION["patch_size"]) ** 2
    assert out.indices.shape == (3, heads) and out.regions.shape == (3, heads, 16)
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < patches
    assert out.rollout.shape == (3, heads, patches + 1, patches + 1)
    # The CLS token through the same maps is CLIP's own image feature (SDPA path, independent of ours).
    sdpa_features = sdpa if isinstance(sdpa, torch.Tensor) else sdpa.pooler_output
    assert torch.allclose(out.cls_token, sdpa_features, atol=1e-5)
    assert torch.allclose(out.image.norm(dim=-1), torch.ones(3))
    # A region token is the tower's last state at that patch, LayerNorm-ed and projected: feed the tower's
    # hidden states through its submodules by hand.
    with torch.no_grad():
        hidden = clip.vision_model(pixel_values=pixels, output_hidden_states=True).last_hidden_state
        b, h = 2, 1
        token = hidden[b, 1 + int(out.indices[b, h])]
        by_hand = clip.visual_projection(clip.vision_model.post_layernorm(token))
    assert torch.allclose(out.regions[b, h], by_hand, atol=1e-5)


def test_text_token_states_point_at_the_pooled_token(tiny_clip):
    clip, tokenizer = tiny_clip
    encoded = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states, pooled = text_token_states(clip, encoded["input_ids"], encoded["attention_mask"])
        features = clip.get_text_features(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    assert torch.allclose(states[torch.arange(len(CAPTIONS)), pooled], features, atol=1e-5)
    lengths = encoded["attention_mask"].sum(dim=1)
    assert bool((pooled < lengths).all())  # a real token, never padding


def test_text_token_cache_serves_the_towers_states_once_per_caption_until_the_weights_change(tiny_clip):
    clip, tokenizer = tiny_clip
    for parameter in clip.text_model.parameters():
        parameter.requires_grad_(False)
    for parameter in clip.text_projection.parameters():
        parameter.requires_grad_(False)
    cache = TextTokenCache(clip, tokenizer)
    batch = [CAPTIONS[2], CAPTIONS[0], CAPTIONS[2]]
    states, mask, pooled = cache.encode(batch)
    assert cache.misses == 2 and len(cache) == 2  # the repeated caption is run once
    encoded = tokenizer(batch, padding=True, return_tensors="pt")
    with torch.no_grad():
        direct, direct_pooled = text_token_states(clip, encoded["input_ids"], encoded["attention_mask"])
    assert torch.equal(mask, encoded["attention_mask"].bool()) and torch.equal(pooled, direct_pooled)
    assert torch.allclose(states[mask], direct[mask], atol=1e-5) and not states[~mask].any()
    cache.encode(batch)
    assert cache.misses == 2  # served from the cache
    with torch.no_grad():
        clip.text_projection.weight.mul_(2.0)  # an in-place change of the frozen weights
    again, _, _ = cache.encode(batch)
    assert cache.misses == 4 and torch.allclose(again[mask], 2 * states[mask], atol=1e-5)
    with torch.no_grad():
        clip.text_projection.weight.div_(2.0)
    clip.text_projection.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen text tower"):
        cache.encode(batch)
    clip.text_projection.weight.requires_grad_(False)


def test_cross_modal_transformer_ignores_text_padding_and_reports_attention_over_regions():
    torch.manual_seed(0)
    module = CrossModalTransformer(dim=16, width=32, layers=2, heads=4).eval()
    cls_token, regions = torch.randn(2, 16), torch.randn(2, 3, 16)
    text = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    pooled = torch.tensor([3, 5])
    with torch.no_grad():
        first = module(cls_token, regions, text, mask, pooled)
        changed = text.clone()
        changed[0, 4:] = 100.0  # padding of caption 0
        second = module(cls_token, regions, changed, mask, pooled)
    assert torch.allclose(first.image, second.image, atol=1e-6) and torch.allclose(first.text, second.text, atol=1e-6)
    assert first.text_to_regions.shape == (2, 3)
    assert bool((first.text_to_regions >= 0).all()) and bool((first.text_to_regions.sum(-1) <= 1 + 1e-6).all())
    # Unmasked text does reach the outputs (the check above is not vacuous).
    with torch.no_grad():
        third = module(cls_token, regions, changed, torch.ones_like(mask), pooled)
    assert not torch.allclose(first.text[0], third.text[0], atol=1e-3)


def test_zero_local_weight_is_the_global_loss_exactly_values_and_gradients():
    generator = torch.Generator().manual_seed(0)

    def features():
        return torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1).requires_grad_(True)

    image, text, local_image, local_text = features(), features(), features(), features()
    scale, ids = torch.tensor(10.0), torch.tensor([0, 1, 1, 2, 3, 3])
    baseline = ClipLoss()(image, text, scale, ids)
    (baseline_grad,) = torch.autograd.grad(baseline, image)
    total, global_loss, local = GlobalLocalLoss(0.0)(image, text, local_image, local_text, scale, ids)
    (grad,) = torch.autograd.grad(total, image)
    assert local is None and torch.equal(total, baseline) and torch.equal(global_loss, baseline)
    assert torch.equal(grad, baseline_grad)

    total, global_loss, local = GlobalLocalLoss(0.5)(image, text, local_image, local_text, scale, ids)
    assert local is not None
    assert torch.allclose(total, baseline + 0.5 * ClipLoss()(local_image, local_text, scale, ids))
    with pytest.raises(ValueError, match="v_l, t_l"):
        GlobalLocalLoss(0.5)(image, text, None, None, scale, ids)
    with pytest.raises(ValueError, match=">= 0"):
        GlobalLocalLoss(-0.1)
