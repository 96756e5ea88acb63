"""radclip.core.models: adapter masking, tokenizer/EOS pooling, text cache, freezing, pixel normalisation,
saving and loading."""

from __future__ import annotations

import json
import math
import time

import pydantic
import pytest
import torch
from transformers import CLIPImageProcessorPil
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from radclip.config import ModelParams, Params
from radclip.core.models import (
    PretrainedWeightsUnavailable,
    RadCLIP,
    SlicePoolingAdapter,
    load_pretrained_clip,
    train_bpe_tokenizer,
)
from radclip.core.models.clip import image_processor
from radclip.core.models.tokenizer import END_TOKEN, START_TOKEN, load_tokenizer, unknown_pieces
from radclip.core.preprocessing import PixelNormalisation
from radclip.training.build import build_model

CAPTIONS = [
    "Brain MRI with Glioma",
    "Brain MRI with Meningioma",
    "Normal Brain MRI",
    "Chest X-ray with Cardiomegaly and Pleural Effusion",
    "Normal Chest CT",
    "Chest CT with COVID-19",
]


@pytest.fixture(scope="module")
def model() -> RadCLIP:
    return build_model(Params(), CAPTIONS).eval()


def _mask(lengths: list[int], slices: int) -> torch.Tensor:
    return torch.arange(slices).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# --------------------------------------------------------------------------- adapter


@pytest.mark.parametrize("reducer", ["attention", "mhsa_mean", "residual_mean", "mean"])
def test_adapter_shapes_with_mask(reducer):
    adapter = SlicePoolingAdapter(32, 4, max_slices=16, reducer=reducer).eval()
    slices = torch.randn(3, 10, 32)
    volume, weights = adapter(slices, _mask([10, 4, 1], 10))
    assert volume.shape == (3, 32) and weights.shape == (3, 10)
    volume, weights = adapter(slices)  # no mask: all valid
    assert volume.shape == (3, 32) and torch.allclose(weights.sum(1), torch.ones(3))


@pytest.mark.parametrize("reducer", ["attention", "mhsa_mean", "residual_mean", "mean"])
def test_padded_slices_have_no_effect(reducer):
    torch.manual_seed(0)
    adapter = SlicePoolingAdapter(32, 4, max_slices=16, reducer=reducer).eval()
    if reducer == "residual_mean":  # its gate starts at 0: open it so the self-attention takes part
        adapter.context_gate.data.fill_(1.0)
    slices = torch.randn(2, 12, 32)
    mask = _mask([7, 12], 12)
    reference, reference_weights = adapter(slices, mask)

    changed = slices.clone()
    changed[0, 7:] = torch.randn(5, 32) * 100
    changed[0, 9] = float("nan")  # even garbage padding must not leak through 0 * x
    permuted = slices.clone()
    permuted[0, 7:] = slices[0, 7:][torch.randperm(5)]
    for variant in (changed, permuted):
        volume, weights = adapter(variant, mask)
        torch.testing.assert_close(volume, reference, rtol=0, atol=1e-6)
        torch.testing.assert_close(weights, reference_weights, rtol=0, atol=1e-6)


def test_attention_weights_sum_to_one_over_valid_slices_and_zero_on_padding():
    adapter = SlicePoolingAdapter(32, 4, max_slices=16).train()  # dropout active: weights still exact
    mask = _mask([5, 16, 1], 16)
    _, weights = adapter(torch.randn(3, 16, 32), mask)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    assert torch.all(weights[~mask] == 0)
    assert torch.all(weights[mask] > 0)


def test_attention_adapter_starts_as_average_pooling_and_pools_the_slice_embeddings():
    """Its output is the weighted sum of the input slice embeddings (so it stays in the joint
    image–text space), and a fresh adapter weighs valid slices nearly uniformly (training starts at GAP)."""
    torch.manual_seed(0)
    adapter = SlicePoolingAdapter(64, 4, max_slices=32).eval()
    slices = torch.nn.functional.normalize(torch.randn(2, 20, 64), dim=-1)
    mask = _mask([12, 20], 20)
    volume, weights = adapter(slices, mask)
    torch.testing.assert_close(volume, torch.einsum("bs,bsd->bd", weights, slices))
    uniform = mask.float() / mask.float().sum(1, keepdim=True)
    torch.testing.assert_close(weights, uniform, rtol=0, atol=0.1 / 20)
    mean = SlicePoolingAdapter(64, 4, max_slices=32, reducer="mean")(slices, mask)[0]
    assert torch.nn.functional.cosine_similarity(volume, mean).min() > 0.99


def test_residual_mean_starts_as_average_pooling_and_adds_gated_cross_slice_context():
    torch.manual_seed(0)
    adapter = SlicePoolingAdapter(32, 4, max_slices=16, reducer="residual_mean").eval()
    slices, mask = torch.randn(2, 10, 32), _mask([6, 10], 10)
    volume, weights = adapter(slices, mask)
    torch.testing.assert_close(volume[0], slices[0, :6].mean(0))  # gate 0: exactly the masked mean
    torch.testing.assert_close(volume[1], slices[1].mean(0))
    torch.testing.assert_close(weights, mask.float() / mask.float().sum(1, keepdim=True))
    outputs = {}
    for gate in (1.0, 2.0):
        adapter.context_gate.data.fill_(gate)
        outputs[gate] = adapter(slices, mask)[0]
    context = outputs[1.0] - volume
    assert context.norm(dim=1).min() > 1e-3  # an open gate changes the output ...
    torch.testing.assert_close(outputs[2.0] - volume, 2 * context)  # ... by a term linear in the gate


def test_mhsa_mean_weights_are_the_slices_shares_of_the_averaged_attention():
    """One head: V is the output projection of the weighted sum of the slices' values (computed here
    from the module's projection matrices), so the returned weights say where the reducer looked."""
    torch.manual_seed(0)
    adapter = SlicePoolingAdapter(32, 1, max_slices=16, reducer="mhsa_mean").eval()
    slices, mask = torch.randn(2, 10, 32), _mask([6, 10], 10)
    volume, weights = adapter(slices, mask)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    assert torch.all(weights[~mask] == 0) and torch.all(weights[mask] > 0)
    attention = adapter.self_attention
    inputs = slices.masked_fill(~mask.unsqueeze(-1), 0.0) + adapter.position[:10]
    values = inputs @ attention.in_proj_weight[64:].T + attention.in_proj_bias[64:]
    expected = attention.out_proj(torch.einsum("bs,bsd->bd", weights, values))
    torch.testing.assert_close(volume, expected)


def test_mean_reducer_is_the_masked_mean():
    slices, mask = torch.randn(2, 6, 16), _mask([3, 6], 6)
    volume, weights = SlicePoolingAdapter(16, 2, max_slices=8, reducer="mean")(slices, mask)
    torch.testing.assert_close(volume[0], slices[0, :3].mean(0))
    torch.testing.assert_close(volume[1], slices[1].mean(0))
    torch.testing.assert_close(weights[0], torch.tensor([1 / 3] * 3 + [0.0] * 3))


def test_adapter_rejects_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="must divide"):
        SlicePoolingAdapter(30, 4, max_slices=8)
    adapter = SlicePoolingAdapter(16, 4, max_slices=4)
    with pytest.raises(ValueError, match="max_slices"):
        adapter(torch.randn(1, 5, 16))
    with pytest.raises(ValueError, match="at least one valid slice"):
        adapter(torch.randn(2, 3, 16), _mask([2, 0], 3))


# --------------------------------------------------------------------------- tokenizer and EOS pooling


GENERAL_TEXT = ["a photo of a small red cat", "two green stars on the left", "a puppy above a blue house",
                "a black and white photo of a life vest"] * 20


def test_bpe_tokenizer_is_deterministic_and_never_unknown(tmp_path):
    forward = train_bpe_tokenizer(GENERAL_TEXT, vocab_size=600, max_length=12)
    backward = train_bpe_tokenizer(list(reversed(GENERAL_TEXT)), vocab_size=600, max_length=12)
    assert forward.get_vocab() == backward.get_vocab() and len(forward) <= 600
    # Words of the corpus are single tokens; words it never had fall back to pieces, never to an unknown token.
    assert forward.tokenize("A Puppy")[-1] == "puppy</w>"
    for text in ["Chest X-ray with Pneumothorax", "a radiology image: Brain MRI", "naïve 3D £ ☃", "COVID-19"]:
        assert unknown_pieces(forward, text) == [], text
        decoded = forward.decode(forward(text)["input_ids"], skip_special_tokens=True)
        assert decoded.replace(" ", "") == text.lower().replace(" ", "")  # CLIP decodes word ends as spaces
    ids = forward(["a cat", "two green stars on the left of a very large yellow house today"], truncation=True)
    assert all(row[0] == forward.convert_tokens_to_ids(START_TOKEN) for row in ids["input_ids"])
    assert all(row[-1] == forward.convert_tokens_to_ids(END_TOKEN) for row in ids["input_ids"])  # kept when truncating
    assert len(ids["input_ids"][1]) == 12
    forward.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)  # what transformers itself reads back: a CLIPTokenizer
    assert type(loaded).__name__ == "CLIPTokenizer"
    assert loaded("A Puppy with Glioma")["input_ids"] == forward("A Puppy with Glioma")["input_ids"]


def test_eos_pooling_uses_the_eos_position(model):
    config = model.clip.config.text_config
    assert config.eos_token_id == model.tokenizer.eos_token_id == config.pad_token_id != 2
    first, second = model.encode_text(["Brain MRI with Glioma", "Brain MRI with Meningioma"])
    assert not torch.allclose(first, second, atol=1e-4)  # only the last word differs

    # Pooled state is the hidden state at EOS, and right padding does not change it.
    alone = model.text_cache.run_tower(model.text_cache.tokenize(["Normal Chest CT"]))
    padded = model.text_cache.run_tower(model.text_cache.tokenize(["Normal Chest CT", CAPTIONS[3]]))[:1]
    torch.testing.assert_close(alone, padded, rtol=0, atol=1e-5)
    ids = torch.tensor([model.text_cache.tokenize(["Normal Chest CT"])[0]])
    with torch.no_grad():
        out = model.clip.text_model(input_ids=ids)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, -1])


# --------------------------------------------------------------------------- text cache


def test_text_cache_runs_the_tower_once_per_unique_caption():
    model = build_model(Params(), CAPTIONS).eval()
    calls, rows = [], []
    original = model.clip.text_model.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        rows.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    model.clip.text_model.forward = counting_forward
    batch = ["Normal Chest CT", "Brain MRI with Glioma", "Normal Chest CT", "normal chest ct"]
    first = model.encode_text(batch)
    assert (len(calls), rows, model.text_cache.misses, model.text_cache.hits) == (1, [2], 2, 2)
    second = model.encode_text(batch)
    assert len(calls) == 1 and model.text_cache.hits == 6 and model.text_cache.misses == 2
    assert torch.equal(first, second) and not first.requires_grad
    model.encode_text(["Normal Brain MRI", "Normal Chest CT"])
    assert rows == [2, 1]

    # Weights changed in place (e.g. load_state_dict): stale entries are dropped.
    with torch.no_grad():
        model.clip.text_projection.weight[:8].mul_(-1)  # (a uniform offset would vanish: LayerNorm outputs sum to 0)
    third = model.encode_text(batch)
    assert rows == [2, 1, 2] and not torch.allclose(third, first)

    # Not frozen: the tower runs with gradients on every call and nothing is cached.
    model.clip.text_model.requires_grad_(True)
    with_grad = model.encode_text(batch[:2])
    assert with_grad.requires_grad and len(model.text_cache) == 0
    model.encode_text(batch[:2])
    assert rows[-2:] == [2, 2]


# --------------------------------------------------------------------------- freezing and trainable parameters


def test_text_tower_frozen_and_stage_parameters():
    """The text tower is always frozen (no setting turns it on): in stage "2d" only the vision side trains."""
    with pytest.raises(pydantic.ValidationError, match="freeze_text"):
        Params.model_validate({"model": {"freeze_text": False}})
    model = build_model(Params(), CAPTIONS)
    text_modules = (model.clip.text_model, model.clip.text_projection)
    text_params = {id(p) for m in text_modules for p in m.parameters()}
    assert text_params and model.text_frozen
    assert all(not p.requires_grad for m in text_modules for p in m.parameters())

    model.clip.text_model.requires_grad_(True)  # even unfrozen by hand, a training stage freezes it again
    stage_2d = {id(p) for p in model.trainable_parameters("2d")}
    assert model.text_frozen and not any(p.requires_grad for m in text_modules for p in m.parameters())
    vision = {id(p) for m in (model.clip.vision_model, model.clip.visual_projection) for p in m.parameters()}
    assert stage_2d == vision | {id(model.logit_scale)}
    assert not stage_2d & text_params
    assert all(p.requires_grad == (id(p) in stage_2d) for p in model.parameters())

    stage_adapter = {id(p) for p in model.trainable_parameters("adapter")}
    assert stage_adapter == {id(p) for p in model.adapter.parameters()} | {id(model.logit_scale)}
    assert all(p.requires_grad == (id(p) in stage_adapter) for p in model.parameters())
    with pytest.raises(ValueError):
        model.trainable_parameters("3d")


def test_logit_scale_fixed_or_learnable_and_clamped():
    fixed = build_model(Params.model_validate({"loss": {"learnable_temperature": False, "temperature": 0.001}}), CAPTIONS)
    assert not fixed.logit_scale.requires_grad
    assert fixed.logit_scale_exp().item() == pytest.approx(100.0)  # 1/0.001 clamped like CLIP
    assert all(p is not fixed.logit_scale for p in fixed.trainable_parameters("adapter"))
    learnable = build_model(Params(), CAPTIONS)
    assert learnable.logit_scale_exp().item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert learnable.logit_scale.requires_grad
    assert any(p is learnable.logit_scale for p in learnable.trainable_parameters("adapter"))
    with torch.no_grad():  # trained past CLIP's bound: the clamp holds, and its gradient stops there
        learnable.logit_scale.fill_(math.log(1000.0))
    clamped = learnable.logit_scale_exp()
    assert clamped.item() == pytest.approx(100.0)
    clamped.backward()
    assert learnable.logit_scale.grad.item() == 0.0


# --------------------------------------------------------------------------- preprocessing and encoders


def test_preprocessing_images_and_slices(model):
    images = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    pixels = model.preprocess_images(images)
    assert pixels.shape == (3, 3, 64, 64)
    torch.testing.assert_close(pixels, model.preprocess_images(images.unsqueeze(1)))
    for channel, (mean, std) in enumerate(zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)):  # grey repeated, CLIP-normalised
        torch.testing.assert_close(pixels[:, channel], (images / 255.0 - mean) / std)
    assert model.preprocess_images(torch.zeros(2, 32, 32, dtype=torch.uint8)).shape == (2, 3, 64, 64)  # resized

    # Each volume's own low/high percentiles map to black/white: an affine change of the
    # z-scores (another volume's scale) gives the same pixels, so slices look like 2D images.
    ramp = torch.linspace(-3.0, 3.0, 64).view(1, 1, 1, 64).expand(1, 4, 64, 64)
    slices = model.preprocess_slices(ramp.half())
    scaled = model.preprocess_slices((ramp * 0.5 + 1.0).half())
    torch.testing.assert_close(slices, scaled, atol=2e-2, rtol=0)
    black = model.preprocess_images(torch.zeros(1, 64, 64, dtype=torch.uint8))[0, :, 0, 0]
    white = model.preprocess_images(torch.full((1, 64, 64), 255, dtype=torch.uint8))[0, :, 0, 0]
    assert slices.shape == (4, 3, 64, 64)
    torch.testing.assert_close(slices[0, :, 0, 0], black)  # the lowest values → black
    torch.testing.assert_close(slices[0, :, 0, -1], white)  # the highest → white

    # A recorded display range (a CT window, in z units) wins over the percentiles: values below
    # its low end are black, above its high end white, linear between; a NaN row falls back.
    two = torch.cat([ramp, ramp]).half()
    windowed = model.volumes_to_unit(two, torch.tensor([[-1.0, 1.0], [float("nan"), float("nan")]]))
    torch.testing.assert_close(windowed[0], ((ramp[0].half().float() + 1.0) / 2.0).clamp(0.0, 1.0))
    torch.testing.assert_close(windowed[1], model.volumes_to_unit(ramp.half())[0])
    with pytest.raises(ValueError, match="display_range"):
        model.volumes_to_unit(two, torch.zeros(3, 2))


def test_encoders_normalised_and_slices_masked_and_chunked(model):
    torch.manual_seed(1)
    with torch.no_grad():
        images = model.encode_image(torch.randint(0, 256, (4, 64, 64), dtype=torch.uint8))
        volumes = torch.randn(2, 6, 64, 64).half()
        mask = _mask([6, 3], 6)
        full = model.encode_slices(volumes)
        masked = model.encode_slices(volumes, mask, chunk_size=4)
        volume = model.encode_volume(volumes, mask)
        text = model.encode_text(CAPTIONS)
    for embeddings in (images, volume, text, full.flatten(0, 1)):
        torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(embeddings)))
    assert full.shape == (2, 6, 128) and volume.shape == (2, 128) and text.shape == (6, 128)
    torch.testing.assert_close(masked[mask], full[mask], rtol=0, atol=1e-5)
    assert torch.all(masked[~mask] == 0)
    with torch.no_grad():  # curated shards are NumPy arrays: accepted as they are
        torch.testing.assert_close(model.encode_slices(volumes.numpy()), full, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- saving and loading


def test_save_and_load_round_trip_gives_identical_embeddings(model, tmp_path, monkeypatch):
    images = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    volumes, mask = torch.randn(2, 5, 64, 64).half(), _mask([5, 2], 5)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
        before = (model.encode_image(images), model.encode_volume(volumes, mask), model.encode_text(CAPTIONS))
    model.save_pretrained(tmp_path / "saved")

    saved = {p.relative_to(tmp_path / "saved").as_posix() for p in (tmp_path / "saved").rglob("*") if p.is_file()}
    assert {"config.json", "adapter.safetensors", "clip/config.json", "clip/model.safetensors",
            "clip/preprocessor_config.json"} <= saved
    config = json.loads((tmp_path / "saved/config.json").read_text())
    assert config["format_version"] == 2 and "adapter" in config and "model" not in config
    assert not [name for name in saved if name.endswith((".bin", ".pt", ".pth", ".pkl"))]

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    loaded = RadCLIP.from_pretrained(tmp_path / "saved")
    assert loaded.config == model.config and not loaded.training
    assert loaded.adapter_spec == model.adapter_spec and loaded.pixels == model.pixels
    assert loaded.logit_scale.item() == pytest.approx(3.0)
    assert all(not p.requires_grad for p in loaded.clip.text_model.parameters())
    with torch.no_grad():
        after = (loaded.encode_image(images), loaded.encode_volume(volumes, mask), loaded.encode_text(CAPTIONS))
    for expected, actual in zip(before, after):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_tiny_clip_saved_with_save_pretrained_loads_by_path(model, tmp_path):
    directory = tmp_path / "tiny-clip"
    model.clip.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    image_processor(model.pixels).save_pretrained(directory)
    clip, tokenizer, pixels = load_pretrained_clip(str(directory))
    assert pixels == model.pixels
    reference = model.clip.state_dict()
    for name, value in clip.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert tokenizer("Normal Chest CT")["input_ids"] == model.tokenizer("Normal Chest CT")["input_ids"]

    # The same directory as model.pretrained: build_model takes the real-weights path.
    params = Params.model_validate({"model": ModelParams(pretrained=str(directory)).model_dump()})
    from_path = build_model(params, []).eval()
    images = torch.randint(0, 256, (2, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(from_path.encode_image(images), model.encode_image(images), rtol=0, atol=1e-6)


def test_missing_pretrained_weights_fail_fast_with_instructions(tmp_path):
    for missing in ("radclip-tests/clip-that-is-not-cached", str(tmp_path / "no-such-directory")):
        started = time.perf_counter()
        with pytest.raises(PretrainedWeightsUnavailable) as info:
            load_pretrained_clip(missing)
        assert time.perf_counter() - started < 5
        message = str(info.value)
        assert "huggingface-cli download" in message and "HF_HOME" in message and "model.pretrained" in message
    params = Params.model_validate({"model": {"pretrained": "radclip-tests/clip-that-is-not-cached"}})
    with pytest.raises(PretrainedWeightsUnavailable):
        build_model(params, CAPTIONS)


# --------------------------------------------------------------------------- pixel normalisation from the checkpoint

OTHER_MEAN = (0.25, 0.5, 0.75)
OTHER_STD = (0.5, 0.25, 0.125)


def _write_image_processor(clip_dir, size: int, resample: int, mean=OTHER_MEAN, std=OTHER_STD) -> None:
    CLIPImageProcessorPil(
        image_mean=list(mean), image_std=list(std), size={"shortest_edge": size},
        crop_size={"height": size, "width": size}, resample=resample,
    ).save_pretrained(clip_dir)


@pytest.mark.parametrize("resample, mode", [(0, "nearest"), (2, "bilinear"), (3, "bicubic")])
def test_pixels_are_normalised_with_the_checkpoints_image_processor(model, tmp_path, resample, mode):
    directory = model.save_pretrained(tmp_path / "saved")
    size = model.vision_image_size
    _write_image_processor(directory / "clip", size, resample)  # replaces the one save_pretrained wrote
    loaded = RadCLIP.from_pretrained(directory)
    assert loaded.pixels == PixelNormalisation(size=size, mean=OTHER_MEAN, std=OTHER_STD, resample=mode)

    # Independent reference: a constant image stays constant when resized, so each channel is (v/255 - mean) / std.
    value = 100
    constant = torch.full((2, size // 2, size // 2), value, dtype=torch.uint8)  # curated size ≠ tower size: resized
    pixels = loaded.preprocess_images(constant)
    assert pixels.shape == (2, 3, size, size)
    for channel, (mean, std) in enumerate(zip(OTHER_MEAN, OTHER_STD)):
        expected = torch.full((2, size, size), (value / 255.0 - mean) / std)
        torch.testing.assert_close(pixels[:, channel], expected, rtol=0, atol=1e-5)
    original = model.preprocess_images(constant)
    assert not torch.allclose(original, pixels, atol=1e-2)  # the default (OpenAI) statistics differ

    # The model saves what it was loaded with: a second round trip keeps the checkpoint's settings.
    again = RadCLIP.from_pretrained(loaded.save_pretrained(tmp_path / "again"))
    assert again.pixels == loaded.pixels
    saved = json.loads((tmp_path / "again/clip/preprocessor_config.json").read_text())
    assert saved["image_mean"] == list(OTHER_MEAN) and saved["image_std"] == list(OTHER_STD)
    assert saved["resample"] == resample


def test_a_checkpoint_without_an_image_processor_config_fails_naming_the_file(model, tmp_path):
    directory = model.save_pretrained(tmp_path / "saved")
    (directory / "clip" / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        RadCLIP.from_pretrained(directory)

    # model.pretrained pointing at a CLIP directory without one: the same file named, no silent default.
    bare = tmp_path / "bare-clip"
    model.clip.save_pretrained(bare)
    model.tokenizer.save_pretrained(bare)
    with pytest.raises(PretrainedWeightsUnavailable, match="preprocessor_config.json"):
        load_pretrained_clip(str(bare))


def test_an_image_processor_whose_size_differs_from_the_vision_tower_is_refused(model, tmp_path):
    directory = model.save_pretrained(tmp_path / "saved")
    _write_image_processor(directory / "clip", model.vision_image_size * 2, resample=2)
    with pytest.raises(ValueError, match="image processor size"):
        RadCLIP.from_pretrained(directory)
